"""HyperGAN building blocks (Ratzlaff & Fuxin, §3, Fig. 1): mixer Q, per-layer generators G_i and the
latent discriminator D.

    s ~ N(0, I_j) ──► Mixer Q ──► [q_1 | ... | q_N] (N·d) ──► G_i(q_i) ──► all weights of target layer i
                                        │
                          LatentDiscriminator D(q_i) vs D(p), p ~ N(0, I_d)  (logits)

Three small Keras layers live in this one module because they only make sense together; each follows
the keras-hub conventions (weights built in `build`, `get_config` keys = `__init__` arguments,
registered for `.keras` serialisation).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from hyperkeras.generators.stacks import build_stack, run_stack


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


def _check_units(name, units):
    units = tuple(int(u) for u in (units or ()))
    if any(u <= 0 for u in units):
        raise ValueError(f"{name} must be a sequence of positive ints, got {units}.")
    return units


def _mlp(owner, prefix, units, activation):
    return [keras.layers.Dense(u, activation=activation, name=f"{prefix}_{i}", dtype=owner.dtype_policy) for i, u in enumerate(units)]


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
        self.hidden_units = _check_units("hidden_units", hidden_units)
        self._activation_config = activation
        self.hidden = _mlp(self, "hidden", self.hidden_units, activation)
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

    Args:
        output_shapes: dict ``{param name: shape}`` of the layer's weights (e.g. from
            ``TargetNetwork.param_specs``), kernel first. Shapes exclude the sample axis.
        fan_in: inputs per output unit of the target layer (e.g. ``5 * 5 * 32`` for a 5×5 conv over
            32 channels); sets the output scale. None disables the scaling.
        hidden_units: widths of the hidden layers (paper: 512).
        activation: hidden activation (paper: ReLU).

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

    def __init__(self, output_shapes, fan_in=None, hidden_units=(512, 512), activation="relu", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(output_shapes, dict) or not output_shapes:
            raise ValueError(f"output_shapes must be a non-empty dict name -> shape, got {output_shapes!r}.")
        self.output_shapes = {str(k): tuple(int(d) for d in v) for k, v in output_shapes.items()}
        if any(d <= 0 for s in self.output_shapes.values() for d in s):
            raise ValueError(f"output_shapes must hold positive dimensions, got {self.output_shapes}.")
        if fan_in is not None and int(fan_in) <= 0:
            raise ValueError(f"fan_in must be a positive int or None, got {fan_in}.")
        self.fan_in = None if fan_in is None else int(fan_in)
        self.hidden_units = _check_units("hidden_units", hidden_units)
        self._activation_config = activation
        self._sizes = [int(np.prod(s)) for s in self.output_shapes.values()]
        self.hidden = _mlp(self, "hidden", self.hidden_units, activation)
        self.out = keras.layers.Dense(
            sum(self._sizes),
            kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
            name="weights",
            dtype=self.dtype_policy,
        )
        self._scale = 1.0 if self.fan_in is None else float(np.sqrt(2.0 / self.fan_in))

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"LayerGenerator expects codes of shape [batch, code_dim], got {tuple(input_shape)}.")
        shape = tuple(input_shape)
        build_stack([*self.hidden, self.out], shape)
        self.built = True

    def call(self, inputs):
        h = run_stack(self.hidden, inputs)
        if self.out.kernel.shape[-1] > _GRADIENT_BLOCK:  # the Dense layer's maths, with a faster gradient
            flat = (_wide_matmul(h, ops.cast(self.out.kernel, h.dtype)) + ops.cast(self.out.bias, h.dtype)) * self._scale
        else:
            flat = self.out(h) * self._scale
        parts = ops.split(flat, np.cumsum(self._sizes)[:-1].tolist(), axis=-1)
        return {name: ops.reshape(p, (-1, *shape)) for (name, shape), p in zip(self.output_shapes.items(), parts)}

    def get_config(self):
        config = super().get_config()
        config.update(
            output_shapes={k: list(v) for k, v in self.output_shapes.items()},
            fan_in=self.fan_in,
            hidden_units=list(self.hidden_units),
            activation=self._activation_config,
        )
        return config


@keras.saving.register_keras_serializable(package="hyperkeras")
class LatentDiscriminator(keras.layers.Layer):
    """HyperGAN discriminator D on latent codes: one logit per code ("is this a sample of P = N(0, I)?").

    Outputs are *logits*, meant for a single logits loss (eq. 3 with log D = −softplus(−logit) and
    log(1 − D) = −softplus(logit)); there is no sigmoid inside (the original code applied one and then a
    loss "with logits" again).

    Args:
        hidden_units: widths of the hidden layers (paper: 512).
        activation: hidden activation.

    Call arguments:
        inputs: codes ``[..., code_dim]``.

    Returns:
        logits ``[...]``.

    Example:

    ```python
    disc = LatentDiscriminator()
    logits = disc(keras.random.normal([32, 3, 128]))   # [32, 3]
    ```

    Reference:
        Ratzlaff & Fuxin, "HyperGAN", eq. 3; Goodfellow et al. (2014).
    """

    def __init__(self, hidden_units=(512, 512), activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = _check_units("hidden_units", hidden_units)
        self._activation_config = activation
        self.hidden = _mlp(self, "hidden", self.hidden_units, activation)
        self.out = keras.layers.Dense(1, name="logit", dtype=self.dtype_policy)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"LatentDiscriminator needs a known code size, got input shape {tuple(input_shape)}.")
        shape = (None, input_shape[-1])
        build_stack([*self.hidden, self.out], shape)
        self.built = True

    def call(self, inputs):
        h = run_stack(self.hidden, inputs)
        return ops.squeeze(self.out(h), -1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), activation=self._activation_config)
        return config
