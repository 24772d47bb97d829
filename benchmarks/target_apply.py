"""TargetNetwork.apply (fast chain path and reference path) vs a hand-written per-network loop
(forward + backward w.r.t. the weights).

Deutsch MNIST target, K = 32 networks × 32 images each (the paper's batch of 1,024 images). Prints one
JSON line: ``apply_s`` (fast path), ``generic_s`` (reference path, `Model.stateless_call` per network),
``loop_s`` (median seconds per step), ``ratio`` = apply_s / loop_s, ``generic_ratio`` = generic_s /
loop_s, the first call of each (trace + graph build + one step) as ``trace_s`` / ``generic_trace_s`` /
``loop_trace_s``, ``matmul_gflops`` (this machine's fp32 matmul peak, measured in the same run) and
``apply_gflops``. Then the same for the ResNet-20 target (BatchNorm in training mode, residual adds):
K = 8 networks × 32 CIFAR-size images each, reference path vs a hand-written per-network loop of the same
ops: ``resnet_s``, ``resnet_loop_s``, ``resnet_ratio`` = resnet_s / resnet_loop_s, ``resnet_trace_s``.

Distance to the machine (`benchmarks.common.peak_fields`, for the fast path's step, ``apply_s``):
``gflop`` = 3 × the K networks' forward FLOPs on their images (`target_forward_flops`: 2 per multiply-add
of the conv/dense layers; ×3 for forward + backward, one product forward and two backward, gradients
w.r.t. inputs and weights), the same count for every path whatever ops it runs (e.g. the fast path's
patch extraction is not credited); pooling, activations and the loss are not counted. ``gflops`` =
gflop / ``apply_s``; ``fraction_of_peak`` = gflops / ``matmul_gflops``, the fp32 2048² matmul peak
measured in the same run (median of measurements before and after every round; ``apply_gflops`` and
``loop_gflops`` as before). ``generic_fraction_of_peak``, ``loop_fraction_of_peak``: the reference path
and the loop; ``resnet_gflop`` / ``resnet_fraction_of_peak``: the same count for the ResNet-20 step.

    python -m benchmarks.target_apply [--networks 32 --images 32 --repeats 10]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=32)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--resnet_networks", type=int, default=8)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk
    from benchmarks.common import emit, matmul_gflops, median_seconds, peak_fields, target_forward_flops

    k, b = args.networks, args.images
    model = hk.targets.build_model("deutsch_mnist", seed=0)
    target = hk.TargetNetwork(model, fast_path=True)  # the chain fast path
    generic = hk.TargetNetwork(model, fast_path=False)  # the reference path
    assert target.has_fast_path
    rng = np.random.RandomState(0)
    params = {s.name: tf.constant(rng.randn(k, *s.shape).astype("float32") * 0.05) for s in target.param_specs}
    x = tf.constant(rng.rand(k, b, 28, 28, 1).astype("float32"))
    y = tf.constant(rng.randint(0, 10, size=(k, b)))

    def loss_of(logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

    def make_step(t):
        @tf.function
        def step(params, x):
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = loss_of(t.apply(params, x))
            return tape.gradient(loss, params)

        return step

    apply_step, generic_step = make_step(target), make_step(generic)

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

    # First calls (trace + graph build + one step), then the same maths: check before timing.
    trace = {}
    grads = {}
    for name, fn in (("loop", loop_step), ("apply", apply_step), ("generic", generic_step)):
        t0 = time.perf_counter()
        grads[name] = fn(params, x)
        tf.nest.map_structure(lambda t: t.numpy(), grads[name])
        trace[name] = time.perf_counter() - t0
    for name in ("apply", "generic"):
        diff = max(float(tf.reduce_max(tf.abs(grads[name][n] - grads["loop"][n]))) for n in params)
        if diff > 1e-4:
            raise SystemExit(f"{name} and loop gradients differ by {diff}")

    peaks = [matmul_gflops()]
    # Interleave the measurements so that machine noise hits all alike.
    times = {"apply": [], "generic": [], "loop": []}
    for _ in range(3):
        for name, fn in (("apply", apply_step), ("generic", generic_step), ("loop", loop_step)):
            times[name].append(median_seconds(lambda fn=fn: fn(params, x), repeats=args.repeats))
        peaks.append(matmul_gflops())
    apply_s, generic_s, loop_s = (sorted(times[n])[1] for n in ("apply", "generic", "loop"))
    # Forward + backward ≈ 3× forward FLOPs (weight and input gradients), minus the first layer's
    # input gradient, which is not needed.
    fwd = target_forward_flops(target, k * b)
    total = 3 * fwd
    resnet = resnet_figures(args.resnet_networks, b, args.repeats, peaks)
    emit(
        {
            **resnet,
            "benchmark": "target_apply",
            "networks": k,
            "images_per_network": b,
            "apply_s": round(apply_s, 5),
            "loop_s": round(loop_s, 5),
            "ratio": round(apply_s / loop_s, 4),
            "generic_s": round(generic_s, 5),
            "generic_ratio": round(generic_s / loop_s, 4),
            "trace_s": round(trace["apply"], 2),
            "generic_trace_s": round(trace["generic"], 2),
            "loop_trace_s": round(trace["loop"], 2),
            "apply_gflops": round(total / apply_s / 1e9, 1),
            "loop_gflops": round(total / loop_s / 1e9, 1),
            "forward_gflop_per_step": round(fwd / 1e9, 3),
            "generic_fraction_of_peak": peak_fields(total, generic_s, peaks)["fraction_of_peak"],
            "loop_fraction_of_peak": peak_fields(total, loop_s, peaks)["fraction_of_peak"],
            "resnet_fraction_of_peak": peak_fields(resnet["resnet_gflop"] * 1e9, resnet["resnet_s"], peaks)[
                "fraction_of_peak"
            ],
            **peak_fields(total, apply_s, peaks),
        }
    )


def resnet_figures(k, b, repeats, peaks):
    """ResNet-20 (32×32×3): reference apply vs a hand-written loop, forward + backward, training mode
    (a `matmul_gflops` appended to `peaks` after each round)."""
    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk
    from benchmarks.common import matmul_gflops, median_seconds, target_forward_flops

    model = hk.targets.build_model("resnet20", seed=0)
    target = hk.TargetNetwork(model)
    rng = np.random.RandomState(0)
    params = {
        s.name: tf.constant(rng.randn(k, *s.shape).astype("float32") * (0.1 if "kernel" in s.name else 1.0))
        for s in target.param_specs
    }
    x = tf.constant(rng.rand(k, b, 32, 32, 3).astype("float32"))
    y = tf.constant(rng.randint(0, 10, size=(k, b)))

    def loss_of(logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

    def bn(h, w, name):  # BatchNormalization(epsilon=1e-5) on batch statistics
        mean, var = tf.nn.moments(h, [0, 1, 2])
        return tf.nn.batch_normalization(h, mean, var, w[f"{name}/beta"], w[f"{name}/gamma"], 1e-5)

    def conv(h, w, name, strides=1):
        return tf.nn.conv2d(h, w[f"{name}/kernel"], strides, "SAME")

    def forward(w, h):
        h = tf.nn.relu(bn(conv(h, w, "stem_conv"), w, "stem_bn"))
        channels = 16
        for stage in range(3):
            filters = 16 * 2**stage
            for block in range(3):
                p = f"stage{stage + 1}_block{block + 1}"
                strides = 2 if stage > 0 and block == 0 else 1
                r = tf.nn.relu(bn(conv(h, w, f"{p}_conv1", strides), w, f"{p}_bn1"))
                r = bn(conv(r, w, f"{p}_conv2"), w, f"{p}_bn2")
                shortcut = h
                if strides != 1 or channels != filters:
                    shortcut = bn(conv(h, w, f"{p}_proj_conv", strides), w, f"{p}_proj_bn")
                h = tf.nn.relu(shortcut + r)
                channels = filters
        h = tf.reduce_mean(h, [1, 2])
        return tf.matmul(h, w["logits/kernel"]) + w["logits/bias"]

    @tf.function
    def apply_step(params, x):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = loss_of(target.apply(params, x, training=True))
        return tape.gradient(loss, params)

    @tf.function
    def loop_step(params, x):
        with tf.GradientTape() as tape:
            tape.watch(params)
            per_network = [dict(zip(params, ws)) for ws in zip(*(tf.unstack(t, num=k) for t in params.values()))]
            loss = loss_of(tf.stack([forward(per_network[i], x[i]) for i in range(k)]))
        return tape.gradient(loss, params)

    t0 = time.perf_counter()
    ga = apply_step(params, x)
    tf.nest.map_structure(lambda t: t.numpy(), ga)
    trace_s = time.perf_counter() - t0
    gl = loop_step(params, x)
    diff = max(float(tf.reduce_max(tf.abs(ga[n] - gl[n]))) for n in params)
    if diff > 1e-3:
        raise SystemExit(f"resnet apply and loop gradients differ by {diff}")
    times = {"apply": [], "loop": []}
    for _ in range(3):
        times["apply"].append(median_seconds(lambda: apply_step(params, x), repeats=repeats))
        times["loop"].append(median_seconds(lambda: loop_step(params, x), repeats=repeats))
        peaks.append(matmul_gflops())
    resnet_s, loop_s = (sorted(times[n])[1] for n in ("apply", "loop"))
    return {
        "resnet_networks": k,
        "resnet_s": round(resnet_s, 4),
        "resnet_loop_s": round(loop_s, 4),
        "resnet_ratio": round(resnet_s / loop_s, 4),
        "resnet_trace_s": round(trace_s, 2),
        "resnet_gflop": round(3 * target_forward_flops(target, k * b) / 1e9, 4),
    }


if __name__ == "__main__":
    main()
