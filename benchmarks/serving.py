"""Serving: the exported ensemble ``predict`` endpoint vs calling exported single networks one by one.

A weight generator (Deutsch generator on the Deutsch MNIST target by default) is exported with
`hyperkeras.export.export_generator`; `--distinct` networks it samples are exported with
`export_model` (each a standalone SavedModel). On a batch of 128 images, we time (medians, interleaved):

* ``predict(x, n, seed)`` for n = 10 and n = 100 (one call: sample n networks + run them + summarise);
* the same n networks served one after the other: n calls of single-network SavedModels (cycling over
  the `--distinct` exported ones; the compute per call is the same for any network), then softmax and
  averaging in NumPy, as a client would.

Prints one JSON line with ``predict_n10_s``, ``loop_n10_s``, ``predict_n100_s``, ``loop_n100_s``,
throughputs in images·networks/s, and ``ratio`` = predict_n100_s / loop_n100_s (target ≤ 0.5).

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
    from benchmarks.common import emit, median_seconds

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

        result = {
            "benchmark": "serving",
            "generator": args.generator,
            "batch": args.batch,
            "distinct_single_models": args.distinct,
        }
        for n in (10, 100):
            p_times, l_times = [], []
            for _ in range(3):  # interleave to share machine noise
                p_times.append(median_seconds(lambda n=n: predict(n), repeats=args.repeats, warmup=1))
                l_times.append(median_seconds(lambda n=n: loop(n), repeats=args.repeats, warmup=1))
            p, l = sorted(p_times)[1], sorted(l_times)[1]
            result[f"predict_n{n}_s"] = round(p, 5)
            result[f"loop_n{n}_s"] = round(l, 5)
            result[f"predict_n{n}_throughput"] = round(n * args.batch / p, 1)
            result[f"loop_n{n}_throughput"] = round(n * args.batch / l, 1)
        result["ratio"] = round(result["predict_n100_s"] / result["loop_n100_s"], 4)
        result["ratio_n10"] = round(result["predict_n10_s"] / result["loop_n10_s"], 4)
    emit(result)


if __name__ == "__main__":
    main()
