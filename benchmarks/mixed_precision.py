"""Training steps under the float32, mixed_bfloat16 and mixed_float16 policies, side by side in one run.

For each preset (HyperGAN and the Deutsch EntropyHypernetwork on the MNIST-sized paper targets, at a size
that fits a CI machine), one model per policy is built under that policy and its `train_step` timed in
alternating rounds (so machine load affects all alike). ``<preset>_<policy>_s``: median seconds per step;
``<preset>_<policy>_vs_float32``: that time over the float32 one (< 1: faster). On a CPU, float16
matmuls and convolutions have no fast kernels in TensorFlow's default build (they fall back to Eigen,
see the oneDNN log line); bfloat16 ones use AVX512-BF16 where the CPU has it.

Distance to the machine (`benchmarks.common.peak_fields`): ``<preset>_<policy>_fraction_of_peak`` =
the step's FLOPs (`benchmarks.common.hypernetwork_step_flops`: 2 per multiply-add of the networks'
conv/dense layers and the generator's matrix products, ×3 for forward + backward, plus the entropy's
Gram matrix or the discriminator's calls; the same count under every policy) / its median seconds / the
fp32 2048² matmul peak ``matmul_gflops`` measured in the same run (median of measurements before and after
every round). The line's ``gflop``, ``gflops`` and ``fraction_of_peak`` are those of the Deutsch preset
under float32, the reference the ``_vs_float32`` ratios divide by. ``bfloat16_matmul_gflops``: the same
matmul in bfloat16, measured once at the end (what bfloat16 products can reach on this CPU).

    python -m benchmarks.mixed_precision [--networks 16 --images 32 --repeats 5 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics

from benchmarks.common import emit, hypernetwork_step_flops, matmul_gflops, median_seconds, peak_fields

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=16, help="networks per step (K)")
    parser.add_argument("--images", type=int, default=32, help="images per network")
    parser.add_argument("--units", type=int, default=256, help="hidden units of the HyperGAN's mixer/generators")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name in ("networks", "images", "units", "repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    import keras
    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk

    k, b = args.networks, args.images
    rng = np.random.RandomState(0)

    def build(preset, policy):
        keras.mixed_precision.set_global_policy(policy)
        try:
            if preset == "hypergan":
                model = hk.models.HyperGAN(
                    "hypergan_mnist",
                    mixer_units=(args.units,),
                    generator_units=(args.units,),
                    discriminator_units=(args.units,),
                    num_networks=k,
                )
                model.compile(
                    optimizer=hk.optimizers.FusedAdam(1e-4), discriminator_optimizer=hk.optimizers.FusedAdam(1e-4)
                )
                batch = b
            else:
                target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist"))
                model = hk.models.EntropyHypernetwork(
                    target, hk.generators.DeutschGenerator.paper_config(target), num_networks=k
                )
                model.compile(optimizer=hk.optimizers.FusedAdam(3e-4))
                batch = b * k  # shared out: b images per network
            target = model.target
            x = tf.constant(rng.rand(batch, *target.input_shape).astype("float32"))
            y = tf.constant(rng.randint(0, int(target.output_shape[-1]), size=batch).astype("int32"))
            step = tf.function(model.train_step)
            step((x, y))  # trace + first step
            flop = hypernetwork_step_flops(model, batch) if policy == "float32" else None
            return (lambda: step((x, y))["loss"]), flop
        finally:
            keras.mixed_precision.set_global_policy("float32")

    result = {"benchmark": "mixed_precision", "networks": k, "images": b}
    peaks, seconds, flops = [matmul_gflops()], {}, {}
    for preset in ("hypergan", "deutsch"):
        built = {p: build(preset, p) for p in POLICIES}
        steps = {p: built[p][0] for p in POLICIES}
        flops[preset] = built["float32"][1]
        times = {p: [] for p in POLICIES}
        for r in range(args.rounds):
            for p in POLICIES:
                times[p].append(median_seconds(steps[p], repeats=args.repeats, warmup=2 if r == 0 else 1))
            peaks.append(matmul_gflops())
        for p in POLICIES:
            seconds[preset, p] = statistics.median(times[p])
    for (preset, p), s in seconds.items():
        result[f"{preset}_{p}_s"] = round(s, 4)
        result[f"{preset}_{p}_fraction_of_peak"] = peak_fields(flops[preset], s, peaks)["fraction_of_peak"]
        if p != "float32":
            result[f"{preset}_{p}_vs_float32"] = round(s / seconds[preset, "float32"], 2)
    result["bfloat16_matmul_gflops"] = round(matmul_gflops(repeats=5, dtype="bfloat16"), 2)
    result.update(peak_fields(flops["deutsch"], seconds["deutsch", "float32"], peaks))
    emit(result)


if __name__ == "__main__":
    main()
