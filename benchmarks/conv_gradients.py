"""Convolution gradients: TensorFlow's backprop kernels vs. `hyperkeras.convolution` (forward convolutions).

    python -m benchmarks.conv_gradients [--repeats 5 --rounds 3]

For each convolution shape of the library's targets (the Deutsch and HyperGAN MNIST targets, ResNet-20,
WRN-40-2), K networks of it (K = the shape's ``networks``) on their own batches, in one `tf.function`:
the forward convolution and both gradients (w.r.t. the input and the kernel) of a fixed output gradient,

- ``tf``: ``tf.nn.conv2d`` differentiated by TensorFlow (``Conv2DBackpropInput`` / ``Conv2DBackpropFilter``);
- ``forward_form``: `hyperkeras.convolution.conv2d`, whose gradients are forward convolutions where its
  allow-list holds (stride 1; SAME padding with an odd kernel: both gradients; VALID padding, the
  HyperGAN target's: the kernel gradient only) and TensorFlow's elsewhere.

Medians of ``--repeats`` calls per round, ``--rounds`` alternating rounds; the fp32 matmul peak is
measured between rounds. Prints one JSON line: per shape ``{tf_ms, forward_form_ms, speedup,
fraction_of_peak_tf, fraction_of_peak_forward_form, allow_listed}`` (FLOPs: 3 convolutions of the
forward pass's multiply-adds, ×2), ``median_speedup_allow_listed`` over the allow-listed shapes, and
``forward_form_pays``: whether `conv2d` takes the forward form by default on this CPU (`forward_form_pays`).
"""

from __future__ import annotations

import argparse
import os
import statistics

from benchmarks.common import emit, matmul_gflops, median_seconds

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# name: (networks, batch, height = width, in channels, out channels, kernel size, padding)
SHAPES = {
    "deutsch_conv1": (32, 32, 28, 1, 32, 5, "SAME"),
    "deutsch_conv2": (32, 32, 14, 32, 16, 5, "SAME"),
    "hypergan_conv1": (32, 32, 28, 1, 32, 5, "VALID"),
    "hypergan_conv2": (32, 32, 12, 32, 32, 5, "VALID"),
    "resnet20_stage1": (8, 32, 32, 16, 16, 3, "SAME"),
    "resnet20_stage3": (8, 32, 8, 64, 64, 3, "SAME"),
    "wrn40_2_stage1": (1, 128, 32, 32, 32, 3, "SAME"),
    "wrn40_2_stage3": (1, 128, 8, 128, 128, 3, "SAME"),
}


def _step(conv, x, k, dy):
    import tensorflow as tf

    @tf.function(autograph=False)
    def step():
        xs, ks, dys = tf.unstack(x), tf.unstack(k), tf.unstack(dy)
        with tf.GradientTape() as tape:
            tape.watch(xs + ks)
            ys = [conv(a, b) for a, b in zip(xs, ks)]
        return tape.gradient(ys, xs + ks, output_gradients=dys)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be >= 1")

    import numpy as np
    import tensorflow as tf

    from hyperkeras import convolution

    rng = np.random.RandomState(0)
    steps, flops, allowed = {}, {}, {}
    for name, (n, b, h, c_in, c_out, size, padding) in SHAPES.items():
        x = tf.constant(rng.randn(n, b, h, h, c_in).astype("float32"))
        k = tf.constant(rng.randn(n, size, size, c_in, c_out).astype("float32") * 0.1)
        out = tf.nn.conv2d(x[0], k[0], 1, padding)
        dy = tf.constant(rng.randn(n, *out.shape).astype("float32"))
        allowed[name] = convolution.forward_form_applies(x[0], k[0], 1, padding)
        steps[name] = {
            "tf": _step(lambda a, w, p=padding: tf.nn.conv2d(a, w, 1, p), x, k, dy),
            "forward_form": _step(lambda a, w, p=padding: convolution.conv2d(a, w, 1, p, forward_form=True), x, k, dy),
        }
        flops[name] = 3 * 2.0 * n * float(np.prod(out.shape)) * size * size * c_in
        got = steps[name]["forward_form"]()
        want = steps[name]["tf"]()
        for g, w in zip(got, want):  # the two are the same computation
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-3, atol=1e-3 * float(tf.reduce_max(tf.abs(w))))

    times = {name: {"tf": [], "forward_form": []} for name in SHAPES}
    peaks = [matmul_gflops()]
    for _ in range(args.rounds):
        for name in SHAPES:
            for kind in ("tf", "forward_form"):
                times[name][kind].append(median_seconds(steps[name][kind], repeats=args.repeats, warmup=1))
        peaks.append(matmul_gflops())
    peak = statistics.median(peaks)

    shapes = {}
    for name in SHAPES:
        t_tf = statistics.median(times[name]["tf"])
        t_ff = statistics.median(times[name]["forward_form"])
        shapes[name] = {
            "tf_ms": round(1e3 * t_tf, 2),
            "forward_form_ms": round(1e3 * t_ff, 2),
            "speedup": round(t_tf / t_ff, 3),
            "fraction_of_peak_tf": round(flops[name] / t_tf / 1e9 / peak, 3),
            "fraction_of_peak_forward_form": round(flops[name] / t_ff / 1e9 / peak, 3),
            "allow_listed": allowed[name],
        }
    emit(
        {
            "benchmark": "conv_gradients",
            "matmul_gflops": round(peak, 1),
            "shapes": shapes,
            "forward_form_pays": convolution.forward_form_pays(),
            "median_speedup_allow_listed": round(
                statistics.median(s["speedup"] for s in shapes.values() if s["allow_listed"]), 3
            ),
        }
    )


if __name__ == "__main__":
    main()
