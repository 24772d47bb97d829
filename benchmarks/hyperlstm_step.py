"""Training-step time of keras.layers.RNN(HyperLSTMCell) vs keras.layers.LSTM, side by side in one run.

Batch 64, sequence 100, 512 units, input size 512 (a stacked layer), hyper 128 units, N_z 16, layer norm
on (the paper's cell). One training step = forward over the sequence, backward, Adam update; both
layers run inside a `tf.function` (graph mode, no XLA). Prints one JSON line with ``hyper_s``,
``lstm_s`` (median seconds per step), ``flop_ratio`` (multiply-add count of the hyper cell's step over
the LSTM's, matrix products only) and ``ratio`` = hyper_s / lstm_s.

Distance to the machine (`benchmarks.common.peak_fields`, for the hyper step, the headline): ``gflop`` =
2 per multiply-add of the cell's matrix products (`step_flops`: the LSTM's [x, h] → 4 gates, the hyper
LSTM on [x, h], its z projections and the d projections) × batch × sequence length × 3 for forward +
backward (one product forward, two backward: gradients w.r.t. inputs and weights); elementwise gate
maths, layer norm and Adam are not counted. ``gflops`` = gflop / ``hyper_s``; ``fraction_of_peak`` =
gflops / ``matmul_gflops``, the fp32 2048² matmul peak measured in the same run (median of measurements
before and after every round). ``lstm_gflop`` / ``lstm_fraction_of_peak``: the same for the LSTM step.

``--variants`` (e.g. ``all`` = ``float32,mixed_bfloat16,float32_xla,mixed_bfloat16_xla``): the hyper
step of a fresh layer built under each Keras dtype policy, in a `tf.function` with ``jit_compile=True``
for ``_xla``, timed side by side in alternating rounds. ``variants`` maps each to ``{"s", "vs_float32",
"fraction_of_peak" (the same FLOP count), "first_step_s" (trace/compile + one step), "first_loss"}``, or
to ``"error: ..."`` when the variant cannot be built, traced or run. Off by default.

    python -m benchmarks.hyperlstm_step [--batch 64 --seq 100 --units 512 --repeats 5] [--variants all]

``--grappler=off`` switches TensorFlow's graph optimizer off for the whole run (``"grappler"`` in the
JSON line): the first step gets shorter and the steps may get slower; compare with a second run
``--grappler=on`` (docs/results/benchmarks.md, sixth session).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.common import (
    add_grappler_flag,
    add_variants_flag,
    apply_grappler,
    emit,
    matmul_gflops,
    measure_variants,
    parse_variants,
    peak_fields,
    run_variant_first_steps,
    under_policy,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def step_flops(units, input_dim, hyper_units=None, nz=None):
    """Multiply-adds per example and time step of the matrix products (forward)."""
    lstm = (input_dim + units) * 4 * units
    if hyper_units is None:
        return lstm
    hyper = (input_dim + units + hyper_units) * 4 * hyper_units  # hyper LSTM on [x, h]
    z = hyper_units * 12 * nz  # z_x, z_h, z_b for 4 gates
    d = 12 * nz * units  # d_x, d_h, b(z_b) projections
    return lstm + hyper + z + d


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--input_dim", type=int, default=512)
    parser.add_argument("--hyper_units", type=int, default=128)
    parser.add_argument("--nz", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    add_variants_flag(parser)
    add_grappler_flag(parser)
    args = parser.parse_args()
    variants = parse_variants(parser, args.variants)

    import keras
    import numpy as np
    import tensorflow as tf

    apply_grappler(args.grappler)

    from hyperkeras.layers import HyperLSTMCell

    rng = np.random.RandomState(0)
    x = tf.constant(rng.randn(args.batch, args.seq, args.input_dim).astype("float32"))

    def make_step(layer, jit_compile=False):
        layer.build((None, args.seq, args.input_dim))
        opt = keras.optimizers.Adam(1e-3)
        opt.build(layer.trainable_variables)

        @tf.function(jit_compile=jit_compile)
        def step(x):
            with tf.GradientTape() as tape:
                y = layer(x, training=True)
                loss = tf.reduce_mean(tf.square(tf.cast(y, tf.float32)))
            grads = tape.gradient(loss, layer.trainable_variables)
            opt.apply(grads, layer.trainable_variables)
            return loss

        return step

    def hyper_layer():
        return keras.layers.RNN(
            HyperLSTMCell(args.units, hyper_num_units=args.hyper_units, hyper_embedding_size=args.nz),
            return_sequences=True,
        )

    hyper = make_step(hyper_layer())
    lstm = make_step(keras.layers.LSTM(args.units, return_sequences=True))

    def median_seconds(fn, repeats, warmup=1):
        for _ in range(warmup):
            fn(x).numpy()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x).numpy()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    peaks = [matmul_gflops()]
    hyper_times, lstm_times = [], []
    for _ in range(args.rounds):  # interleaved so that machine noise hits both alike
        hyper_times.append(median_seconds(hyper, args.repeats))
        lstm_times.append(median_seconds(lstm, args.repeats))
        peaks.append(matmul_gflops())
    hyper_s, lstm_s = statistics.median(hyper_times), statistics.median(lstm_times)
    hyper_mac = step_flops(args.units, args.input_dim, args.hyper_units, args.nz)
    lstm_mac = step_flops(args.units, args.input_dim)
    flop_ratio = hyper_mac / lstm_mac
    examples = args.batch * args.seq
    flop, lstm_flop = 3 * 2 * hyper_mac * examples, 3 * 2 * lstm_mac * examples

    variant_results = None
    if variants:

        def make_variant(name, policy, jit):
            step = under_policy(policy, lambda: make_step(hyper_layer(), jit_compile=jit))
            return lambda: step(x)

        steps, firsts = run_variant_first_steps(variants, make_variant)
        variant_results = measure_variants(steps, args.rounds, args.repeats, flop, peaks, firsts=firsts)

    lstm_fields = peak_fields(lstm_flop, lstm_s, peaks)
    result = {
        "benchmark": "hyperlstm_step",
        "grappler": args.grappler,
        "batch": args.batch,
        "seq": args.seq,
        "units": args.units,
        "input_dim": args.input_dim,
        "hyper_units": args.hyper_units,
        "nz": args.nz,
        "hyper_s": round(hyper_s, 4),
        "lstm_s": round(lstm_s, 4),
        "flop_ratio": round(flop_ratio, 3),
        "ratio": round(hyper_s / lstm_s, 3),
        "lstm_gflop": lstm_fields["gflop"],
        "lstm_fraction_of_peak": lstm_fields["fraction_of_peak"],
        **peak_fields(flop, hyper_s, peaks),
    }
    if variant_results is not None:
        result["variants"] = variant_results
    emit(result)


if __name__ == "__main__":
    main()
