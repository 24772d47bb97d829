"""Serving: the exported ensemble ``predict`` endpoint as a fraction of the machine's peak, and vs single networks.

A weight generator (Deutsch generator on the Deutsch MNIST target by default) is exported with
`hyperkeras.export.export_generator`; `--distinct` networks it samples are exported with
`export_model` (each a standalone SavedModel). On a batch of 128 images, we time (medians, interleaved):

* ``predict(x, n, seed)`` for n = 10 and n = 100 (one call: sample n networks + run them + summarise);
* the same n networks served one after the other: n calls of single-network SavedModels (cycling over
  the `--distinct` exported ones; the compute per call is the same for any network), then softmax and
  averaging in NumPy, as a client would.

Prints one JSON line. Its headline is the distance of the ``predict(x, n=100)`` endpoint to the machine
(`benchmarks.common.peak_fields`): ``gflop`` = the FLOPs of one such call, counted as 2 per multiply-add:
the generator's matrix products for 100 noise vectors (`graph_matmul_flops` of ``model.generate``,
inference mode) plus the 100 networks' conv/dense layers on the batch (`target_forward_flops`); the
gauge transform, softmax and the summaries are not counted. ``gflops`` = gflop / ``predict_n100_s``;
``fraction_of_peak`` = gflops / ``matmul_gflops``, the fp32 2048² matmul peak measured in the same run
(median of measurements before and after every round); ``predict_n10_fraction_of_peak`` the same for
n = 10.

Secondary, the comparison with a client's loop: ``predict_n10_s``, ``loop_n10_s``, ``predict_n100_s``,
``loop_n100_s``, throughputs in images·networks/s, and ``ratio`` = predict_n100_s / loop_n100_s
(``ratio_n10`` for n = 10).

    python -m benchmarks.serving [--generator deutsch|hypergan] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", choices=["deutsch", "hypergan"], default="deutsch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--distinct", type=int, default=10, help="distinct single-network SavedModels exported")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk
    from benchmarks.common import (
        emit,
        graph_matmul_flops,
        matmul_gflops,
        median_seconds,
        peak_fields,
        target_forward_flops,
    )

    if args.generator == "deutsch":
        target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist", seed=0))
        model = hk.models.EntropyHypernetwork(target, hk.generators.DeutschGenerator.paper_config(target))
    else:
        model = hk.models.HyperGAN("hypergan_mnist", num_networks=8)
        target = model.target
    x = tf.constant(np.random.RandomState(0).rand(args.batch, *target.input_shape).astype("float32"))
    seed = tf.constant(0, tf.int64)

    with tempfile.TemporaryDirectory() as tmp:
        served = tf.saved_model.load(hk.export.export_generator(model, os.path.join(tmp, "generator")))
        params = model.sample(args.distinct, 0)
        singles = [
            tf.saved_model.load(hk.export.export_model(target.to_keras_model(params, i), os.path.join(tmp, f"net{i}")))
            for i in range(args.distinct)
        ]

        def predict(n):
            return served.predict(x=x, n=tf.constant(n), seed=seed)["mean_probs"]

        def loop(n):
            probs = [tf.nn.softmax(singles[i % len(singles)].serve(x)).numpy() for i in range(n)]
            return tf.constant(np.mean(probs, axis=0))

        def predict_flops(n):  # one predict(x, n) call (see the module docstring)
            gen = graph_matmul_flops(lambda z: model.generate(z, training=False), model.sample_noise(n, 0))
            return gen + n * target_forward_flops(target, args.batch)

        result = {
            "benchmark": "serving",
            "generator": args.generator,
            "batch": args.batch,
            "distinct_single_models": args.distinct,
        }
        peaks, seconds = [matmul_gflops()], {}
        for n in (10, 100):
            p_times, l_times = [], []
            for _ in range(3):  # interleave to share machine noise
                p_times.append(median_seconds(lambda n=n: predict(n), repeats=args.repeats, warmup=1))
                l_times.append(median_seconds(lambda n=n: loop(n), repeats=args.repeats, warmup=1))
                peaks.append(matmul_gflops())
            p, l = sorted(p_times)[1], sorted(l_times)[1]
            seconds[n] = p
            result[f"predict_n{n}_s"] = round(p, 5)
            result[f"loop_n{n}_s"] = round(l, 5)
            result[f"predict_n{n}_throughput"] = round(n * args.batch / p, 1)
            result[f"loop_n{n}_throughput"] = round(n * args.batch / l, 1)
        result["ratio"] = round(result["predict_n100_s"] / result["loop_n100_s"], 4)
        result["ratio_n10"] = round(result["predict_n10_s"] / result["loop_n10_s"], 4)
        result["predict_n10_fraction_of_peak"] = peak_fields(predict_flops(10), seconds[10], peaks)["fraction_of_peak"]
        result.update(peak_fields(predict_flops(100), seconds[100], peaks))
    emit(result)


if __name__ == "__main__":
    main()
