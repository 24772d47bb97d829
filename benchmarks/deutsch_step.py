"""One training step of the Deutsch hypernetwork (paper configuration) vs. the target-apply-only step.

    python -m benchmarks.deutsch_step [--repeats=10] [--variants all]

Prints one JSON line: ``step_s`` (median time of one `EntropyHypernetwork.train_step`: Table 2
generator, 32 noise samples × 32 images each, gauge transform, entropy, Adam update), ``apply_s``
(median time of the forward + backward pass of the same 32 Table 1 networks on the same images,
with the weights held as variables, plus an Adam update of them; run by the reference path,
``TargetNetwork(fast_path=False)``: Keras's `stateless_call` and TensorFlow's convolution gradients,
where the step itself takes the default path), their ``ratio`` and
``projected_13000_steps_s`` (the paper's 13,000 steps at ``step_s``) and ``first_step_s`` (the first
call of the step: optimizer build + `tf.function` trace + one step).

Distance to the machine (`benchmarks.common.peak_fields`): ``gflop`` is the step's FLOPs
(`benchmarks.common.hypernetwork_step_flops`), counted as 2 per multiply-add: the K networks' conv/dense
layers on their images (`target_forward_flops`) and the generator's matrix products for K noise vectors
(`graph_matmul_flops` of ``model.generate``), each ×3 for forward + backward (one product forward, two
backward: gradients w.r.t. inputs and weights), plus the entropy's float64 Gram matrix of the K
flattened networks (2·K²·P, no gradient). Elementwise ops, batch norm, the gauge transform and Adam are
not counted. (At the defaults this is 19.87 GFLOP; the Conv2D/MatMul/Conv2DBackprop ops of the traced
step's graph add up to within 0.1 % of it.) ``gflops`` = gflop / ``step_s``; ``fraction_of_peak`` =
gflops / ``matmul_gflops``, the fp32 2048² matmul peak measured in the same run (median of measurements
before and after every round). The apply-only step does 3 × the networks' forward FLOPs:
``apply_fraction_of_peak``. ``--repeats`` timed calls of each step in all, over ``--rounds`` rounds.

``--variants`` (e.g. ``all`` = ``float32,mixed_bfloat16,float32_xla,mixed_bfloat16_xla``): the same step
of a fresh model built under each Keras dtype policy, its ``train_step`` in a `tf.function` with
``jit_compile=True`` for ``_xla`` (as ``compile(jit_compile=True)`` makes `fit` run it), timed side by
side in alternating rounds. ``variants`` maps each to ``{"s", "vs_float32", "fraction_of_peak" (the same
FLOP count), "first_step_s" (trace/compile + one step), "first_loss" (the same initial weights; the
``_xla`` variants draw other noise, see `benchmarks.common.run_variant_first_steps`)}``, or to
``"error: ..."`` when the variant cannot be built, traced or run (a variant that compiles again on every
step is reported as such an error). Off by default: the XLA variants' first step (compilation) takes
20-30 s here.

``--grappler=off`` switches TensorFlow's graph optimizer off for the whole run (``"grappler"`` in the
JSON line): the first step gets shorter and the steps may get slower; compare with a second run
``--grappler=on`` (docs/results/benchmarks.md, sixth session).
"""

import argparse
import os
import statistics
import time

from benchmarks.common import (
    add_grappler_flag,
    add_optimizer_flag,
    add_variants_flag,
    apply_grappler,
    emit,
    hypernetwork_step_flops,
    make_adam,
    matmul_gflops,
    measure_variants,
    median_seconds,
    parse_variants,
    peak_fields,
    run_variant_first_steps,
    target_forward_flops,
    under_policy,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_optimizer_flag(parser)
    add_variants_flag(parser)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=32)
    parser.add_argument("--images_per_sample", type=int, default=32)
    add_grappler_flag(parser)
    args = parser.parse_args()
    variants = parse_variants(parser, args.variants)
    for name in ("repeats", "rounds", "num_samples", "images_per_sample"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    import numpy as np
    import tensorflow as tf

    apply_grappler(args.grappler)

    import hyperkeras as hk

    k, b = args.num_samples, args.images_per_sample

    def build():
        target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist"))
        model = hk.models.EntropyHypernetwork(
            target, hk.generators.DeutschGenerator.paper_config(target, seed=0), lam=1e3, num_networks=k, seed=0
        )
        model.compile(optimizer=make_adam(args.optimizer, 3e-4))
        return model

    model = build()
    target = model.target
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(k * b, 28, 28, 1).astype("float32"))
    y = tf.constant(rng.randint(0, 10, k * b).astype("int32"))
    t0 = time.perf_counter()
    model.optimizer.build(model.trainable_variables)
    step = tf.function(lambda: model.train_step((x, y)))
    step()["loss"].numpy()  # the first call: optimizer build + trace + one step
    first_step_s = time.perf_counter() - t0

    reference = hk.TargetNetwork(target.model, fast_path=False)
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
            logits = reference.apply(weights, xk)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yk, logits=logits))
        opt.apply(tape.gradient(loss, variables), variables)
        return loss

    flop = hypernetwork_step_flops(model, k * b)  # one step (see the module docstring)
    target_fwd = target_forward_flops(target, k * b)

    # Interleave the measurements (and the matmul peak) so machine load affects them alike.
    per_round = max(1, args.repeats // args.rounds)  # --repeats timed calls in all, over --rounds rounds
    peaks = [matmul_gflops()]
    step_times, apply_times = [], []
    for _ in range(args.rounds):
        step_times.append(median_seconds(lambda: step()["loss"], repeats=per_round, warmup=2))
        apply_times.append(median_seconds(apply_step, repeats=per_round, warmup=2))
        peaks.append(matmul_gflops())

    result = {
        "benchmark": "deutsch_step",
        "grappler": args.grappler,
        "optimizer": args.optimizer,
        "num_samples": k,
        "images_per_sample": b,
        "generator_params": int(sum(int(np.prod(w.shape)) for w in model.generator.trainable_weights)),
        "first_step_s": round(first_step_s, 2),
        "target": 1.5,
    }
    if variants:

        def make_step(name, policy, jit):
            m = under_policy(policy, build)
            m.optimizer.build(m.trainable_variables)
            f = tf.function(lambda: m.train_step((x, y)), jit_compile=jit)
            return lambda: f()["loss"]

        steps, firsts = run_variant_first_steps(variants, make_step)
        result["variants"] = measure_variants(steps, args.rounds, per_round, flop, peaks, firsts=firsts)

    step_s = statistics.median(step_times)
    apply_s = statistics.median(apply_times)
    result.update(
        {
            "step_s": round(step_s, 4),
            "apply_s": round(apply_s, 4),
            "ratio": round(step_s / apply_s, 3),
            "projected_13000_steps_s": round(13000 * step_s, 1),
            "apply_fraction_of_peak": peak_fields(3 * target_fwd, apply_s, peaks)["fraction_of_peak"],
            **peak_fields(flop, step_s, peaks),
        }
    )
    emit(result)


if __name__ == "__main__":
    main()
