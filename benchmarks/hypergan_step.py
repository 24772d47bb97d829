"""HyperGAN training step vs. the target-apply-only step, side by side in one run.

``step_s``: median seconds of one `HyperGAN.train_step` (mixer, layer generators, K target networks
forward + backward, discriminator, both Adam updates). ``apply_s``: median seconds of the step that
remains without a hypernetwork: the same K networks' weights held as variables, forward + backward on
the same batch through the reference path (``TargetNetwork(fast_path=False)``: Keras's `stateless_call`
and TensorFlow's convolution gradients, where the step takes the default path), one Adam update. ``ratio`` = step_s / apply_s (issue target: ≤ 1.5). ``guard_overhead`` = step_s / ``unguarded_step_s``, the
same step without `fit`'s non-finite guard (the default step skips a NaN/Inf update). ``first_step_s``:
seconds of the first call of the step (`tf.function` trace + one step; the optimizers are built in
``compile``). The two steps are
timed in alternating rounds so that machine load affects both alike. Both use the same Adam:
`hyperkeras.optimizers.FusedAdam` by default, `--optimizer keras` for `keras.optimizers.Adam` (whose
unfused update of the 16.7M generator weights alone costs about 0.13 s).

Distance to the machine (`benchmarks.common.peak_fields`): ``gflop`` is the step's FLOPs
(`benchmarks.common.hypernetwork_step_flops`), counted as 2 per multiply-add: the K networks' conv/dense
layers on the batch (`target_forward_flops`), the mixer and layer generators' matrix products for K noise
vectors (`graph_matmul_flops` of ``model.generate``) and three calls of the discriminator on the
``[K, N, d]`` codes (generated codes with gradient to the mixer, prior samples, stopped codes), each ×3
for forward + backward (one product forward, two backward: gradients w.r.t. inputs and weights; this
over-counts the discriminator's unneeded gradients by well under 1 % of the step). Elementwise ops, the
losses and the Adam updates are not counted. ``gflops`` = gflop / ``step_s``; ``fraction_of_peak`` =
gflops / ``matmul_gflops``, the fp32 2048² matmul peak measured in the same run (median of measurements
before and after every round); ``apply_fraction_of_peak``: the apply-only step's 3 × the networks'
forward FLOPs / ``apply_s``.

``--variants`` (e.g. ``all`` = ``float32,mixed_bfloat16,float32_xla,mixed_bfloat16_xla``): the same step
of a fresh model built under each Keras dtype policy, its ``train_step`` in a `tf.function` with
``jit_compile=True`` for ``_xla`` (as ``compile(jit_compile=True)`` makes `fit` run it), timed side by
side in alternating rounds. ``variants`` maps each to ``{"s", "vs_float32", "fraction_of_peak" (the same
FLOP count), "first_step_s" (trace/compile + one step), "first_loss" (the same initial weights; the
``_xla`` variants draw other noise, see `benchmarks.common.run_variant_first_steps`)}``, or to
``"error: ..."`` when the variant cannot be built, traced or run. Off by default (each XLA compilation
takes tens of seconds here).

    python -m benchmarks.hypergan_step [--target hypergan_mnist --networks 32 --images 32 --units 512]
        [--variants all]

``--grappler=off`` switches TensorFlow's graph optimizer off for the whole run (``"grappler"`` in the
JSON line): the first step gets shorter and the steps may get slower; compare with a second run
``--grappler=on`` (docs/results/benchmarks.md, sixth session).
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import (
    add_grappler_flag,
    add_optimizer_flag,
    add_variants_flag,
    apply_grappler,
    emit,
    hypernetwork_step_flops,
    make_adam,
    matmul_gflops,
    measure_variants,
    median_seconds,
    parse_variants,
    peak_fields,
    run_variant_first_steps,
    target_forward_flops,
    under_policy,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="hypergan_mnist")
    parser.add_argument("--networks", type=int, default=32, help="networks per step (K)")
    parser.add_argument("--images", type=int, default=32, help="batch size (every network sees it)")
    parser.add_argument("--units", type=int, default=512, help="hidden units of mixer/generators/discriminator")
    parser.add_argument("--code_dim", type=int, default=128)
    add_optimizer_flag(parser)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    add_variants_flag(parser)
    add_grappler_flag(parser)
    args = parser.parse_args()
    variants = parse_variants(parser, args.variants)
    for name in ("networks", "images", "units", "code_dim", "repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    import statistics

    import numpy as np
    import tensorflow as tf

    apply_grappler(args.grappler)

    import hyperkeras as hk

    k, b = args.networks, args.images

    def build():
        model = hk.models.HyperGAN(
            args.target,
            code_dim=args.code_dim,
            mixer_units=(args.units,),
            generator_units=(args.units,),
            discriminator_units=(args.units,),
            num_networks=k,
        )
        model.compile(
            optimizer=make_adam(args.optimizer, 1e-4), discriminator_optimizer=make_adam(args.optimizer, 1e-4)
        )
        return model

    model = build()
    target = model.target
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(b, *target.input_shape).astype("float32"))
    classes = int(target.output_shape[-1])
    y = tf.constant(rng.randint(0, classes, size=b).astype("int32"))

    train_step = tf.function(model.train_step)
    t0 = time.perf_counter()
    train_step((x, y))["loss"].numpy()  # the first call: trace + one step
    first_step_s = time.perf_counter() - t0

    # The same step without the non-finite guard of `fit` (traced with it off): its cost, measured.
    unguarded_step = tf.function(model.train_step)
    model._guard.enabled = False
    unguarded_step((x, y))["loss"].numpy()
    model._guard.enabled = True

    reference = hk.TargetNetwork(target.model, fast_path=False)
    params = {name: tf.Variable(v) for name, v in model.sample(k, seed=1).items()}
    variables = list(params.values())
    opt = make_adam(args.optimizer, 1e-4)
    opt.build(variables)

    @tf.function
    def apply_step():
        with tf.GradientTape() as tape:
            logits = reference.apply(params, x, training=True)
            labels = tf.broadcast_to(y[None], [k, b])
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        opt.apply(tape.gradient(loss, variables), variables)
        return loss

    flop = hypernetwork_step_flops(model, b)  # one step (see the module docstring)
    target_fwd = target_forward_flops(target, k * b)

    peaks = [matmul_gflops()]
    step_times, apply_times, unguarded_times = [], [], []
    for r in range(args.rounds):
        warm = 2 if r == 0 else 1
        step_times.append(median_seconds(lambda: train_step((x, y))["loss"], repeats=args.repeats, warmup=warm))
        apply_times.append(median_seconds(apply_step, repeats=args.repeats, warmup=warm))
        unguarded_times.append(
            median_seconds(lambda: unguarded_step((x, y))["loss"], repeats=args.repeats, warmup=warm)
        )
        peaks.append(matmul_gflops())

    variant_results = None
    if variants:

        def make_step(name, policy, jit):
            m = under_policy(policy, build)
            f = tf.function(m.train_step, jit_compile=jit)
            return lambda: f((x, y))["loss"]

        steps, firsts = run_variant_first_steps(variants, make_step)
        variant_results = measure_variants(steps, args.rounds, args.repeats, flop, peaks, firsts=firsts)
    step_s, apply_s = statistics.median(step_times), statistics.median(apply_times)
    unguarded_s = statistics.median(unguarded_times)
    gen_params = int(sum(int(np.prod(v.shape)) for v in model.generator_variables))
    result = {
        "optimizer": args.optimizer,
        "benchmark": "hypergan_step",
        "grappler": args.grappler,
        "target": args.target,
        "networks": k,
        "images": b,
        "units": args.units,
        "generator_params": gen_params,
        "target_params": int(target.num_params),
        "step_s": round(step_s, 5),
        "apply_s": round(apply_s, 5),
        "ratio": round(step_s / apply_s, 3),
        "unguarded_step_s": round(unguarded_s, 5),
        "guard_overhead": round(step_s / unguarded_s, 3),
        "first_step_s": round(first_step_s, 2),
        "apply_fraction_of_peak": peak_fields(3 * target_fwd, apply_s, peaks)["fraction_of_peak"],
        **peak_fields(flop, step_s, peaks),
    }
    if variant_results is not None:
        result["variants"] = variant_results
    emit(result)


if __name__ == "__main__":
    main()
