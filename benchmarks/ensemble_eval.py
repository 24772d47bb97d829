"""Evaluating an ensemble of generated networks: `hyperkeras.ensembles.predict` vs. a keras predict loop.

N = 100 networks of the Deutsch MNIST target (random weights standing in for generated ones: the cost
does not depend on the values) on 10,000 images. Prints one JSON line:

* ``seconds``: median wall time of ``ensembles.predict`` (all N networks, all images, fused outputs);
* ``gflops``: forward FLOPs (2 per multiply-add of the conv/dense layers) / ``seconds``;
* ``matmul_gflops``: fp32 peak measured in the same run (median of 2048×2048 ``tf.matmul`` runs taken
  before, between and after the ensemble runs);
* ``ratio`` = gflops / matmul_gflops, also as ``fraction_of_peak`` (`benchmarks.common.peak_fields`, the
  keys every benchmark line carries), with ``gflop`` = the forward FLOPs of all N networks on all images
  (counted by `benchmarks.common.target_forward_flops`; softmax and averaging not counted);
* ``speedup_vs_predict_loop``: time of ``keras.Model.predict`` network by network (same batch size,
  plus the NumPy softmax average), per network, times N, divided by ``seconds``. The loop is timed on
  ``--loop_networks`` networks (each warmed up first) and scaled to N;
* ``layer_fraction_of_peak`` / ``layer_gflop_share`` / ``ceiling_fraction_of_peak``: each conv/dense
  layer's product timed alone for 8 networks at ``--batch_size`` images (`benchmarks.common.layer_ceiling`),
  its share of the FLOPs, and the fraction of peak a forward pass made of nothing but those products
  would reach — how far ``fraction_of_peak`` can go with these layer shapes and TensorFlow's kernels;
* ``peak_rss_mb_n1000``: peak resident memory (``resource.getrusage``) of a fresh process that runs
  ``ensembles.predict`` with N = 1,000 on ``--rss_images`` images; ``rss_baseline_mb`` is the same
  process's peak just before the evaluation (TensorFlow, data and the 1,000 networks' weights).

    python -m benchmarks.ensemble_eval [--networks 100 --images 10000 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _setup(target_name, networks, images, seed=0):
    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk

    target = hk.TargetNetwork(hk.targets.build_model(target_name, seed=seed))
    rng = np.random.RandomState(seed)
    params = {s.name: tf.constant(rng.randn(networks, *s.shape).astype("float32") * 0.05) for s in target.param_specs}
    x = rng.rand(images, *target.input_shape).astype("float32")
    return target, params, x


def _rss_child(args):
    import resource

    import numpy as np

    from hyperkeras import ensembles

    target, params, x = _setup(args.target, args.rss_networks, args.rss_images)
    ensembles.predict(
        params, x[:8], target=target, batch_size=args.batch_size, chunk_size=args.chunk_size, verbose=0
    )  # traces the chunk function
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    pred = ensembles.predict(
        params, x, target=target, batch_size=args.batch_size, chunk_size=args.chunk_size, verbose=0
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"peak_rss_mb": peak, "baseline_rss_mb": base, "checksum": float(np.sum(pred.mean_probs))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="deutsch_mnist")
    parser.add_argument("--networks", type=int, default=100)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=125)
    parser.add_argument("--chunk_size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop_networks", type=int, default=10)
    parser.add_argument("--rss_networks", type=int, default=1000)
    parser.add_argument("--rss_images", type=int, default=10000)
    parser.add_argument("--skip_rss", action="store_true")
    parser.add_argument("--rss_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return _rss_child(args)

    import numpy as np
    import tensorflow as tf

    from benchmarks.common import emit, layer_ceiling, matmul_gflops, peak_fields, target_forward_flops
    from hyperkeras import ensembles

    target, params, x = _setup(args.target, args.networks, args.images)
    n, b = args.networks, args.images

    def run_ensemble():
        return ensembles.predict(
            params, x, target=target, batch_size=args.batch_size, chunk_size=args.chunk_size, verbose=0
        )

    # Warm-up (traces the chunk function) on a slice, then check against a plain Keras model.
    warm = ensembles.predict(
        params, x[: args.batch_size], target=target, batch_size=args.batch_size, chunk_size=args.chunk_size, verbose=0
    )
    models = [target.to_keras_model(params, i) for i in range(min(args.loop_networks, n))]
    ref = tf.nn.softmax(models[0].predict(x[: args.batch_size], batch_size=args.batch_size, verbose=0)).numpy()
    if not np.allclose(warm.member_probs[0], ref, atol=1e-5):
        raise SystemExit("ensembles.predict disagrees with keras.Model.predict")

    def run_loop():
        total = None
        for m in models:
            p = tf.nn.softmax(m.predict(x, batch_size=args.batch_size, verbose=0)).numpy()
            total = p if total is None else total + p
        return total / len(models)

    for m in models:  # warm up every model's predict function
        m.predict(x[: 2 * args.batch_size], batch_size=args.batch_size, verbose=0)

    peaks, ens_times, loop_times = [matmul_gflops()], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run_ensemble()
        ens_times.append(time.perf_counter() - t0)
        peaks.append(matmul_gflops())
        t0 = time.perf_counter()
        run_loop()
        loop_times.append((time.perf_counter() - t0) / len(models) * n)
    seconds = statistics.median(ens_times)
    loop_s = statistics.median(loop_times)
    peak = statistics.median(peaks)
    ceiling = layer_ceiling(target, args.batch_size, peak)  # against the run's one peak
    flops = target_forward_flops(target, b) * n
    gflops = flops / seconds / 1e9

    result = {
        "benchmark": "ensemble_eval",
        "target": args.target,
        "networks": n,
        "images": b,
        "batch_size": args.batch_size,
        "seconds": round(seconds, 3),
        "ratio": round(gflops / peak, 4),
        "predict_loop_seconds": round(loop_s, 3),
        "speedup_vs_predict_loop": round(loop_s / seconds, 3),
        "forward_gflop": round(flops / 1e9, 1),
        "layer_fraction_of_peak": {k: v["fraction_of_peak"] for k, v in ceiling["layers"].items()},
        "layer_gflop_share": {k: v["gflop_share"] for k, v in ceiling["layers"].items()},
        "ceiling_fraction_of_peak": ceiling["ceiling_fraction_of_peak"],
        **peak_fields(flops, seconds, peaks),
    }
    if not args.skip_rss:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.ensemble_eval",
            "--rss_child",
            "--target",
            args.target,
            "--rss_networks",
            str(args.rss_networks),
            "--rss_images",
            str(args.rss_images),
            "--batch_size",
            str(args.batch_size),
        ]
        if args.chunk_size:
            cmd += ["--chunk_size", str(args.chunk_size)]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout
        child = json.loads(out.strip().splitlines()[-1])
        result["peak_rss_mb_n1000"] = round(child["peak_rss_mb"], 1)
        result["rss_baseline_mb"] = round(child["baseline_rss_mb"], 1)
        result["rss_networks"] = args.rss_networks
        result["rss_images"] = args.rss_images
    emit(result)


if __name__ == "__main__":
    main()
