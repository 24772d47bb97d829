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


def matmul_gflops(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """GFLOP/s of an n×n by n×n tf.matmul on this machine, measured now (fp32 unless `dtype` says)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    f = tf.function(lambda a, b: tf.matmul(a, b))
    s = median_seconds(lambda: f(a, b), repeats=repeats)
    return 2.0 * n**3 / s / 1e9


def _layer_flops(spec, out_shape) -> float:
    """Multiply-add FLOPs (×2) of a conv/dense layer (`LayerSpec`) per example, from its output shape."""
    return 2.0 * (spec.filter_size - (spec.bias is not None)) * float(_prod(out_shape[1:]))


def target_forward_flops(target, batch: int) -> float:
    """Multiply-add FLOPs (×2) of one forward pass of `target` (a TargetNetwork) on `batch` examples."""
    specs = {s.name: s for s in target.layers}
    flops = 0.0
    for layer, out_shape in target.layer_output_shapes():
        spec = specs.get(layer.name)
        if spec is not None:
            flops += _layer_flops(spec, out_shape)
    return flops * batch


def layer_ceiling(target, batch: int, peak_gflops: float, networks: int = 8, repeats: int = 5) -> dict:
    """How close to `peak_gflops` a forward pass of `target` can get, from its weighted layers alone: each
    Conv2D/Dense layer's product (``tf.nn.convolution`` with the layer's strides and padding, or
    ``tf.matmul``) timed by itself for `networks` networks (own kernels, own random inputs of the layer's
    input shape, `batch` examples each) in one `tf.function`, as an ensemble evaluation runs them. Returns
    ``{"layers": {name: {"gflop_share", "fraction_of_peak"}}, "ceiling_fraction_of_peak"}``: the ceiling
    is the whole pass's FLOPs over the sum of the layers' times, i.e. the fraction of peak of a forward
    pass that spent no time outside those products (bias, activation, pooling, softmax cost extra)."""
    import tensorflow as tf

    specs = {s.name: s for s in target.layers}
    layers, flops, total_s = {}, {}, 0.0
    for layer, out_shape in target.layer_output_shapes():
        spec = specs.get(layer.name)
        if spec is None or spec.kind not in ("conv2d", "dense"):
            continue
        xs = [tf.random.normal((batch, *layer.input.shape[1:])) for _ in range(networks)]
        ks = [tf.random.normal(spec.kernel.shape) for _ in range(networks)]

        def product(x, k, layer=layer, kind=spec.kind):
            if kind == "dense":
                return tf.matmul(x, k)
            return tf.nn.convolution(
                x, k, strides=layer.strides, padding=layer.padding.upper(), dilations=layer.dilation_rate
            )

        # One element of each output is returned: the products run in full, nothing is copied out.
        fn = tf.function(lambda xs=xs, ks=ks, f=product: [tf.reshape(f(x, k), [-1])[0] for x, k in zip(xs, ks)])
        flops[layer.name] = _layer_flops(spec, out_shape) * batch * networks
        seconds = median_seconds(fn, repeats=repeats)
        layers[layer.name] = {"fraction_of_peak": round(flops[layer.name] / seconds / 1e9 / peak_gflops, 3)}
        total_s += seconds
    total_flop = sum(flops.values())
    for name, v in layers.items():
        v["gflop_share"] = round(flops[name] / total_flop, 3)
    return {"layers": layers, "ceiling_fraction_of_peak": round(total_flop / total_s / 1e9 / peak_gflops, 3)}


def hypernetwork_step_flops(model, batch: int) -> float:
    """FLOPs (2 per multiply-add) of one `train_step` of a hyperkeras `Hypernetwork` (`EntropyHypernetwork`,
    `HyperGAN`) on a batch of `batch` examples, as the step benchmarks count them:

    - the K networks' conv/dense layers on their examples (`target_forward_flops`; K·batch examples with a
      shared batch, else the batch split among them) and the generator's matrix products for K noise
      vectors (`graph_matmul_flops` of ``model.generate(noise, training=True)``), each ×3 for forward +
      backward (one product forward, two backward: gradients w.r.t. inputs and weights);
    - an ``Entropy`` regulariser: the float64 Gram matrix of the K flattened networks, 2·K²·P (no gradient);
    - a ``LatentGAN`` regulariser: three discriminator calls on the ``[K, N, d]`` codes (generated codes with
      gradient to the mixer, prior samples, stopped codes), each ×3 (over-counting the gradients the step
      does not need by well under 1 % of the step).

    Elementwise ops, normalisations, losses and optimizer updates are not counted. Other regularisers: a
    ValueError (count them first)."""
    k = int(model.num_networks)
    target = model.target
    examples = k * batch if model.shared_batch else batch
    noise = model.sample_noise(k, 0)
    flop = 3 * (
        target_forward_flops(target, examples) + graph_matmul_flops(lambda z: model.generate(z, training=True), noise)
    )
    for r in model.regularizers:
        kind = type(r).__name__
        if kind == "Entropy":
            flop += 2.0 * k * k * target.num_params
        elif kind == "LatentGAN":
            codes = model.codes(noise, training=True)
            flop += 3 * 3 * graph_matmul_flops(lambda c, r=r: r.discriminator(c, training=True), codes)
        else:
            raise ValueError(f"hypernetwork_step_flops: no FLOP count for a {kind} regulariser.")
    return flop


def graph_matmul_flops(fn, *args) -> float:
    """FLOPs (2 per multiply-add) of the matrix products and convolutions of ``fn(*args)``, counted on its
    traced graph (`tf.function`, not run): MatMul, BatchMatMul, Einsum, Conv2D/3D and depthwise Conv2D,
    from their static shapes. Elementwise ops, reductions and normalisations are not counted. For forward
    passes made of Keras layers (generators, discriminators, plain models), whose ops are exactly the maths.
    Raises ValueError if the graph holds a loop or a function call (their bodies would be missed) or a
    product with an unknown static shape."""
    import tensorflow as tf

    graph = tf.function(fn, autograph=False).get_concrete_function(*args).graph
    total = 0.0
    for op in graph.get_operations():
        if op.type in ("While", "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf"):
            raise ValueError(f"graph_matmul_flops: {op.type} op {op.name!r}; its body would not be counted.")
        flops = _op_flops(op)
        if flops:
            total += flops
    return total


def _static(shape, op):
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        raise ValueError(f"graph_matmul_flops: {op.type} op {op.name!r} has an unknown static shape {shape}.")
    return dims


def _op_flops(op) -> float:
    t = op.type
    if t == "MatMul":
        a = _static(op.inputs[0].shape, op)
        inner = a[0] if op.get_attr("transpose_a") else a[1]
        return 2.0 * _prod(_static(op.outputs[0].shape, op)) * inner
    if t.startswith("BatchMatMul"):
        a = _static(op.inputs[0].shape, op)
        inner = a[-2] if op.get_attr("adj_x") else a[-1]
        return 2.0 * _prod(_static(op.outputs[0].shape, op)) * inner
    if t in ("Conv2D", "Conv3D", "DepthwiseConv2dNative"):
        kernel = _static(op.inputs[1].shape, op)
        out = _static(op.outputs[0].shape, op)
        per_output = _prod(kernel[:-2]) * (1 if t == "DepthwiseConv2dNative" else kernel[-2])
        return 2.0 * _prod(out) * per_output
    if t == "Einsum":
        equation = op.get_attr("equation").decode()
        sizes = {}
        for letters, x in zip(equation.split("->")[0].split(","), op.inputs):
            if "." in letters:
                raise ValueError(f"graph_matmul_flops: Einsum {equation!r} with an ellipsis is not counted.")
            sizes.update(zip(letters, _static(x.shape, op)))
        return 2.0 * _prod(sizes.values())
    return 0.0


def peak_fields(flop: float, seconds: float, peaks) -> dict:
    """The three keys every benchmark line carries, computed one way for all: ``gflop`` (FLOPs of the timed
    step or call, counted as the benchmark's docstring says), ``gflops`` (achieved: gflop / `seconds`, the
    median of the headline timing) and ``fraction_of_peak`` (gflops / the fp32 matmul peak), plus
    ``matmul_gflops``: the median of `peaks` (`matmul_gflops` values measured in the same run, interleaved
    with the benchmark's rounds so that machine load affects both alike)."""
    peak = statistics.median(peaks) if isinstance(peaks, (list, tuple)) else float(peaks)
    gflops = flop / seconds / 1e9
    return {
        "gflop": round(flop / 1e9, 4),
        "gflops": round(gflops, 2),
        "matmul_gflops": round(peak, 2),
        "fraction_of_peak": round(gflops / peak, 4),
    }


VARIANTS = ("float32", "mixed_bfloat16", "float32_xla", "mixed_bfloat16_xla")


def add_variants_flag(parser, default: str = ""):
    """``--variants``: comma-separated subset of `VARIANTS` (policy, and ``_xla`` for ``jit_compile=True``),
    or ``all``."""
    parser.add_argument(
        "--variants",
        default=default,
        help=f"comma-separated, measured side by side, interleaved: any of {','.join(VARIANTS)} "
        "(a Keras dtype policy; '_xla': the step's tf.function with jit_compile=True), or 'all'",
    )


def parse_variants(parser, text: str) -> list:
    """The variant names of ``--variants`` (`VARIANTS` order kept as given; ``all`` = every one)."""
    if text.strip() == "all":
        return list(VARIANTS)
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    return names


def split_variant(name: str):
    """``(policy, jit_compile)`` of a variant name, e.g. ``"mixed_bfloat16_xla"`` -> ("mixed_bfloat16", True)."""
    return name.removesuffix("_xla"), name.endswith("_xla")


def under_policy(policy: str, build):
    """``build()`` under the Keras global dtype policy `policy` (reset to float32 afterwards), as a model is
    built for mixed precision."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        return build()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def short_error(e: BaseException, limit: int = 300) -> str:
    """``"error: <type>: <first line of the message>"``, at most `limit` characters: a failed variant's value."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"error: {type(e).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_variant_first_steps(variants, make_step):
    """For each variant name, ``make_step(name, policy, jit_compile)`` -> a zero-argument step returning the
    loss, then its first call (trace, XLA compilation + one step), timed, and a second one. Returns
    ``(steps, firsts)``: ``{name: step, or "error: ..." if building, tracing or a call failed, or if the
    step compiles again on every call}`` and ``{name: {"first_step_s", "first_loss"}}``. Every variant starts
    from the same Keras seed (the same initial weights); the ``_xla`` ones of a model that draws noise
    still start from another loss: TensorFlow's stateless random ops with the default algorithm
    (``auto_select``) give other numbers under XLA than their CPU kernels (with ``alg="philox"`` the
    same), so their first step sees other noise.

    Recompilation: XLA takes a variable as a compile-time constant when a value that must be static (a
    shape, top_k's k, ...) depends on it, and then compiles again whenever it changes, i.e. every step. An
    ``_xla`` variant whose second call takes over half as long as its first (of over 2 s: compilation
    normally dwarfs a step) is reported as such an error rather than timed (each timed call would be a
    compilation)."""
    import keras

    steps, firsts = {}, {}
    for name in variants:
        policy, jit = split_variant(name)
        try:
            keras.utils.set_random_seed(0)  # the same initial weights for every variant: comparable first losses
            t0 = time.perf_counter()
            fn = make_step(name, policy, jit)
            loss = float(fn())
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            float(fn())
            second = time.perf_counter() - t0
            if jit and first > 2.0 and second > 0.5 * first:
                steps[name] = (
                    f"error: compiles again on every call (first call {first:.1f} s, loss {loss:.5g}; second "
                    f"{second:.1f} s; a variable taken as a compile-time constant?): not timed"
                )
                continue
            firsts[name] = {"first_step_s": round(first, 2), "first_loss": round(loss, 5)}
            steps[name] = fn
        except Exception as e:  # noqa: BLE001 - a variant that fails is reported, not fatal
            steps[name] = short_error(e)
    return steps, firsts


def measure_variants(
    steps: dict, rounds: int, repeats: int, flop: float, peaks: list, base: str = "float32", firsts=None
):
    """Times the variants' steps side by side. `steps`: ``{name: zero-argument step function, or an error
    string}``; each traced/compiled already. Rounds alternate the variants (and append a `matmul_gflops`
    to `peaks` after each round), so machine load affects all alike. Returns ``{name: {"s": median
    seconds, "vs_<base>": s / base's s, "fraction_of_peak": ..., **firsts[name]}}`` and the error strings
    as they are; a step that fails while timed becomes its error string."""
    times = {n: [] for n, f in steps.items() if callable(f)}
    out = {n: f for n, f in steps.items() if not callable(f)}
    for r in range(rounds):
        for name in list(times):
            try:
                times[name].append(median_seconds(steps[name], repeats=repeats, warmup=2 if r == 0 else 1))
            except Exception as e:  # noqa: BLE001 - a variant that fails is reported, not fatal
                out[name] = short_error(e)
                del times[name]
        peaks.append(matmul_gflops())
    base_s = statistics.median(times[base]) if base in times else None
    for name, ts in times.items():
        s = statistics.median(ts)
        fields = peak_fields(flop, s, peaks)
        out[name] = {"s": round(s, 5), "fraction_of_peak": fields["fraction_of_peak"], **(firsts or {}).get(name, {})}
        if base_s is not None:
            out[name][f"vs_{base}"] = round(s / base_s, 3)
    return {n: out[n] for n in steps}


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


def add_grappler_flag(parser):
    """``--grappler on|off``: TensorFlow's graph optimizer (Grappler) for every function the run traces."""
    parser.add_argument(
        "--grappler",
        choices=["on", "off"],
        default="on",
        help="off: tf.config.optimizer's disable_meta_optimizer (no graph rewrites before a function's first run: "
        "a shorter first step, steps as TensorFlow's kernels run them unfused)",
    )


def apply_grappler(setting: str):
    """Switches Grappler off for the process when `setting` (``--grappler``) is ``"off"``."""
    if setting == "off":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def make_adam(kind: str, learning_rate: float):
    """`hyperkeras.optimizers.FusedAdam` (kind "fused") or `keras.optimizers.Adam` (kind "keras")."""
    import keras

    from hyperkeras.optimizers import FusedAdam

    return (FusedAdam if kind == "fused" else keras.optimizers.Adam)(learning_rate)
