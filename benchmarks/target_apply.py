"""TargetNetwork.apply vs a hand-written per-network loop (forward + backward w.r.t. the weights).

Deutsch MNIST target, K = 32 networks × 32 images each (the paper's batch of 1,024 images). Prints one
JSON line: ``apply_s``, ``loop_s`` (median seconds per step), ``matmul_gflops`` (this machine's fp32
matmul peak, measured in the same run), ``apply_gflops`` and ``ratio`` = apply_s / loop_s.

    python -m benchmarks.target_apply [--networks 32 --images 32 --repeats 10]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=32)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk
    from benchmarks.common import emit, matmul_gflops, median_seconds, target_forward_flops

    k, b = args.networks, args.images
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist", seed=0))
    rng = np.random.RandomState(0)
    params = {s.name: tf.constant(rng.randn(k, *s.shape).astype("float32") * 0.05) for s in target.param_specs}
    x = tf.constant(rng.rand(k, b, 28, 28, 1).astype("float32"))
    y = tf.constant(rng.randint(0, 10, size=(k, b)))

    def loss_of(logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

    @tf.function
    def apply_step(params, x):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = loss_of(target.apply(params, x))
        return tape.gradient(loss, params)

    @tf.function
    def loop_step(params, x):
        with tf.GradientTape() as tape:
            tape.watch(params)
            outs = []
            for i in range(k):
                h = tf.nn.relu(tf.nn.conv2d(x[i], params["conv1/kernel"][i], 1, "SAME") + params["conv1/bias"][i])
                h = tf.nn.max_pool2d(h, 2, 2, "VALID")
                h = tf.nn.relu(tf.nn.conv2d(h, params["conv2/kernel"][i], 1, "SAME") + params["conv2/bias"][i])
                h = tf.nn.max_pool2d(h, 2, 2, "VALID")
                h = tf.reshape(h, [b, -1])
                h = tf.nn.relu(tf.matmul(h, params["dense1/kernel"][i]) + params["dense1/bias"][i])
                outs.append(tf.matmul(h, params["logits/kernel"][i]) + params["logits/bias"][i])
            loss = loss_of(tf.stack(outs))
        return tape.gradient(loss, params)

    # Same maths: check before timing.
    ga, gl = apply_step(params, x), loop_step(params, x)
    diff = max(float(tf.reduce_max(tf.abs(ga[n] - gl[n]))) for n in params)
    if diff > 1e-4:
        raise SystemExit(f"apply and loop gradients differ by {diff}")

    peak = matmul_gflops()
    # Interleave the two measurements so that machine noise hits both alike.
    apply_times, loop_times = [], []
    for _ in range(3):
        apply_times.append(median_seconds(lambda: apply_step(params, x), repeats=args.repeats))
        loop_times.append(median_seconds(lambda: loop_step(params, x), repeats=args.repeats))
    apply_s, loop_s = sorted(apply_times)[1], sorted(loop_times)[1]
    # Forward + backward ≈ 3× forward FLOPs (weight and input gradients), minus the first layer's
    # input gradient, which is not needed.
    fwd = target_forward_flops(target, k * b)
    total = 3 * fwd
    emit(
        {
            "benchmark": "target_apply",
            "networks": k,
            "images_per_network": b,
            "apply_s": round(apply_s, 5),
            "loop_s": round(loop_s, 5),
            "ratio": round(apply_s / loop_s, 4),
            "matmul_gflops": round(peak, 1),
            "apply_gflops": round(total / apply_s / 1e9, 1),
            "loop_gflops": round(total / loop_s / 1e9, 1),
            "forward_gflop_per_step": round(fwd / 1e9, 3),
        }
    )


if __name__ == "__main__":
    main()
