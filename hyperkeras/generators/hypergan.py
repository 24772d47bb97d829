"""HyperGAN building blocks (Ratzlaff & Fuxin, §3, Fig. 1): mixer Q, per-layer generators G_i, and
`HyperGANGenerator` (Q + the G_i as one `Generator`). The latent discriminator D belongs to the objective
that trains it (`hyperkeras.objectives.latent_gan`).

    s ~ N(0, I_j) ──► Mixer Q ──► [q_1 | ... | q_N] (N·d) ──► G_i(q_i) ──► all weights of target layer i
                                        │
                          LatentDiscriminator D(q_i) vs D(p), p ~ N(0, I_d)  (objectives.latent_gan)

These small Keras layers live in this one module because they only make sense together; each follows
the keras-hub conventions (weights built in `build`, `get_config` keys = `__init__` arguments,
registered for `.keras` serialisation).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from hyperkeras.generators.base import Generator
from hyperkeras.generators.hyperfan import calibrated_output, check_init, hyperfan_scales, zero_start_names
from hyperkeras.generators.plain import plain_initial_values, plain_scale
from hyperkeras.generators.stacks import build_stack, check_units, dense_layers, run_stack

# Output layers wider than this compute their kernel gradient h^T·dy in column blocks of this width:
# for a few dozen codes (a thin h) one [512, 25632] product ran at 22 GFLOP/s on a 2-core CPU, blocks
# of 4096 columns at about 75 (see benchmarks/hypergan_step.py).
_GRADIENT_BLOCK = 4096


@tf.custom_gradient
def _wide_matmul(h, kernel):
    """``h @ kernel`` for a very wide kernel, with the kernel's gradient computed block by block."""

    def grad(dy):
        width = int(kernel.shape[-1])
        blocks = [_GRADIENT_BLOCK] * (width // _GRADIENT_BLOCK)
        if width % _GRADIENT_BLOCK:
            blocks.append(width % _GRADIENT_BLOCK)
        d_kernel = tf.concat([tf.matmul(h, d, transpose_a=True) for d in tf.split(dy, blocks, axis=1)], axis=1)
        return tf.matmul(dy, kernel, transpose_b=True), d_kernel

    return tf.matmul(h, kernel), grad


@keras.saving.register_keras_serializable(package="hyperkeras")
class Mixer(keras.layers.Layer):
    """HyperGAN mixer Q: maps noise s ∈ R^j to the N·d-dimensional mixed latent code.

    An MLP (``hidden_units`` ReLU layers, then a linear layer of ``num_codes * code_dim`` units). The
    output is returned as ``[batch, num_codes, code_dim]``: row i is the code q_i of target layer i.

    Args:
        num_codes: N, the number of target layers (one code each).
        code_dim: d, the size of one layer code.
        hidden_units: widths of the hidden layers (paper: 512 units).
        activation: activation of the hidden layers.

    Call arguments:
        inputs: noise ``[batch, noise_dim]``.

    Example:

    ```python
    mixer = Mixer(num_codes=3, code_dim=128)
    codes = mixer(keras.random.normal([32, 256]))   # [32, 3, 128]
    ```

    Reference:
        Ratzlaff & Fuxin, "HyperGAN: Generating Diverse, Performant Neural Networks with a GAN", §3.
    """

    def __init__(self, num_codes, code_dim, hidden_units=(512, 512), activation="relu", **kwargs):
        super().__init__(**kwargs)
        if int(num_codes) <= 0 or int(code_dim) <= 0:
            raise ValueError(f"num_codes and code_dim must be positive, got {num_codes} and {code_dim}.")
        self.num_codes = int(num_codes)
        self.code_dim = int(code_dim)
        self.hidden_units = check_units("hidden_units", hidden_units)
        self._activation_config = activation
        self.hidden = dense_layers(self, "hidden", self.hidden_units, activation)
        self.out = keras.layers.Dense(self.num_codes * self.code_dim, name="codes", dtype=self.dtype_policy)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"Mixer expects noise of shape [batch, noise_dim], got {tuple(input_shape)}.")
        shape = tuple(input_shape)
        build_stack([*self.hidden, self.out], shape)
        self.built = True

    def call(self, inputs):
        h = run_stack(self.hidden, inputs)
        return ops.reshape(self.out(h), [-1, self.num_codes, self.code_dim])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_codes, self.code_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_codes=self.num_codes,
            code_dim=self.code_dim,
            hidden_units=list(self.hidden_units),
            activation=self._activation_config,
        )
        return config


@keras.saving.register_keras_serializable(package="hyperkeras")
class LayerGenerator(keras.layers.Layer):
    """HyperGAN generator G_i: maps one layer code q_i to all weights of one target layer.

    An MLP (``hidden_units`` layers with ``activation``) whose linear output layer emits every weight of
    the layer at once; the output is split and reshaped into the layer's tensors. Each weight tensor is
    multiplied by a fixed He scale ``sqrt(2 / fan_in)`` (``fan_in`` = weights feeding one output unit),
    with the output layer initialised so that its outputs have unit variance: freshly built generators
    therefore emit networks at the usual initialisation scale, whatever the size of the layer.

    Tensors without a Conv/Dense fan-in (BatchNorm γ/β, embeddings, RNN or attention weights) take their
    own scale from `scales` (see `plain_scale`) and may be offset by a fixed value from `offsets`:
    ``tensor = offset + scale · output``. Each offset is a non-trainable weight of the layer (saved with
    its weights), starting at the constant given in `offsets`; `set_offsets` replaces it by a whole
    array (e.g. the target model's initial value, `plain_initial_values`).

    Args:
        output_shapes: dict ``{param name: shape}`` of the layer's weights (e.g. from
            ``TargetNetwork.param_specs``), kernel first. Shapes exclude the sample axis.
        fan_in: inputs per output unit of the target layer (e.g. ``5 * 5 * 32`` for a 5×5 conv over
            32 channels); sets the output scale. None disables the scaling.
        hidden_units: widths of the hidden layers (paper: 512).
        activation: hidden activation (paper: ReLU).
        scales: optional dict ``{param name: scale}`` replacing the He scale for those tensors.
        offsets: optional dict ``{param name: float}``: those tensors get an offset weight, filled with
            this constant until `set_offsets` (or loading saved weights) sets it.

    Call arguments:
        inputs: codes ``[batch, code_dim]``.

    Returns:
        dict ``{param name: [batch, *shape]}``.

    Example:

    ```python
    gen = LayerGenerator({"conv1/kernel": (5, 5, 1, 32), "conv1/bias": (32,)}, fan_in=25)
    weights = gen(keras.random.normal([8, 128]))   # {"conv1/kernel": [8, 5, 5, 1, 32], "conv1/bias": [8, 32]}
    ```

    Reference:
        Ratzlaff & Fuxin, "HyperGAN", §3 and Appendix A.4 (Tables 5–6).
    """

    def __init__(
        self,
        output_shapes,
        fan_in=None,
        hidden_units=(512, 512),
        activation="relu",
        scales=None,
        offsets=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(output_shapes, dict) or not output_shapes:
            raise ValueError(f"output_shapes must be a non-empty dict name -> shape, got {output_shapes!r}.")
        self.output_shapes = {str(k): tuple(int(d) for d in v) for k, v in output_shapes.items()}
        if any(d <= 0 for s in self.output_shapes.values() for d in s):
            raise ValueError(f"output_shapes must hold positive dimensions, got {self.output_shapes}.")
        if fan_in is not None and int(fan_in) <= 0:
            raise ValueError(f"fan_in must be a positive int or None, got {fan_in}.")
        self.fan_in = None if fan_in is None else int(fan_in)
        for what, d in (("scales", scales), ("offsets", offsets)):
            if d is not None and (not isinstance(d, dict) or set(d) - set(self.output_shapes)):
                raise ValueError(
                    f"{what} must be a dict over names of output_shapes {list(self.output_shapes)}, got {d!r}."
                )
        self.scales = None if scales is None else {str(k): float(v) for k, v in scales.items()}
        if self.scales and not all(np.isfinite(v) and v > 0 for v in self.scales.values()):
            raise ValueError(f"scales must be positive numbers, got {self.scales}.")
        self.offsets = None if offsets is None else {str(k): float(v) for k, v in offsets.items()}
        self.hidden_units = check_units("hidden_units", hidden_units)
        self._activation_config = activation
        self._sizes = [int(np.prod(s)) for s in self.output_shapes.values()]
        self.hidden = dense_layers(self, "hidden", self.hidden_units, activation)
        self.out = keras.layers.Dense(
            sum(self._sizes),
            kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
            name="weights",
            dtype=self.dtype_policy,
        )
        self._scale = 1.0 if self.fan_in is None else float(np.sqrt(2.0 / self.fan_in))
        scales = self.scales or {}
        self._scales = [scales.get(name, self._scale) for name in self.output_shapes]
        self._offset_vars = {}

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"LayerGenerator expects codes of shape [batch, code_dim], got {tuple(input_shape)}.")
        shape = tuple(input_shape)
        build_stack([*self.hidden, self.out], shape)
        for i, (name, value) in enumerate((self.offsets or {}).items()):
            self._offset_vars[name] = self.add_weight(
                shape=self.output_shapes[name],
                initializer=keras.initializers.Constant(value),
                trainable=False,
                name=f"offset{i + 1}",
            )
        self.built = True

    def set_offsets(self, values):
        """Sets the offset weights from ``{param name: array}`` (names among `offsets`)."""
        if not self.built:
            raise ValueError("set_offsets needs a built LayerGenerator (call build((None, code_dim)) first).")
        for name, value in values.items():
            if name not in self._offset_vars:
                raise ValueError(f"{name!r} has no offset in this LayerGenerator (offsets: {list(self._offset_vars)}).")
            value = np.asarray(value)
            if tuple(value.shape) != self.output_shapes[name]:
                raise ValueError(f"offset for {name!r} has shape {value.shape}; expected {self.output_shapes[name]}.")
            self._offset_vars[name].assign(value)

    def call(self, inputs):
        h = run_stack(self.hidden, inputs)
        if self.out.kernel.shape[-1] > _GRADIENT_BLOCK:  # the Dense layer's maths, with a faster gradient
            flat = _wide_matmul(h, ops.cast(self.out.kernel, h.dtype)) + ops.cast(self.out.bias, h.dtype)
        else:
            flat = self.out(h)
        parts = ops.split(flat, np.cumsum(self._sizes)[:-1].tolist(), axis=-1) if len(self._sizes) > 1 else [flat]
        out = {}
        for (name, shape), p, scale in zip(self.output_shapes.items(), parts, self._scales):
            value = ops.reshape(p * scale, (-1, *shape))
            if name in self._offset_vars:
                value = value + ops.cast(self._offset_vars[name], value.dtype)[None]
            out[name] = value
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            output_shapes={k: list(v) for k, v in self.output_shapes.items()},
            fan_in=self.fan_in,
            hidden_units=list(self.hidden_units),
            activation=self._activation_config,
            scales=None if self.scales is None else dict(self.scales),
            offsets=None if self.offsets is None else dict(self.offsets),
        )
        return config


def _as_units(name, value):
    try:
        return check_units(name, value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}.") from None


@keras.saving.register_keras_serializable(package="hyperkeras")
class HyperGANGenerator(Generator):
    """HyperGAN's generator (Ratzlaff & Fuxin, §3, Fig. 1): mixer Q + one layer generator G_i per target
    layer, as one `hyperkeras.generators.Generator`.

    Noise s ~ N(0, I_j) (`noise_distribution`) goes through the mixer Q to N codes q_1..q_N of size d, one
    per Keras layer of the target that owns trainable weights; G_i turns q_i into all weights of layer i
    (see `LayerGenerator` for their scales and offsets). `generate` returns the params and the codes
    (``aux["codes"]``, ``[K, N, d]``) for the latent discriminator of `hyperkeras.objectives.LatentGAN`.

    Args:
        layers: one dict per layer generator, in the order of the target's first weight of each layer:
            ``{"name": layer name, "output_shapes": {param: shape}, "fan_in": int or None,
            "scales": {param: float} or None, "offsets": {param: float} or None}``; `from_target`
            fills this in.
        noise_dim: j, the size of s (paper: 256).
        code_dim: d, the size of each layer code (paper: 128 for MNIST).
        mixer_units: hidden widths of Q (paper: 512).
        generator_units: hidden widths of each G_i (paper: 512).
        activation: hidden activation of Q and G_i (paper: ReLU).
        num_conditions, condition_dim: conditioning (see `Generator.condition_vectors`): the mixer's input is
            ``[s, c]``, the noise beside the condition vector c (a learned task embedding for task ids with
            ``num_conditions``, or a given float vector of size ``condition_dim``). Default: unconditioned.

    Call arguments (`generate`):
        target: the `hyperkeras.TargetNetwork`.
        noise: ``[K, noise_dim]``.
        training: unused by these layers (kept for the contract).
        condition: a task id or ids ``[K]``, or vectors ``[condition_dim]`` / ``[K, condition_dim]``
            (conditional generators only).

    Example:

    ```python
    gen = HyperGANGenerator.from_target(target, noise_dim=256, code_dim=128)
    params, aux = gen.generate(target, gen.sample_noise(32, seed=0))   # aux["codes"]: [32, N, 128]
    ```

    Reference:
        Ratzlaff & Fuxin, "HyperGAN: Generating Diverse, Performant Neural Networks with a GAN" (2019), §3.
    """

    def __init__(
        self,
        layers,
        noise_dim=256,
        code_dim=128,
        mixer_units=(512,),
        generator_units=(512,),
        activation="relu",
        num_conditions=None,
        condition_dim=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("noise_dim", noise_dim), ("code_dim", code_dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"layers must be a non-empty list of layer-generator dicts, got {layers!r}.")
        self.layer_specs = []
        for spec in layers:
            try:
                self.layer_specs.append(
                    {
                        "name": str(spec["name"]),
                        "output_shapes": {str(k): [int(d) for d in v] for k, v in spec["output_shapes"].items()},
                        "fan_in": None if spec.get("fan_in") is None else int(spec["fan_in"]),
                        "scales": None
                        if spec.get("scales") is None
                        else {str(k): float(v) for k, v in spec["scales"].items()},
                        "offsets": None
                        if spec.get("offsets") is None
                        else {str(k): float(v) for k, v in spec["offsets"].items()},
                    }
                )
            except (TypeError, KeyError, ValueError, AttributeError):
                raise ValueError(
                    "layers must hold dicts with 'name', 'output_shapes' and optional 'fan_in', 'scales', "
                    f"'offsets'; got {spec!r}."
                ) from None
        self.noise_dim = int(noise_dim)
        self.code_dim = int(code_dim)
        self.mixer_units = _as_units("mixer_units", mixer_units)
        self.generator_units = _as_units("generator_units", generator_units)
        self.activation = activation
        self._setup_condition(num_conditions, condition_dim)
        self.mixer = Mixer(len(self.layer_specs), self.code_dim, self.mixer_units, activation, name="mixer")
        self.layer_generators = [
            LayerGenerator(
                s["output_shapes"],
                s["fan_in"],
                self.generator_units,
                activation,
                scales=s["scales"],
                offsets=s["offsets"],
                name=f"generator_{s['name']}",
            )
            for s in self.layer_specs
        ]

    @classmethod
    def from_target(
        cls,
        target,
        noise_dim=256,
        code_dim=128,
        mixer_units=(512,),
        generator_units=(512,),
        activation="relu",
        init="default",
        **kwargs,
    ):
        """A built generator for `target` (a `hyperkeras.TargetNetwork`): one layer generator per Keras
        layer owning trainable weights, Conv/Dense kernels and biases He-scaled, every other tensor offset
        by the wrapped model's current value (`plain_initial_values`) and spread at `plain_scale`.

        `init`: ``"default"`` (the scales above, output layers initialised for unit-variance inputs — in
        practice the generated kernels then start well below the He variance, since the mixer and hidden
        layers do not keep unit variance); ``"hyperfan_in"`` / ``"hyperfan_out"``: the per-tensor scales of
        `hyperkeras.generators.hyperfan` and each layer generator's output layer calibrated on the codes of
        4096 typical inputs, so that the generated kernels start at the target initializer's variance in
        fan-in / fan-out form and zero-initialised biases at zero (Chang, Flokas & Lipson, 2020)."""
        check_init(init)
        groups = {}
        for spec in target.param_specs:
            groups.setdefault(spec.layer, []).append(spec)
        fan_ins = {l.name: l.filter_size - (l.bias is not None) for l in target.layers}
        plain = {s.name for s in target.plain_specs}
        initial = plain_initial_values(target)
        hyperfan = hyperfan_scales(target, init) if init != "default" else None
        layers = []
        for layer, specs in groups.items():
            own = [s for s in specs if s.name in plain]
            layers.append(
                {
                    "name": layer,
                    "output_shapes": {s.name: list(s.shape) for s in specs},
                    "fan_in": fan_ins.get(layer),
                    "scales": {s.name: hyperfan[s.name] for s in specs}
                    if hyperfan
                    else ({s.name: plain_scale(s.shape, s.role) for s in own} or None),
                    "offsets": {s.name: float(np.mean(initial[s.name])) for s in own} or None,
                }
            )
        gen = cls(
            layers,
            noise_dim=noise_dim,
            code_dim=code_dim,
            mixer_units=mixer_units,
            generator_units=generator_units,
            activation=activation,
            **kwargs,
        )
        gen.build((None, gen.noise_dim))
        for g in gen.layer_generators:
            if g.offsets:
                g.set_offsets({name: initial[name] for name in g.offsets})
        if hyperfan:
            gen._calibrate_outputs(zero_start_names(target))
        return gen

    def _calibrate_outputs(self, zero_start=()):
        """Calibrates each layer generator's output layer on the codes of 4096 typical inputs
        (`calibrated_output`: every output of mean 0 and unit variance), with the columns of the tensors in
        `zero_start` at zero."""
        m = 4096
        with tf.init_scope():
            noise = tf.random.stateless_normal([m, self.noise_dim], seed=[7, 11])
            condition = None
            if self.num_conditions is not None:
                condition = tf.range(m) % self.num_conditions
            elif self.conditional:
                condition = tf.random.stateless_normal([m, self.condition_dim], seed=[7, 12])
            codes = self.codes(noise, condition=condition)
            for i, g in enumerate(self.layer_generators):
                h = tf.cast(run_stack(g.hidden, codes[:, i, :]), tf.float32).numpy()
                starts = np.concatenate([[0], np.cumsum(g._sizes)])
                zero = [
                    np.arange(starts[j], starts[j + 1]) for j, name in enumerate(g.output_shapes) if name in zero_start
                ]
                kernel, bias = calibrated_output(h, int(g.out.kernel.shape[-1]), np.concatenate(zero) if zero else None)
                g.out.kernel.assign(kernel)
                g.out.bias.assign(bias)

    def build(self, input_shape=None):
        if input_shape is not None and input_shape[-1] is not None and int(input_shape[-1]) != self.noise_dim:
            raise ValueError(f"HyperGANGenerator expects noise of shape [K, {self.noise_dim}], got {input_shape}.")
        if self.built:
            return
        self._build_condition()
        self.mixer.build((None, self.noise_dim + int(self.condition_dim or 0)))
        for g in self.layer_generators:
            g.build((None, self.code_dim))
        self.built = True

    @property
    def aux_shapes(self):
        return {"codes": (len(self.layer_generators), self.code_dim)}

    def codes(self, noise, training=False, condition=None):
        """Mixer output Q(s) (Q([s, c]) with a condition): ``[K, num_layers, code_dim]`` (one code per layer
        generator)."""
        noise = tf.cast(noise, self.compute_dtype)  # float32 noise under a mixed policy is fine
        if noise.shape.rank != 2 or (noise.shape[-1] is not None and noise.shape[-1] != self.noise_dim):
            raise ValueError(f"noise must have shape [K, {self.noise_dim}] (noise_dim), got {noise.shape}.")
        cond = self.condition_vectors(condition, tf.shape(noise)[0])
        if cond is not None:
            noise = tf.concat([noise, tf.cast(cond, noise.dtype)], axis=1)
        return self.mixer(noise, training=training)

    def params_from_codes(self, codes, training=False):
        """Params ``{name: [K, *shape]}`` from codes ``[K, num_layers, code_dim]``."""
        params = {}
        for i, g in enumerate(self.layer_generators):
            params.update(g(codes[:, i, :], training=training))
        return params

    def generate(self, target, noise, training=False, condition=None):
        codes = self.codes(noise, training=training, condition=condition)
        return self.params_from_codes(codes, training=training), {"codes": codes}

    def check_target(self, target):
        want = [(s.name, list(s.shape)) for s in target.param_specs]
        have = [(n, list(shape)) for s in self.layer_specs for n, shape in s["output_shapes"].items()]
        if sorted(have) != sorted(want):
            raise ValueError(
                f"HyperGANGenerator outputs {have} do not match the target's weights {want}; build it with "
                "HyperGANGenerator.from_target(target)."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            layers=[dict(s) for s in self.layer_specs],
            noise_dim=self.noise_dim,
            code_dim=self.code_dim,
            mixer_units=list(self.mixer_units),
            generator_units=list(self.generator_units),
            activation=self.activation,
            **self._condition_config(),
        )
        return config
