"""Hyper WRN-40-2 vs WRN-40-2: forward + backward time of one training batch (static hypernetwork overhead).

Both models see the same batch (default 128 random 32×32×3 images) in the same run: one tf.function
per model computes the cross-entropy (batch norm in training mode) and its gradients w.r.t. all
trainable weights. Measurements of the two are interleaved (several rounds, median of medians).
Prints one JSON line: ``hyper_s``, ``plain_s`` (median seconds per step), ``ratio`` = hyper_s / plain_s,
``kernel_s`` (generating + back-propagating through the 36 kernels alone), and the parameter counts.

Distance to the machine (`benchmarks.common.peak_fields`, for the hyper step): ``gflop`` = the matrix
products and convolutions of one forward pass of the hyper model on the batch (`graph_matmul_flops` of
``model(x, training=True)``: the WRN's convolutions and dense layer plus the kernel generation), 2 per
multiply-add, ×3 for forward + backward (one product forward, two backward: gradients w.r.t. inputs and
weights); batch norm, activations and the loss are not counted. ``gflops`` = gflop / ``hyper_s``;
``fraction_of_peak`` = gflops / ``matmul_gflops``, the fp32 2048² matmul peak measured in the same run
(median of measurements before and after every round). ``plain_gflop`` / ``plain_fraction_of_peak``: the
same for the plain WRN's step.

    python -m benchmarks.static_overhead [--depth 40 --width 2 --batch_size 128 --repeats 5 --rounds 3]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name in ("depth", "width", "batch_size", "repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1, got {getattr(args, name)}")

    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks.common import emit, graph_matmul_flops, matmul_gflops, median_seconds, peak_fields
    from hyperkeras.layers import HyperConv2D
    from hyperkeras.targets import wrn

    keras.utils.set_random_seed(0)
    hyper = wrn.wide_resnet(args.depth, args.width, hyper=True, weight_decay=5e-4)
    plain = wrn.wide_resnet(args.depth, args.width, hyper=False, weight_decay=5e-4)
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(args.batch_size, 32, 32, 3).astype("float32"))
    y = tf.constant(rng.randint(0, 10, size=args.batch_size))

    def make_step(model):
        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)) + tf.add_n(
                    model.losses
                )
            return tape.gradient(loss, model.trainable_variables)

        return step

    hyper_layers = [l for l in hyper.layers if isinstance(l, HyperConv2D)]  # noqa: E741
    gen_vars = [v for l in hyper_layers for v in (l.embeddings,)] + hyper_layers[0].generator.trainable_variables  # noqa: E741

    @tf.function
    def kernels_step():
        with tf.GradientTape() as tape:
            total = tf.add_n([tf.reduce_sum(tf.square(layer.kernel)) for layer in hyper_layers])
        return tape.gradient(total, gen_vars)

    hyper_step, plain_step = make_step(hyper), make_step(plain)
    hyper_flop = 3 * graph_matmul_flops(lambda x: hyper(x, training=True), x)
    plain_flop = 3 * graph_matmul_flops(lambda x: plain(x, training=True), x)
    peaks = [matmul_gflops()]
    hyper_times, plain_times = [], []
    for _ in range(args.rounds):
        hyper_times.append(median_seconds(lambda: hyper_step(x, y), repeats=args.repeats))
        plain_times.append(median_seconds(lambda: plain_step(x, y), repeats=args.repeats))
        peaks.append(matmul_gflops())
    kernel_s = median_seconds(kernels_step, repeats=max(args.repeats, 5))
    hyper_s, plain_s = float(np.median(hyper_times)), float(np.median(plain_times))
    plain_fields = peak_fields(plain_flop, plain_s, peaks)
    emit(
        {
            "benchmark": "static_overhead",
            "model": f"WRN-{args.depth}-{args.width}",
            "batch_size": args.batch_size,
            "hyper_s": round(hyper_s, 4),
            "plain_s": round(plain_s, 4),
            "ratio": round(hyper_s / plain_s, 4),
            "kernel_s": round(kernel_s, 4),
            "hyper_params": int(sum(int(np.prod(v.shape)) for v in hyper.trainable_variables)),
            "plain_params": int(sum(int(np.prod(v.shape)) for v in plain.trainable_variables)),
            "plain_gflop": plain_fields["gflop"],
            "plain_fraction_of_peak": plain_fields["fraction_of_peak"],
            **peak_fields(hyper_flop, hyper_s, peaks),
        }
    )


if __name__ == "__main__":
    main()
