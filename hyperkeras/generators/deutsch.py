"""Deutsch (2018) hypernetwork: an extractor MLP and per-layer filter generators shared across filters."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hyperkeras.generators.base import Generator, tfd
from hyperkeras.generators.plain import plain_initial_values, plain_scale
from hyperkeras.generators.stacks import build_stack, run_stack

# Table 2 of the paper: hidden widths of W_1..W_4 for the Table 1 MNIST target.
PAPER_GENERATOR_UNITS = ((40, 40), (100, 100), (100, 100), (60, 60))


def _as_int_tuple(v, what):
    try:
        out = tuple(int(u) for u in v)
    except TypeError:
        raise ValueError(f"{what} must be a sequence of positive ints, got {v!r}.") from None
    if any(u <= 0 for u in out):
        raise ValueError(f"{what} must contain positive ints, got {v!r}.")
    return out


@keras.saving.register_keras_serializable(package="hyperkeras")
class DeutschGenerator(Generator):
    """Extractor + per-layer filter generators (Deutsch 2018, §2.4, Fig. 1, Table 2).

    Noise ``z`` ``[K, noise_dim]`` goes through the extractor E (an MLP) which emits one code of size
    ``code_size`` per filter of every target layer but the last, plus one code for the last layer.
    The codes of layer l go, filter by filter, through the weight generator W_l (an MLP **shared
    across all filters of layer l**) which emits one whole filter, kernel slice and bias. The last
    layer's weights are one single "filter" produced by W_m from its one code. Every MLP layer is a
    bias-free Dense, followed, except for output layers, by a leaky ReLU and batch normalisation
    (statistics over all networks and filters of the batch), as in the paper's code.

    Weights outside the Conv/Dense filter layout (``TargetNetwork.plain_specs``: BatchNorm/LayerNorm γ
    and β, embeddings, RNN and attention weights) have no filters to share a generator across. Each such
    tensor gets one more code from E (``plain_code_size`` values) and its own head, a Dense layer from
    that code to all its values: ``tensor = offset + scale · head(code)``, where ``scale`` is the Glorot
    scale of the tensor's shape (`hyperkeras.generators.plain_scale`) and ``offset`` a
    non-trainable weight holding the wrapped model's value of the tensor (`from_target` copies it; it is
    saved with the generator's weights). A fresh generator therefore emits BatchNorm γ ≈ 1, β ≈ 0 and
    embeddings near Keras's own initialisation, with small per-network differences. Targets without
    plain tensors (all the paper's) get exactly the paper's generator.

    Args:
        filter_layout: per target layer, ``(num_filters, filter_size)`` (see
            `hyperkeras.TargetNetwork.layers`); `from_target` fills it in. May be empty when
            `plain_tensors` is not.
        noise_dim: size of z.
        code_size: code size per filter; an int, or one int per layer.
        extractor_units: hidden widths of E.
        generator_units: hidden widths of every W_l (one tuple), or one tuple per layer.
        leaky_relu_alpha: negative slope of the leaky ReLUs.
        batch_norm: use batch normalisation after every hidden layer.
        batchnorm_momentum: moving-average momentum of batch normalisation.
        batchnorm_epsilon: batch normalisation epsilon.
        init_scale: variance-scaling (fan-in, truncated normal) factor of the Dense kernels; the
            paper's code uses 0.01 (std 0.1/√fan_in).
        seed: initialiser seed.
        plain_tensors: one dict per weight outside the filter layout, in ``target.plain_specs`` order:
            ``{"name": param name, "shape": [...], "offset": float, "scale": float}``; ``offset`` is the
            constant the offset weight starts at until `from_target` (or loading saved weights) fills in
            the model's values (the mean of those values, so a generator rebuilt from its config alone
            still emits γ = 1, β = 0). `from_target` fills this in.
        plain_code_size: size of the code of each plain tensor (default: the largest `code_size`).
        noise_bound: b of the noise prior z ~ U[−b, b]^noise_dim (`noise_distribution`).

    Call arguments:
        z: ``[K, noise_dim]`` noise.
        training: batch-normalisation mode (batch statistics and moving-average updates when True).

    Returns:
        A list with one tensor ``[K, num_filters, filter_size]`` per target layer, in layer order,
        ready for `TargetNetwork.from_filters` (map them to the layer names), followed by one tensor
        ``[K, *shape]`` per plain tensor. `to_params` turns the list into a full params dict;
        `generate(target, z)` (the `hyperkeras.generators.Generator` contract) does both.

    Example:

    ```python
    target = hyperkeras.TargetNetwork(hyperkeras.targets.build_model("deutsch_mnist"))
    gen = DeutschGenerator.paper_config(target)       # 633,640 parameters
    outputs = gen(tf.random.uniform([32, 300], -1, 1), training=True)
    params = gen.to_params(target, outputs)           # {name: [32, *shape]}, every weight of the target
    params = gen.generate(target, gen.sample_noise(32, seed=0))  # in one call, z ~ U[-1, 1]^300 (inference mode)
    ```

    Reference:
        Deutsch, "Generating neural networks with neural networks" (2018), arXiv:1801.01952.
    """

    def __init__(
        self,
        filter_layout,
        noise_dim: int = 300,
        code_size=15,
        extractor_units=(300, 300),
        generator_units=(100, 100),
        leaky_relu_alpha: float = 0.05,
        batch_norm: bool = True,
        batchnorm_momentum: float = 0.98,
        batchnorm_epsilon: float = 1e-5,
        init_scale: float = 0.01,
        seed=None,
        plain_tensors=None,
        plain_code_size=None,
        noise_bound: float = 1.0,
        **kwargs,
    ):
        for key in ("num_conditions", "condition_dim"):
            if kwargs.pop(key, None) is not None:
                raise ValueError(
                    f"DeutschGenerator cannot be conditioned ({key} given): its extractor's input is the noise alone. "
                    "Use MLPGenerator, ChunkedGenerator or HyperGANGenerator for conditional generation."
                )
        super().__init__(**kwargs)
        try:
            layout = [(int(n), int(f)) for n, f in filter_layout]
        except (TypeError, ValueError):
            raise ValueError(
                f"filter_layout must be a list of (num_filters, filter_size) pairs, got {filter_layout!r}."
            ) from None
        plain = _plain_tensors(plain_tensors)
        if (not layout and not plain) or any(n <= 0 or f <= 0 for n, f in layout):
            raise ValueError(f"filter_layout must be a non-empty list of positive pairs, got {filter_layout!r}.")
        m = len(layout)
        if isinstance(code_size, (int, np.integer)):
            codes = (int(code_size),) * m
            default_plain_code = int(code_size)
        else:
            codes = _as_int_tuple(code_size, "code_size")
            if len(codes) != m:
                raise ValueError(f"code_size has {len(codes)} entries; the target has {m} layers.")
            default_plain_code = max(codes) if codes else 15
        if (codes and min(codes) <= 0) or default_plain_code <= 0:
            raise ValueError(f"code_size must be positive, got {code_size!r}.")
        plain_code = default_plain_code if plain_code_size is None else int(plain_code_size)
        if plain_code <= 0:
            raise ValueError(f"plain_code_size must be a positive int, got {plain_code_size!r}.")
        if int(noise_dim) <= 0:
            raise ValueError(f"noise_dim must be a positive int, got {noise_dim!r}.")
        if not float(noise_bound) > 0:
            raise ValueError(f"noise_bound must be > 0, got {noise_bound!r}.")
        ext_units = _as_int_tuple(extractor_units, "extractor_units") if extractor_units else ()
        gu = list(generator_units) if generator_units is not None else []
        if gu and all(isinstance(u, (list, tuple)) for u in gu):
            if len(gu) != m:
                raise ValueError(f"generator_units has {len(gu)} entries; the target has {m} layers.")
            gen_units = tuple(_as_int_tuple(u, "generator_units") for u in gu)
        else:
            gen_units = (_as_int_tuple(gu, "generator_units"),) * m
        self.filter_layout = layout
        self.noise_dim = int(noise_dim)
        self.noise_bound = float(noise_bound)
        self.code_size = codes
        self.extractor_units = ext_units
        self.generator_units = gen_units
        self.leaky_relu_alpha = float(leaky_relu_alpha)
        self.batch_norm = bool(batch_norm)
        self.batchnorm_momentum = float(batchnorm_momentum)
        self.batchnorm_epsilon = float(batchnorm_epsilon)
        self.init_scale = float(init_scale)
        self.seed = seed
        self.plain_tensors = plain
        self.plain_code_size = plain_code
        self._seed_count = 0

        # Output size of each generator: a filter, or for the last layer all its weights at once.
        self._out_sizes = ([f for _, f in layout[:-1]] + [layout[-1][0] * layout[-1][1]]) if layout else []
        self._code_counts = ([n for n, _ in layout[:-1]] + [1]) if layout else []
        self._code_total = sum(c * k for c, k in zip(self._code_counts, codes)) + len(plain) * plain_code
        self.extractor = self._mlp(ext_units, self._code_total, "extractor")
        self.weight_generators = [
            self._mlp(units, out, f"weight_generator{i + 1}")
            for i, (units, out) in enumerate(zip(gen_units, self._out_sizes))
        ]
        # One head per plain tensor (created after the paper's layers, so their initial seeds are unchanged).
        self.plain_heads = [
            keras.layers.Dense(
                int(np.prod(t["shape"])), kernel_initializer=self._initializer(1.0), name=f"plain_head{i + 1}"
            )
            for i, t in enumerate(plain)
        ]
        self._plain_offsets = []
        self._pending_offsets = None  # exact offsets from `from_target`, assigned in `build`

    # ------------------------------------------------------------------ building blocks
    def _initializer(self, scale=None):
        seed = None if self.seed is None else int(self.seed) + self._seed_count
        self._seed_count += 1
        return keras.initializers.VarianceScaling(
            scale=self.init_scale if scale is None else scale, mode="fan_in", distribution="truncated_normal", seed=seed
        )

    def _mlp(self, hidden, out, name):
        layers = []
        for j, units in enumerate(hidden):
            layers.append(
                keras.layers.Dense(
                    units, use_bias=False, kernel_initializer=self._initializer(), name=f"{name}_dense{j + 1}"
                )
            )
            layers.append(keras.layers.LeakyReLU(negative_slope=self.leaky_relu_alpha, name=f"{name}_lrelu{j + 1}"))
            if self.batch_norm:
                layers.append(
                    keras.layers.BatchNormalization(
                        momentum=self.batchnorm_momentum, epsilon=self.batchnorm_epsilon, name=f"{name}_bn{j + 1}"
                    )
                )
        layers.append(
            keras.layers.Dense(out, use_bias=False, kernel_initializer=self._initializer(), name=f"{name}_out")
        )
        return layers

    def build(self, input_shape=None):
        if input_shape is not None and input_shape[-1] is not None and int(input_shape[-1]) != self.noise_dim:
            raise ValueError(f"DeutschGenerator expects noise of shape [K, {self.noise_dim}], got {input_shape}.")
        if self.built:
            return
        build_stack(self.extractor, (None, self.noise_dim))
        for layers, c in zip(self.weight_generators, self.code_size):
            build_stack(layers, (None, c))
        for i, (head, t) in enumerate(zip(self.plain_heads, self.plain_tensors)):
            head.build((None, self.plain_code_size))
            self._plain_offsets.append(
                self.add_weight(
                    shape=tuple(t["shape"]),
                    initializer=keras.initializers.Constant(t["offset"]),
                    trainable=False,
                    name=f"plain_offset{i + 1}",
                )
            )
        self.built = True
        if self._pending_offsets is not None:
            self.set_plain_offsets(self._pending_offsets)
            self._pending_offsets = None

    def set_plain_offsets(self, values):
        """Sets the offset weights of the plain tensors from ``{param name: array}`` (e.g.
        `plain_initial_values(target)`); builds the generator first if needed."""
        if not self.built:
            self.build((None, self.noise_dim))
        by_name = {t["name"]: (t, v) for t, v in zip(self.plain_tensors, self._plain_offsets)}
        for name, value in values.items():
            if name not in by_name:
                raise ValueError(f"{name!r} is not a plain tensor of this generator ({list(by_name)}).")
            t, var = by_name[name]
            value = np.asarray(value, dtype="float32")
            if tuple(value.shape) != tuple(t["shape"]):
                raise ValueError(f"offset for {name!r} has shape {value.shape}; expected {tuple(t['shape'])}.")
            var.assign(value)

    def call(self, z, training=None):
        if z.shape.rank != 2 or (z.shape[-1] is not None and z.shape[-1] != self.noise_dim):
            raise ValueError(f"z must have shape [K, {self.noise_dim}], got {z.shape}.")
        k = tf.shape(z)[0]
        codes = run_stack(self.extractor, z, training)
        sizes = [c * n for c, n in zip(self._code_counts, self.code_size)] + [self.plain_code_size] * len(
            self.plain_tensors
        )
        parts = tf.split(codes, sizes, axis=1)
        outs = []
        for i, (part, layers) in enumerate(zip(parts, self.weight_generators)):
            n, f = self.filter_layout[i]
            per = tf.reshape(part, [-1, self.code_size[i]])  # [K * filters, code]
            w = run_stack(layers, per, training)
            outs.append(tf.reshape(w, [k, n, f]))
        plain_parts = parts[len(self.weight_generators) :]
        for part, head, t, offset in zip(plain_parts, self.plain_heads, self.plain_tensors, self._plain_offsets):
            w = head(part) * t["scale"]
            outs.append(tf.reshape(w, [k, *t["shape"]]) + tf.cast(offset, w.dtype)[None])
        return outs

    def compute_output_shape(self, input_shape):
        return [(input_shape[0], n, f) for n, f in self.filter_layout] + [
            (input_shape[0], *t["shape"]) for t in self.plain_tensors
        ]

    @property
    def noise_distribution(self):
        """z ~ U[−b, b]^noise_dim (b = `noise_bound`), a TFP distribution with event shape ``[noise_dim]``."""
        d = tfd()
        return d.Sample(d.Uniform(-self.noise_bound, self.noise_bound), sample_shape=self.noise_dim)

    def _plain_noise(self, n, seed):
        """`noise_distribution`'s draw by `tf.random` alone (see `Generator._plain_noise`); None where a
        subclass defines its own distribution."""
        if type(self).noise_distribution is not DeutschGenerator.noise_distribution:
            return None
        return tf.random.stateless_uniform(
            self._noise_shape(n), seed, minval=-self.noise_bound, maxval=self.noise_bound
        )

    def generate(self, target, noise, training=False) -> dict:
        """Params ``{name: [K, *shape]}`` of `target` for noise ``[K, noise_dim]`` (`call`, then `to_params`)."""
        return self.to_params(target, self(noise, training=training))

    def check_target(self, target):
        check_layout(self, target)

    def to_params(self, target, outputs) -> dict:
        """The generator's outputs (`call`) as a full params dict ``{name: [K, *shape]}`` for `target`."""
        m = len(self.filter_layout)
        if len(outputs) != m + len(self.plain_tensors):
            raise ValueError(f"expected {m + len(self.plain_tensors)} generator outputs, got {len(outputs)}.")
        check_layout(self, target)
        params = target.from_filters({l.name: f for l, f in zip(target.layers, outputs[:m])})
        params.update({t["name"]: v for t, v in zip(self.plain_tensors, outputs[m:])})
        return params

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_target(cls, target, **kwargs):
        """A generator for `target` (a `hyperkeras.TargetNetwork` or a keras.Model), sized from its filter layout."""
        from hyperkeras.targets import TargetNetwork

        if isinstance(target, keras.Model):
            target = TargetNetwork(target)
        if not isinstance(target, TargetNetwork):
            raise TypeError(f"target must be a TargetNetwork or keras.Model, got {type(target).__name__}.")
        initial = plain_initial_values(target)
        plain = [
            {
                "name": s.name,
                "shape": list(s.shape),
                "offset": float(np.mean(initial[s.name])),
                "scale": plain_scale(s.shape, s.role),
            }
            for s in target.plain_specs
        ]
        gen = cls([(l.num_filters, l.filter_size) for l in target.layers], plain_tensors=plain or None, **kwargs)
        if plain:
            gen._pending_offsets = initial  # the model's own values, set when the generator is built
        return gen

    @classmethod
    def paper_config(cls, target=None, **overrides):
        """The paper's configuration (Table 2): z ~ U[−1,1]^300, E 300→300→300, codes of 15, W_l
        hidden widths 40/100/100/60. `target` defaults to the Table 1 MNIST network (``deutsch_mnist``);
        any 4-layer target can be given (output sizes follow its filter layout)."""
        from hyperkeras.targets import TargetNetwork, build_model

        if target is None:
            target = TargetNetwork(build_model("deutsch_mnist"))
        elif isinstance(target, keras.Model):
            target = TargetNetwork(target)
        if len(target.layers) != len(PAPER_GENERATOR_UNITS):
            raise ValueError(
                f"paper_config is for 4-layer targets (Table 1); this target has {len(target.layers)} "
                "layers. Use DeutschGenerator.from_target(target, generator_units=...) instead."
            )
        kwargs = dict(
            noise_dim=300,
            code_size=15,
            extractor_units=(300, 300),
            generator_units=PAPER_GENERATOR_UNITS,
            leaky_relu_alpha=0.05,
            batch_norm=True,
            batchnorm_momentum=0.98,
            init_scale=0.01,
        )
        kwargs.update(overrides)
        return cls.from_target(target, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            filter_layout=[list(p) for p in self.filter_layout],
            noise_dim=self.noise_dim,
            noise_bound=self.noise_bound,
            code_size=list(self.code_size),
            extractor_units=list(self.extractor_units),
            generator_units=[list(u) for u in self.generator_units],
            leaky_relu_alpha=self.leaky_relu_alpha,
            batch_norm=self.batch_norm,
            batchnorm_momentum=self.batchnorm_momentum,
            batchnorm_epsilon=self.batchnorm_epsilon,
            init_scale=self.init_scale,
            seed=self.seed,
            plain_tensors=[dict(t, shape=list(t["shape"])) for t in self.plain_tensors] or None,
            plain_code_size=self.plain_code_size if self.plain_tensors else None,
        )
        return config


def _plain_tensors(plain_tensors):
    """Validates `plain_tensors` (list of dicts name/shape/offset/scale) into plain Python values."""
    out = []
    for t in plain_tensors or ():
        try:
            item = {
                "name": str(t["name"]),
                "shape": [int(d) for d in t["shape"]],
                "offset": float(t.get("offset", 0.0)),
                "scale": float(t.get("scale", 1.0)),
            }
        except (TypeError, KeyError, ValueError, AttributeError):
            raise ValueError(
                f"plain_tensors must be a list of dicts with 'name', 'shape' and optional 'offset', 'scale'; got {t!r}."
            ) from None
        if any(d <= 0 for d in item["shape"]) or not np.isfinite(item["offset"]) or not item["scale"] > 0:
            raise ValueError(
                f"plain tensor {item['name']!r}: shape must be positive, offset finite, scale > 0; got {item}."
            )
        out.append(item)
    return out


def check_layout(generator, target):
    """Raises ValueError unless `generator` (filter layout + plain tensors) produces `target`'s weights."""
    layout = [(l.num_filters, l.filter_size) for l in target.layers]
    if getattr(generator, "filter_layout", layout) != layout:
        raise ValueError(f"generator.filter_layout {generator.filter_layout} does not match the target's {layout}.")
    want = [(s.name, list(s.shape)) for s in target.plain_specs]
    have = [(t["name"], list(t["shape"])) for t in getattr(generator, "plain_tensors", [])]
    if have != want:
        raise ValueError(
            f"generator.plain_tensors {have} does not match the target's weights outside the filter layout "
            f"(target.plain_specs) {want}; build the generator with from_target(target)."
        )
