"""Generators of the target's flat parameter vector: `FlatGenerator` (the shared part: conditioning, noise,
``θ = offset + scale ⊙ u``, initialisation) and `MLPGenerator` (one MLP from [condition, noise] to all of
θ: hypnettorch's HMLP, von Oswald et al.'s hypernetwork). `ChunkedGenerator` (chunked.py) is the other one.

    condition c (task id -> TaskEmbedding, or a float vector) ─┐
    noise z ~ N(0, I) (optional: noise_dim=0) ─────────────────┴─► [c, z] ─► MLP ─► u [P] ─► θ = offset + scale ⊙ u
                                                                                         └─► target.unflatten(θ)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from hyperkeras.generators.base import Generator
from hyperkeras.generators.hyperfan import (
    calibrated_output,
    check_init,
    flat_offsets,
    hyperfan_scales,
    zero_start_names,
)
from hyperkeras.generators.stacks import build_stack, check_units, dense_layers, run_stack

__all__ = ["FlatGenerator", "MLPGenerator"]


def _non_negative_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    return int(value)


class FlatGenerator(Generator):
    """Base of generators that emit the target's flat parameter vector ``θ [K, num_params]``.

    ``θ = offset + scale ⊙ u`` with u the subclass's output (`_outputs`), ``scale`` one fixed number per
    target tensor (`hyperkeras.generators.hyperfan`: hyperfan-in / hyperfan-out / default) and ``offset`` a
    non-trainable weight ``[num_params]``: the wrapped model's weights θ₀ on every tensor with
    ``residual=True``, on the tensors outside the Conv/Dense layout only otherwise. The input of the network
    is ``[condition vector, noise]`` (`Generator.condition_vectors`); with ``noise_dim=0`` and a condition
    it is a deterministic conditional hypernetwork (one network per task), with both an ensemble per task.

    Args (shared by the subclasses):
        param_shapes: ``{param name: shape}`` of the target's weights, in ``target.param_specs`` order
            (``from_target`` fills it in).
        noise_dim: size of the noise (0: no noise).
        scales: ``{param name: float}`` (default 1), see `hyperfan_scales`.
        init: ``"hyperfan_in"``, ``"hyperfan_out"`` or ``"default"`` (see `hyperkeras.generators.hyperfan`).
        residual: θ = θ₀ + Δ with the output layer started at zero (Δ = 0); θ₀ is the non-trainable
            ``offset`` weight (set by ``from_target`` or `set_offset`).
        num_conditions, condition_dim: conditioning (`Generator._setup_condition`).
    """

    def __init__(
        self,
        param_shapes,
        noise_dim=8,
        scales=None,
        init="hyperfan_in",
        residual=False,
        num_conditions=None,
        condition_dim=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(param_shapes, dict) or not param_shapes:
            raise ValueError(f"param_shapes must be a non-empty dict name -> shape, got {param_shapes!r}.")
        self.param_shapes = {str(k): tuple(int(d) for d in v) for k, v in param_shapes.items()}
        self.noise_dim = _non_negative_int("noise_dim", noise_dim)
        if scales is not None and (not isinstance(scales, dict) or set(scales) - set(self.param_shapes)):
            raise ValueError(f"scales must be a dict over names of param_shapes, got {scales!r}.")
        self.scales = None if scales is None else {str(k): float(v) for k, v in scales.items()}
        self.init = check_init(init)
        self.residual = bool(residual)
        self._setup_condition(num_conditions, condition_dim)
        if self.noise_dim == 0 and not self.conditional:
            raise ValueError(
                f"{type(self).__name__} needs noise (noise_dim > 0) or a condition (num_conditions / condition_dim)."
            )
        self._sizes = [int(np.prod(s)) for s in self.param_shapes.values()]
        self.num_params = int(sum(self._sizes))
        scales = self.scales or {}
        self._centre = None  # [num_params] to subtract from the offset at `from_target` (ChunkedGenerator)
        self._scale_vector = np.repeat(
            np.array([scales.get(n, 1.0) for n in self.param_shapes], "float32"), self._sizes
        )

    @property
    def input_dim(self) -> int:
        """Size of ``[condition vector, noise]``."""
        return int(self.condition_dim or 0) + self.noise_dim

    def _build_flat(self):
        """Creates the offset and the condition embedding (subclasses call it from `build`)."""
        self.offset = self.add_weight(shape=(self.num_params,), initializer="zeros", trainable=False, name="offset")
        self._build_condition()

    def _init_inputs(self, m):
        """``m`` typical inputs ``[m, input_dim]`` at initialisation: the task embeddings in turn (a given
        condition vector: N(0, 1)) beside N(0, 1) noise."""
        parts = []
        if self.num_conditions is not None:
            parts.append(self.condition_embedding(tf.range(m) % self.num_conditions))
        elif self.conditional:
            parts.append(tf.random.stateless_normal([m, self.condition_dim], seed=[7, 12]))
        if self.noise_dim:
            parts.append(tf.random.stateless_normal([m, self.noise_dim], seed=[7, 11]))
        return tf.concat([tf.cast(p, tf.float32) for p in parts], axis=1)

    def _init_output(self, out, hidden, inputs, zero_columns=None):
        """Starts the output layer `out` (after the stack `hidden`): zero with ``residual``; else, unless
        ``init="default"``, calibrated on the typical `inputs` ``[m, width]`` (`calibrated_output`: every
        output of mean 0 and unit variance over them), with zero columns at `zero_columns`."""
        if self.residual:
            out.kernel.assign(tf.zeros_like(out.kernel))
            return
        if self.init == "default":
            return
        with tf.init_scope():
            h = tf.cast(run_stack(hidden, inputs), tf.float32).numpy()
            kernel, bias = calibrated_output(h, int(out.kernel.shape[-1]), zero_columns)
            out.kernel.assign(kernel)
            out.bias.assign(bias)

    def _zero_columns(self, names):
        starts = np.concatenate([[0], np.cumsum(self._sizes)])
        cols = [np.arange(starts[i], starts[i + 1]) for i, n in enumerate(self.param_shapes) if n in set(names or ())]
        return np.concatenate(cols) if cols else np.zeros(0, "int64")

    def _inputs(self, noise, condition):
        """``[K, input_dim]``: the condition vectors and the noise side by side."""
        noise = tf.cast(noise, self.compute_dtype)
        if noise.shape.rank != 2 or (noise.shape[-1] is not None and noise.shape[-1] != self.noise_dim):
            raise ValueError(
                f"{type(self).__name__}: noise must have shape [K, {self.noise_dim}] (noise_dim), got {noise.shape}."
            )
        cond = self.condition_vectors(condition, tf.shape(noise)[0])
        if cond is None:
            return noise
        return tf.concat([tf.cast(cond, self.compute_dtype), noise], axis=1)

    def _outputs(self, inputs, training=False):
        """u ``[K, num_params]`` from inputs ``[K, input_dim]`` (subclasses)."""
        raise NotImplementedError

    def flat(self, noise, condition=None, training=False):
        """θ ``[K, num_params]`` (in `param_shapes` order, which is ``target.param_specs`` order) for noise
        ``[K, noise_dim]`` and a condition (see `Generator.condition_vectors`)."""
        u = self._outputs(self._inputs(noise, condition), training=training)
        return ops.cast(self.offset, u.dtype)[None] + u * ops.cast(self._scale_vector, u.dtype)[None]

    def generate(self, target, noise, training=False, condition=None):
        return target.unflatten(self.flat(noise, condition, training=training))

    def set_offset(self, values):
        """Sets the non-trainable offset ``[num_params]`` (θ₀ for ``residual``: e.g. a pretrained model's
        ``target.flatten(target.get_params(model))[0]``)."""
        values = np.asarray(values, "float32").reshape(-1)
        if values.shape != (self.num_params,):
            raise ValueError(f"offset must have {self.num_params} values (num_params), got shape {values.shape}.")
        if not self.built:
            self.build()
        self.offset.assign(values)

    def _setup_from_target(self, target):
        """What `from_target` does after construction: build, and set the offset from the wrapped model's θ₀
        (less the initial mean output of a `ChunkedGenerator`'s chunks, `_centre`)."""
        self.build()
        offset = flat_offsets(target, self.residual)
        if self._centre is not None:
            offset = offset - self._centre
        self.set_offset(offset)
        return self

    @staticmethod
    def _target_config(target, init):
        return {
            "param_shapes": {s.name: list(s.shape) for s in target.param_specs},
            "scales": hyperfan_scales(target, init),
        }

    def compression_ratio(self, target=None) -> float:
        """Trainable parameters of this generator / parameters of the target (`num_params`, or
        ``target.num_params``); below 1 the generator is smaller than one network. The non-trainable
        offset (θ₀) is not counted."""
        n = self.num_params if target is None else int(target.num_params)
        return float(sum(int(np.prod(v.shape)) for v in self.trainable_weights)) / n

    def check_target(self, target):
        want = [(s.name, tuple(s.shape)) for s in target.param_specs]
        have = list(self.param_shapes.items())
        if have != want:
            raise ValueError(
                f"{type(self).__name__} emits {have}, which is not the target's weights {want} (in order); build it "
                f"with {type(self).__name__}.from_target(target)."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            param_shapes={k: list(v) for k, v in self.param_shapes.items()},
            noise_dim=self.noise_dim,
            scales=None if self.scales is None else dict(self.scales),
            init=self.init,
            residual=self.residual,
            **self._condition_config(),
        )
        return config


@keras.saving.register_keras_serializable(package="hyperkeras")
class MLPGenerator(FlatGenerator):
    """One MLP from ``[condition, noise]`` to every weight of the target (hypnettorch's ``HMLP``; the
    hypernetwork of von Oswald et al.), for any target (`TargetNetwork.unflatten`).

    ``θ = offset + scale ⊙ Dense(MLP([c, z]))`` (see `FlatGenerator` and `hyperkeras.generators.hyperfan`).
    Conditional with ``num_conditions`` (task ids, a learned `TaskEmbedding` each) or ``condition_dim``
    (float vectors); deterministic with ``noise_dim=0``.

    Args:
        param_shapes, noise_dim, scales, init, residual, num_conditions, condition_dim: see `FlatGenerator`.
        hidden_units: widths of the hidden layers (hypnettorch's default: 100, 100).
        activation: hidden activation.
        zero_start: names of tensors whose output columns start at zero (the zero-initialised biases of
            the target; `from_target` fills it in).

    Call arguments (`generate`):
        target: the `hyperkeras.TargetNetwork`.
        noise: ``[K, noise_dim]``.
        training: unused (no batch normalisation).
        condition: a task id, ids ``[K]``, a vector ``[condition_dim]`` or ``[K, condition_dim]`` (conditional
            generators only).

    Example:

    ```python
    gen = MLPGenerator.from_target(target, noise_dim=0, num_conditions=5, condition_dim=8)
    params = gen.generate(target, gen.sample_noise(1), condition=3)   # the network of task 3
    ```

    Reference:
        von Oswald, Henning, Grewe, Sacramento, "Continual learning with hypernetworks", ICLR 2020;
        Chang, Flokas, Lipson, "Principled weight initialization for hypernetworks", ICLR 2020.
    """

    def __init__(
        self,
        param_shapes,
        noise_dim=8,
        hidden_units=(100, 100),
        activation="relu",
        scales=None,
        zero_start=None,
        init="hyperfan_in",
        residual=False,
        num_conditions=None,
        condition_dim=None,
        **kwargs,
    ):
        super().__init__(
            param_shapes,
            noise_dim=noise_dim,
            scales=scales,
            init=init,
            residual=residual,
            num_conditions=num_conditions,
            condition_dim=condition_dim,
            **kwargs,
        )
        self.hidden_units = check_units("hidden_units", hidden_units)
        self.activation = activation
        if zero_start is not None and set(zero_start) - set(self.param_shapes):
            raise ValueError(f"zero_start must name tensors of param_shapes, got {zero_start!r}.")
        self.zero_start = None if zero_start is None else [str(n) for n in zero_start]
        self.hidden = dense_layers(self, "hidden", self.hidden_units, activation)
        self.out = keras.layers.Dense(self.num_params, name="weights", dtype=self.dtype_policy)

    @classmethod
    def from_target(
        cls,
        target,
        noise_dim=8,
        hidden_units=(100, 100),
        activation="relu",
        init="hyperfan_in",
        residual=False,
        num_conditions=None,
        condition_dim=None,
        **kwargs,
    ):
        """A built generator for `target`: scales from `init`, zero-initialised biases starting at zero,
        offsets (θ₀) from the wrapped model."""
        zero = sorted(zero_start_names(target)) if init != "default" else None
        gen = cls(
            **cls._target_config(target, init),
            noise_dim=noise_dim,
            hidden_units=hidden_units,
            activation=activation,
            zero_start=zero or None,
            init=init,
            residual=residual,
            num_conditions=num_conditions,
            condition_dim=condition_dim,
            **kwargs,
        )
        return gen._setup_from_target(target)

    def build(self, input_shape=None):
        if self.built:
            return
        self._build_flat()
        build_stack([*self.hidden, self.out], (None, self.input_dim))
        self._init_output(self.out, self.hidden, self._init_inputs(4096), self._zero_columns(self.zero_start))
        self.built = True

    def _outputs(self, inputs, training=False):
        return self.out(run_stack(self.hidden, inputs, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), activation=self.activation, zero_start=self.zero_start)
        return config
