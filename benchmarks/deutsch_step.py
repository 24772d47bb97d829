"""One training step of the Deutsch hypernetwork (paper configuration) vs. the target-apply-only step.

    python -m benchmarks.deutsch_step [--repeats=10]

Prints one JSON line: ``step_s`` (median time of one `EntropyHypernetwork.train_step`: Table 2
generator, 32 noise samples × 32 images each, gauge transform, entropy, Adam update), ``apply_s``
(median time of the forward + backward pass of the same 32 Table 1 networks on the same images,
with the weights held as variables, plus an Adam update of them), their ``ratio`` and
``projected_13000_steps_s`` (the paper's 13,000 steps at ``step_s``) and ``first_step_s`` (the first
call of the step: optimizer build + `tf.function` trace + one step).
"""

import argparse
import json
import time

from benchmarks.common import add_optimizer_flag, make_adam, median_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_optimizer_flag(parser)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num_samples", type=int, default=32)
    parser.add_argument("--images_per_sample", type=int, default=32)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk

    k, b = args.num_samples, args.images_per_sample
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist"))
    model = hk.models.EntropyHypernetwork(
        target, hk.generators.DeutschGenerator.paper_config(target, seed=0), lam=1e3, num_networks=k, seed=0
    )
    model.compile(optimizer=make_adam(args.optimizer, 3e-4))
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(k * b, 28, 28, 1).astype("float32"))
    y = tf.constant(rng.randint(0, 10, k * b).astype("int32"))
    t0 = time.perf_counter()
    model.optimizer.build(model.trainable_variables)
    step = tf.function(lambda: model.train_step((x, y)))
    step()["loss"].numpy()  # the first call: optimizer build + trace + one step
    first_step_s = time.perf_counter() - t0

    params = model.sample(k, seed=1, gauge_fixed=False)
    weights = {n: tf.Variable(v) for n, v in params.items()}
    opt = make_adam(args.optimizer, 3e-4)
    variables = list(weights.values())
    opt.build(variables)
    xk = tf.reshape(x, [k, b, 28, 28, 1])
    yk = tf.reshape(y, [k, b])

    @tf.function
    def apply_step():
        with tf.GradientTape() as tape:
            logits = target.apply(weights, xk)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yk, logits=logits))
        opt.apply(tape.gradient(loss, variables), variables)
        return loss

    # Interleave the two measurements so machine load affects both alike.
    step_times, apply_times = [], []
    for _ in range(3):
        step_times.append(median_seconds(lambda: step()["loss"], repeats=max(1, args.repeats // 3), warmup=2))
        apply_times.append(median_seconds(apply_step, repeats=max(1, args.repeats // 3), warmup=2))
    step_s = float(np.median(step_times))
    apply_s = float(np.median(apply_times))
    print(
        json.dumps(
            {
                "benchmark": "deutsch_step",
                "optimizer": args.optimizer,
                "num_samples": k,
                "images_per_sample": b,
                "generator_params": int(sum(int(np.prod(w.shape)) for w in model.generator.trainable_weights)),
                "step_s": round(step_s, 4),
                "apply_s": round(apply_s, 4),
                "ratio": round(step_s / apply_s, 3),
                "first_step_s": round(first_step_s, 2),
                "projected_13000_steps_s": round(13000 * step_s, 1),
                "target": 1.5,
            }
        )
    )


if __name__ == "__main__":
    main()
