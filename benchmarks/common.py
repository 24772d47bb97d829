"""Helpers shared by the benchmarks: robust timing, the machine's matmul peak, FLOP counts, JSON output."""

from __future__ import annotations

import json
import statistics
import time


def median_seconds(fn, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over `repeats` calls after `warmup` calls (results are forced)."""
    for _ in range(warmup):
        _force(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _force(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _force(out):
    import tensorflow as tf

    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """fp32 GFLOP/s of an n×n by n×n tf.matmul on this machine, measured now."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda a, b: tf.matmul(a, b))
    s = median_seconds(lambda: f(a, b), repeats=repeats)
    return 2.0 * n**3 / s / 1e9


def target_forward_flops(target, batch: int) -> float:
    """Multiply-add FLOPs (×2) of one forward pass of `target` (a TargetNetwork) on `batch` examples."""
    specs = {s.name: s for s in target.layers}
    flops = 0.0
    for layer, out_shape in target.layer_output_shapes():
        spec = specs.get(layer.name)
        if spec is not None:
            per_output = spec.filter_size - (spec.bias is not None)
            flops += 2.0 * per_output * float(_prod(out_shape[1:]))
    return flops * batch


def _prod(xs):
    p = 1
    for x in xs:
        p *= int(x)
    return p


def emit(result: dict):
    """Prints the benchmark's single JSON line."""
    print(json.dumps(result, sort_keys=True))


def add_optimizer_flag(parser):
    """``--optimizer fused|keras``: the Adam both sides of a step comparison use."""
    parser.add_argument(
        "--optimizer",
        choices=["fused", "keras"],
        default="fused",
        help="Adam for both steps: hyperkeras.optimizers.FusedAdam or keras.optimizers.Adam",
    )


def make_adam(kind: str, learning_rate: float):
    """`hyperkeras.optimizers.FusedAdam` (kind "fused") or `keras.optimizers.Adam` (kind "keras")."""
    import keras

    from hyperkeras.optimizers import FusedAdam

    return (FusedAdam if kind == "fused" else keras.optimizers.Adam)(learning_rate)
