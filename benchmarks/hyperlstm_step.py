"""Training-step time of keras.layers.RNN(HyperLSTMCell) vs keras.layers.LSTM, side by side in one run.

Batch 64, sequence 100, 512 units, input size 512 (a stacked layer), hyper 128 units, N_z 16, layer norm
on (the paper's cell). One training step = forward over the sequence, backward, Adam update; both
layers run inside a `tf.function` (graph mode, no XLA). Prints one JSON line with ``hyper_s``,
``lstm_s`` (median seconds per step), ``flop_ratio`` (multiply-add count of the hyper cell's step over
the LSTM's, matrix products only) and ``ratio`` = hyper_s / lstm_s.

    python -m benchmarks.hyperlstm_step [--batch 64 --seq 100 --units 512 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

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
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from hyperkeras.layers import HyperLSTMCell

    rng = np.random.RandomState(0)
    x = tf.constant(rng.randn(args.batch, args.seq, args.input_dim).astype("float32"))

    def make_step(layer):
        layer.build((None, args.seq, args.input_dim))
        opt = keras.optimizers.Adam(1e-3)
        opt.build(layer.trainable_variables)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                y = layer(x, training=True)
                loss = tf.reduce_mean(tf.square(y))
            grads = tape.gradient(loss, layer.trainable_variables)
            opt.apply(grads, layer.trainable_variables)
            return loss

        return step

    hyper = make_step(
        keras.layers.RNN(
            HyperLSTMCell(args.units, hyper_num_units=args.hyper_units, hyper_embedding_size=args.nz),
            return_sequences=True,
        )
    )
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

    hyper_times, lstm_times = [], []
    for _ in range(args.rounds):  # interleaved so that machine noise hits both alike
        hyper_times.append(median_seconds(hyper, args.repeats))
        lstm_times.append(median_seconds(lstm, args.repeats))
    hyper_s, lstm_s = statistics.median(hyper_times), statistics.median(lstm_times)
    flop_ratio = step_flops(args.units, args.input_dim, args.hyper_units, args.nz) / step_flops(
        args.units, args.input_dim
    )
    print(
        json.dumps(
            {
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
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
