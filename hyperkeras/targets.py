"""Target networks: ordinary Keras models whose weights are supplied from outside.

A `TargetNetwork` wraps a chain-structured `keras.Model` (Sequential, or functional with one path from
input to output) made of standard layers. It describes every trainable weight (`param_specs`), groups
them per layer into *filters* (`layers`: one filter = one output channel/neuron's kernel slice plus its
bias), and runs the architecture for K weight samples at once with `apply(params, x)`.

The params structure is a dict ``{"<layer name>/kernel": [K, *shape], "<layer name>/bias": [K, n]}``.
Generators produce it, objectives consume it; neither needs to know about the other.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

# Weightless layers that act on each example independently and can be run on a stack of networks.
# Values: True if the op is positively homogeneous (f(a·x) = a·f(x) for a > 0, per channel), which
# is what scale gauge fixing needs to pass a per-channel scale through it.
_STATELESS_LAYERS = {
    "InputLayer": True,
    "Flatten": True,
    "Reshape": False,
    "Activation": None,  # depends on the activation
    "ReLU": True,
    "LeakyReLU": True,
    "ELU": False,
    "Softmax": False,
    "MaxPooling1D": True,
    "MaxPooling2D": True,
    "AveragePooling1D": True,
    "AveragePooling2D": True,
    "GlobalMaxPooling1D": True,
    "GlobalMaxPooling2D": True,
    "GlobalAveragePooling1D": True,
    "GlobalAveragePooling2D": True,
    "ZeroPadding2D": True,
    "Dropout": True,
    "Identity": True,
}
_HOMOGENEOUS_ACTIVATIONS = {"linear", "relu", "leaky_relu"}
# Non-decreasing activations: they commute with max-pooling, max(f(v + b)) = f(max(v) + b), so a
# convolution's max-pool can run before its bias and activation (4x less data through both).
_MONOTONE_ACTIVATIONS = {"linear", "relu", "leaky_relu", "relu6", "sigmoid", "tanh", "elu", "selu", "softplus",
                         "hard_sigmoid", "exponential"}
# Weightless layers that act on every channel separately, so K networks' channels can share one tensor.
_PER_CHANNEL_LAYERS = {"Activation", "ReLU", "LeakyReLU", "ELU", "MaxPooling1D", "MaxPooling2D",
                       "AveragePooling1D", "AveragePooling2D", "ZeroPadding2D", "Identity", "Dropout"}
# With a shared input and a convolution first, all K networks run on slices of this many images:
# the first layer's K·C-channel output of a small slice stays in cache (measured about 3x faster than
# per-network convolutions for a 1-channel 5x5 input layer on a 2-core CPU), and no activation larger
# than one slice's is ever stacked or transposed.
_WIDE_BATCH = 8
# With K not known statically (or above `unroll_limit`), networks run in a tf.map_fn over groups of this many.
_NETWORK_CHUNK = 10
# A shared-input first convolution whose filters read at most this many values (kh·kw·C_in) runs as one
# matmul on image patches extracted once per batch (shared by all groups of networks), with its max-pool
# taken over the matmuls of the pool's positions. For a 1-channel 5×5 input layer with 320 outputs that
# is 1.99 ms per network per 128 images against 2.98 ms for the direct convolution (+ pool, bias,
# activation, split), measured on a 2-core AVX2 CPU; with deep inputs the patches would be too large.
_PATCH_MAX_DEPTH = 75
# ... and when one image's patches stay small (they exist for the whole batch at once): at most this many values.
_PATCH_MAX_VALUES_PER_IMAGE = 65536


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One trainable weight of the target network.

    Attributes:
        name: ``"<layer name>/kernel"`` or ``"<layer name>/bias"``; the key in a params dict.
        shape: shape of one network's weight (without the sample axis).
        layer: name of the Keras layer that owns it.
        role: ``"kernel"`` or ``"bias"``.
        filter_axis: axis of ``shape`` that indexes output filters/neurons.
    """

    name: str
    shape: tuple
    layer: str
    role: str
    filter_axis: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A weighted layer of the target and its filter layout.

    Attributes:
        name: Keras layer name.
        kind: ``"conv2d"`` or ``"dense"``.
        kernel: the kernel's `ParamSpec` (filter axis last).
        bias: the bias's `ParamSpec`, or None when the layer has ``use_bias=False``.
        num_filters: number of output filters (conv) or neurons (dense).
        filter_size: weights per filter: ``prod(kernel.shape[:-1]) + (1 if bias else 0)``.
        input_channels: size of the channel axis of the tensor this layer reads, *before* any
            Flatten in between. The kernel reshaped to ``[-1, input_channels, num_filters]`` has the
            previous layer's filters along its middle axis (channels-last flattening keeps the
            channel as the fastest-varying index).
        ops_before: descriptions of the weightless ops between the previous weighted layer's linear
            output (its activation included) and this layer, e.g. ``("activation:relu",
            "MaxPooling2D", "Flatten")``.
        homogeneous_before: True if all of ``ops_before`` are positively homogeneous per channel, so
            that scaling a filter of the previous layer by a > 0 can be undone by scaling this
            layer's matching input channel by 1/a.
    """

    name: str
    kind: str
    kernel: ParamSpec
    bias: ParamSpec | None
    num_filters: int
    filter_size: int
    input_channels: int
    ops_before: tuple
    homogeneous_before: bool


def _activation_name(fn) -> str:
    name = keras.activations.serialize(fn)
    if isinstance(name, dict):  # registered custom activations serialise as a dict
        name = name.get("config", name.get("class_name", "custom"))
        name = name if isinstance(name, str) else "custom"
    return name


class TargetNetwork:
    """A Keras architecture run with externally supplied weights, for K weight samples at once.

    Args:
        model: a built `keras.Model` (Sequential, or functional with a single chain of layers) made of
            Conv2D, Dense and weightless per-example layers (pooling, Flatten, Activation, ReLU,
            LeakyReLU, Dropout, Reshape, ZeroPadding2D, ...). Layers with non-trainable state (e.g.
            BatchNormalization) or unsupported types raise ``ValueError("unsupported layer ...")``.
        unroll_limit: with a statically known number of networks K ≤ `unroll_limit`, `apply` unrolls
            a per-network loop inside the graph (fastest on CPU: one dense conv per network);
            otherwise it maps over groups of 10 networks with `tf.map_fn`, whose activation memory is
            that of all K networks during backprop. Evaluate very large ensembles in chunks (see
            `hyperkeras.ensembles`).

    How `apply` runs K networks on one shared batch: weightless layers before the first weighted
    layer run once; the first weighted layer runs for all K networks as one layer with their kernels
    side by side (K·C output channels, in slices of 8 images for convolutions), together with the
    per-channel layers after it (activations, pooling); the rest runs network by network. A first
    convolution with small filters (kh·kw·C_in ≤ 75) runs as one matmul on image patches made once per
    batch. A convolution's max-pool runs before its bias and activation when these are non-decreasing
    (ReLU, leaky ReLU, ...), which gives the same result with less work.

    Example:

    ```python
    model = hyperkeras.targets.build_model("deutsch_mnist")
    target = hyperkeras.TargetNetwork(model)
    params = target.unflatten(tf.random.normal([4, target.num_params]) * 0.05)
    logits = target.apply(params, images)        # images [B, 28, 28, 1] -> logits [4, B, 10]
    net = target.to_keras_model(params, index=2)  # a plain keras.Model with network 2's weights
    ```
    """

    def __init__(self, model: keras.Model, unroll_limit: int = 128):
        if not isinstance(model, keras.Model):
            raise TypeError(f"TargetNetwork expects a keras.Model, got {type(model).__name__}.")
        if not model.built or not model.inputs:
            raise ValueError(
                "TargetNetwork needs a built model with a known input shape: give the model a "
                "keras.Input (or build it) before wrapping it."
            )
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError("TargetNetwork supports models with exactly one input and one output.")
        self.model = model
        self.unroll_limit = int(unroll_limit)
        self.input_shape = tuple(model.inputs[0].shape[1:])
        self.output_shape = tuple(model.outputs[0].shape[1:])
        self._steps: list[tuple[str, object, object]] = []  # (kind, keras layer, LayerSpec|None)
        self._parse(model)
        self._plan = self._make_plan()
        self.param_specs: list[ParamSpec] = []
        for spec in self.layers:
            self.param_specs.append(spec.kernel)
            if spec.bias is not None:
                self.param_specs.append(spec.bias)
        self._spec_by_name = {s.name: s for s in self.param_specs}
        self.num_params = int(sum(s.size for s in self.param_specs))

    # ------------------------------------------------------------------ parsing
    def _chain(self, model):
        layers = list(model.layers)
        if isinstance(model, keras.Sequential):
            return [l for l in layers if type(l).__name__ != "InputLayer"]
        chain = []
        prev_out = model.inputs[0]
        for layer in layers:
            if type(layer).__name__ == "InputLayer":
                continue
            try:
                inp, out = layer.input, layer.output
            except (AttributeError, ValueError) as e:
                raise ValueError(
                    f"TargetNetwork supports single-chain models only; layer {layer.name!r} is used "
                    f"more than once or has several inputs ({e})."
                ) from None
            if isinstance(inp, (list, tuple)) or inp is not prev_out:
                raise ValueError(
                    "TargetNetwork supports single-chain models only: layer "
                    f"{layer.name!r} does not read the previous layer's output."
                )
            chain.append(layer)
            prev_out = out
        if prev_out is not model.outputs[0]:
            raise ValueError("TargetNetwork: the model's output is not the end of its layer chain.")
        return chain

    def _parse(self, model):
        shape = (None,) + self.input_shape
        self.layers: list[LayerSpec] = []
        pending_ops: list[str] = []
        homogeneous = True
        self.output_activation = "linear"  # the last nonlinearity applied to the output
        channels = int(self.input_shape[-1])
        for layer in self._chain(model):
            cls = type(layer).__name__
            if cls in ("Dense", "Conv2D"):
                spec = self._weighted_spec(layer, cls, channels, tuple(pending_ops), homogeneous)
                self.layers.append(spec)
                self._steps.append(("weighted", layer, spec))
                act = _activation_name(layer.activation)
                pending_ops = [] if act == "linear" else [f"activation:{act}"]
                homogeneous = act in _HOMOGENEOUS_ACTIVATIONS
                self.output_activation = act
            elif cls in _STATELESS_LAYERS:
                if layer.weights:
                    raise ValueError(f"unsupported layer {layer.name!r} ({cls}): it has weights.")
                if cls == "Activation":
                    act = _activation_name(layer.activation)
                    pending_ops.append(f"activation:{act}")
                    homogeneous &= act in _HOMOGENEOUS_ACTIVATIONS
                    self.output_activation = act
                else:
                    if cls in ("Softmax", "ReLU", "LeakyReLU", "ELU"):
                        self.output_activation = {"ReLU": "relu", "LeakyReLU": "leaky_relu"}.get(cls, cls.lower())
                    pending_ops.append(cls)
                    homogeneous &= bool(_STATELESS_LAYERS[cls])
                self._steps.append(("dropout" if cls == "Dropout" else "stateless", layer, None))
            else:
                raise ValueError(
                    f"unsupported layer {layer.name!r} ({cls}): TargetNetwork runs Conv2D, Dense and "
                    f"weightless per-example layers ({', '.join(sorted(_STATELESS_LAYERS))})."
                )
            shape = tuple(layer.compute_output_shape(shape))
            if cls != "Flatten":  # flattening keeps channels as the fastest axis: remember them
                channels = int(shape[-1])
        if not self.layers:
            raise ValueError("TargetNetwork: the model has no Conv2D or Dense layer to parameterise.")

    @staticmethod
    def _monotone(layer) -> bool:
        """True if a weightless layer is an elementwise non-decreasing function."""
        cls = type(layer).__name__
        if cls == "Activation":
            return _activation_name(layer.activation) in _MONOTONE_ACTIVATIONS
        if cls in ("ReLU", "LeakyReLU"):
            return float(getattr(layer, "negative_slope", 0.0) or 0.0) >= 0.0
        if cls == "ELU":
            return float(getattr(layer, "alpha", 1.0)) >= 0.0
        return cls == "Identity"

    def _make_plan(self):
        """The forward pass as run: `_steps` with each conv's max-pool moved before its bias and
        activation when everything in between is non-decreasing (same result, less work).

        Entries: ``("weighted", layer, spec, pool_layer_or_None)``, ``("dropout", layer, None, None)``,
        ``("stateless", layer, None, None)``.
        """
        plan, skip = [], set()
        for i, (kind, layer, spec) in enumerate(self._steps):
            if i in skip:
                continue
            pool = None
            if kind == "weighted" and spec.kind == "conv2d" and \
                    _activation_name(layer.activation) in _MONOTONE_ACTIVATIONS:
                j = i + 1
                while j < len(self._steps) and self._steps[j][0] == "stateless" and self._monotone(self._steps[j][1]):
                    j += 1
                if j < len(self._steps) and type(self._steps[j][1]).__name__ == "MaxPooling2D":
                    pool = self._steps[j][1]
                    skip.add(j)
            plan.append((kind, layer, spec, pool))
        return plan

    def _wide_end(self, start, training) -> int | None:
        """End of the segment from `start` (a weighted layer reading the shared input) that can run for
        all networks in one wide tensor (channels of network k at ``[k*C, (k+1)*C)``), or None."""
        if start >= len(self._plan) or self._plan[start][0] != "weighted":
            return None
        end = start + 1
        while end < len(self._plan):
            kind, layer = self._plan[end][:2]
            cls = type(layer).__name__
            if kind == "weighted" or cls not in _PER_CHANNEL_LAYERS:
                break
            if kind == "dropout" and training and layer.rate > 0:  # masks differ per network
                break
            if cls == "Activation" and _activation_name(layer.activation) in ("softmax", "log_softmax"):
                break
            end += 1
        return end

    @staticmethod
    def _weighted_spec(layer, cls, channels, ops_before, homogeneous):
        cfg = layer.get_config()
        if cls == "Conv2D":
            if cfg.get("data_format", "channels_last") != "channels_last":
                raise ValueError(f"unsupported layer {layer.name!r}: only channels_last Conv2D.")
            if cfg.get("groups", 1) != 1:
                raise ValueError(f"unsupported layer {layer.name!r}: grouped Conv2D.")
        for attr in ("kernel_constraint", "bias_constraint"):
            if cfg.get(attr) is not None:
                raise ValueError(
                    f"unsupported layer {layer.name!r}: {attr} cannot be honoured for generated weights."
                )
        kshape = tuple(int(d) for d in layer.kernel.shape)
        kernel = ParamSpec(f"{layer.name}/kernel", kshape, layer.name, "kernel", len(kshape) - 1)
        bias = None
        if layer.use_bias:
            bias = ParamSpec(f"{layer.name}/bias", (kshape[-1],), layer.name, "bias", 0)
        n = kshape[-1]
        return LayerSpec(
            name=layer.name,
            kind=cls.lower(),
            kernel=kernel,
            bias=bias,
            num_filters=n,
            filter_size=int(np.prod(kshape[:-1])) + (1 if bias is not None else 0),
            input_channels=channels,
            ops_before=ops_before,
            homogeneous_before=homogeneous,
        )

    # ------------------------------------------------------------------ params utilities
    def _check_params(self, params):
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict name -> [K, *shape] tensor, got {type(params).__name__}.")
        missing = [s.name for s in self.param_specs if s.name not in params]
        extra = [k for k in params if k not in self._spec_by_name]
        if missing or extra:
            raise ValueError(f"params do not match the target: missing {missing}, unexpected {extra}.")
        k_static = None
        for spec in self.param_specs:
            t = params[spec.name]
            shape = tuple(t.shape)
            if len(shape) != len(spec.shape) + 1 or any(
                d is not None and d != e for d, e in zip(shape[1:], spec.shape)
            ):
                raise ValueError(
                    f"params[{spec.name!r}] has shape {shape}; expected [K, {', '.join(map(str, spec.shape))}]."
                )
            if shape[0] is not None:
                if k_static is not None and shape[0] != k_static:
                    raise ValueError(
                        f"params have different numbers of networks K: {spec.name!r} has {shape[0]}, "
                        f"earlier weights have {k_static}."
                    )
                k_static = shape[0]
        return k_static

    def flatten(self, params) -> tf.Tensor:
        """Concatenates params into one matrix ``[K, num_params]`` in `param_specs` order."""
        self._check_params(params)
        parts = [tf.reshape(params[s.name], [-1, s.size]) for s in self.param_specs]
        return tf.concat(parts, axis=1)

    def unflatten(self, flat) -> dict:
        """Inverse of `flatten`: ``[K, num_params]`` -> params dict."""
        flat = tf.convert_to_tensor(flat)
        if flat.shape.rank != 2 or (flat.shape[1] is not None and flat.shape[1] != self.num_params):
            raise ValueError(
                f"unflatten expects [K, {self.num_params}] (num_params of this target), got {flat.shape}."
            )
        sizes = [s.size for s in self.param_specs]
        parts = tf.split(flat, sizes, axis=1)
        return {s.name: tf.reshape(p, [-1, *s.shape]) for s, p in zip(self.param_specs, parts)}

    def to_filters(self, params) -> dict:
        """Per layer, the weights arranged filter by filter: ``{layer name: [K, num_filters, filter_size]}``.

        Row f holds the kernel slice of output filter f (flattened in kernel order) followed by its bias.
        """
        self._check_params(params)
        out = {}
        for spec in self.layers:
            k = params[spec.kernel.name]
            k = tf.reshape(k, [-1, spec.filter_size - (spec.bias is not None), spec.num_filters])
            k = tf.transpose(k, [0, 2, 1])
            if spec.bias is not None:
                k = tf.concat([k, params[spec.bias.name][:, :, None]], axis=2)
            out[spec.name] = k
        return out

    def from_filters(self, filters) -> dict:
        """Inverse of `to_filters`."""
        params = {}
        for spec in self.layers:
            f = tf.convert_to_tensor(filters[spec.name])
            if f.shape.rank != 3 or tuple(f.shape[1:]) != (spec.num_filters, spec.filter_size):
                raise ValueError(
                    f"filters[{spec.name!r}] has shape {f.shape}; expected "
                    f"[K, {spec.num_filters}, {spec.filter_size}]."
                )
            nk = spec.filter_size - (spec.bias is not None)
            params[spec.kernel.name] = tf.reshape(
                tf.transpose(f[:, :, :nk], [0, 2, 1]), [-1, *spec.kernel.shape]
            )
            if spec.bias is not None:
                params[spec.bias.name] = f[:, :, nk]
        return params

    def get_params(self, model: keras.Model | None = None) -> dict:
        """The weights of `model` (default: the wrapped model) as a params dict with K = 1."""
        model = model or self.model
        out = {}
        for spec in self.layers:
            layer = model.get_layer(spec.name)
            out[spec.kernel.name] = tf.convert_to_tensor(layer.kernel)[None]
            if spec.bias is not None:
                out[spec.bias.name] = tf.convert_to_tensor(layer.bias)[None]
        return out

    def to_keras_model(self, params, index: int = 0) -> keras.Model:
        """A standalone copy of the architecture holding network `index`'s weights (savable as .keras)."""
        k = self._check_params(params)
        if k is not None and not -k <= index < k:
            raise IndexError(f"index {index} out of range for {k} networks.")
        clone = keras.models.clone_model(self.model)
        for spec in self.layers:
            layer = clone.get_layer(spec.name)
            layer.kernel.assign(params[spec.kernel.name][index])
            if spec.bias is not None:
                layer.bias.assign(params[spec.bias.name][index])
        return clone

    # ------------------------------------------------------------------ forward
    def apply(self, params, x, training: bool = False, seed=None):
        """Runs K networks.

        Args:
            params: dict name -> ``[K, *shape]`` (see `param_specs`).
            x: ``[B, *input_shape]`` (every network sees the same batch) or
                ``[K, B, *input_shape]`` (network k sees ``x[k]``).
            training: enables Dropout layers.
            seed: optional int seed for dropout masks.

        Returns:
            ``[K, B, *output_shape]``. Differentiable with respect to `params` (and `x`).
        """
        k_static = self._check_params(params)
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            x = tf.cast(x, self.model.inputs[0].dtype or "float32")
        rank = len(self.input_shape)
        if x.shape.rank == rank + 1:
            shared = True
        elif x.shape.rank == rank + 2:
            shared = False
            if k_static is not None and x.shape[0] is not None and x.shape[0] != k_static:
                raise ValueError(
                    f"x has {x.shape[0]} per-network batches but params hold {k_static} networks."
                )
        else:
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, self.input_shape))}] or [K, B, ...]; "
                f"got {tuple(x.shape)}."
            )
        feat = tuple(x.shape[-rank:])
        if any(d is not None and e is not None and d != e for d, e in zip(feat, self.input_shape)):
            raise ValueError(f"x has example shape {feat}; the target expects {self.input_shape}.")
        dtype = params[self.param_specs[0].name].dtype
        x = tf.cast(x, dtype)

        prepared = self._prepare_shared(x, training) if shared else None
        if k_static is not None and k_static <= self.unroll_limit:
            return self._apply_static(params, x, shared, k_static, training, seed, 0, prepared)

        # K unknown at trace time (or large): groups of _NETWORK_CHUNK networks in a tf.map_fn; the last
        # group is padded with all-zero networks, whose outputs are dropped.
        c = _NETWORK_CHUNK
        k_dyn = tf.shape(params[self.param_specs[0].name])[0]
        num_chunks = (k_dyn + c - 1) // c

        def grouped(t):  # [K, ...] -> [num_chunks, c, ...]
            t = tf.pad(t, [[0, num_chunks * c - k_dyn]] + [[0, 0]] * (t.shape.rank - 1))
            out = tf.reshape(t, tf.concat([[num_chunks, c], tf.shape(t)[1:]], 0))
            out.set_shape([None, c, *t.shape[1:]])
            return out

        def one(args):
            p, xk, index = args
            return self._apply_static(p, x if shared else xk, shared, c, training, seed, index * c, prepared)

        elems = ({name: grouped(t) for name, t in params.items()},
                 tf.zeros([num_chunks], dtype) if shared else grouped(x), tf.range(num_chunks))
        out = tf.map_fn(one, elems, fn_output_signature=dtype)  # [num_chunks, c, B, ...]
        out = tf.reshape(out, tf.concat([[num_chunks * c], tf.shape(out)[2:]], 0))[:k_dyn]
        out.set_shape([k_static, *out.shape[1:]])
        return out

    def _prepare_shared(self, x, training):
        """The part of a shared-input forward pass that does not depend on the weights, done once for
        all networks (and all groups of them): the leading weightless layers, then the first weighted
        layer's input cut into batch slices, or as image patches when it runs as a matmul.

        Returns ``(start, end, x, slices)``: plan index of the first weighted layer, end of the wide
        segment (None: run network by network), the input after the leading layers, and None (dense
        first layer, or no wide segment), ``("images", xs [n, S, ...], b)`` or
        ``("patches", [n, q, S·P, D], b)`` (q pool positions, P pooled output pixels per image)."""
        start = 0
        while start < len(self._plan) and self._plan[start][0] != "weighted":
            kind, layer = self._plan[start][:2]
            if kind == "dropout" and training and layer.rate > 0:
                break  # a dropout mask per network: leave it to the per-network loop
            if kind == "stateless":
                x = layer.call(x)
            start += 1
        end = self._wide_end(start, training)
        if end is None or self._plan[start][2].kind != "conv2d":
            return start, end, x, None
        xs, b = _batch_slices(x)
        if not self._patch_conv(start):
            return start, end, x, ("images", xs, b)
        return start, end, x, ("patches", self._patches(xs, start), b)

    def _patch_conv(self, start) -> bool:
        """True if plan entry `start` (a convolution) runs as a matmul on patches (see _PATCH_MAX_DEPTH)."""
        _, layer, spec, pool = self._plan[start]
        depth = int(np.prod(spec.kernel.shape[:-1]))
        shape = self._output_shape(start)
        if depth > _PATCH_MAX_DEPTH or depth * int(np.prod(shape[1:-1])) > _PATCH_MAX_VALUES_PER_IMAGE:
            return False
        return pool is None or (tuple(pool.pool_size) == tuple(pool.strides) and pool.padding == "valid")

    def _output_shape(self, start):
        """Output shape ``(None, ...)`` of plan entry `start`'s layer (before its moved pool, if any)."""
        shape = (None, *self.input_shape)
        for _, layer, _, _ in self._plan[:start + 1]:
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def _pooled_shape(self, start):
        """``(Hp, Wp)``: spatial size of the convolution at plan entry `start` after its moved max-pool."""
        shape = self._output_shape(start)
        pool = self._plan[start][3]
        ph, pw = pool.pool_size if pool is not None else (1, 1)
        return int(shape[1]) // ph, int(shape[2]) // pw

    def _patches(self, xs, start):
        """Patches of batch slices `xs` [n, S, H, W, C] for the convolution at plan entry `start`,
        grouped by position in its max-pool window: ``[n, q, S·Hp·Wp, kh·kw·C]``."""
        _, layer, spec, pool = self._plan[start]
        n, size = tf.shape(xs)[0], xs.shape[1]
        # Patches as a convolution with a one-hot kernel (exact: one product by 1 per output; 2.5x faster
        # than tf.image.extract_patches here): [n·S, Ho, Wo, D], D in kernel order (row, column, channel).
        depth = int(np.prod(spec.kernel.shape[:-1]))
        one_hot = tf.reshape(tf.eye(depth, dtype=xs.dtype), [*spec.kernel.shape[:-1], depth])
        p = self._linear(layer, spec, tf.reshape(xs, [-1, *xs.shape[2:]]), one_hot)
        ph, pw = pool.pool_size if pool is not None else (1, 1)
        hp, wp = self._pooled_shape(start)
        p = tf.reshape(p[:, : hp * ph, : wp * pw], [n, size, hp, ph, wp, pw, depth])
        p = tf.transpose(p, [0, 3, 5, 1, 2, 4, 6])
        return tf.reshape(p, [n, ph * pw, size * hp * wp, depth])

    def _apply_static(self, params, x, shared, k, training, seed, offset, prepared=None):
        """`apply` for a static number `k` of networks: unrolled per-network loop; with a shared input,
        the leading weightless layers run once and the first weighted layer (with the per-channel
        layers after it) runs for all networks in one wide tensor, slice by slice of the batch."""
        # Split every weight into its k networks once (unstack, whose gradient is one stack; indexing
        # t[i] would build a full-size zero gradient per network, and again in every batch slice).
        per_network = [dict(zip(params, ws)) for ws in zip(*(tf.unstack(t, num=k) for t in params.values()))]
        start = 0
        if shared:
            start, end, x, slices = prepared if prepared is not None else self._prepare_shared(x, training)
            if end is not None:
                wide = self._wide_weights(params, k, start)
                from_patches = slices is not None and slices[0] == "patches"

                def run(xs, slice_index):
                    inputs = self._forward_wide(wide, xs, k, start, end, from_patches)
                    return self._forward_each(per_network, inputs, training, seed, offset, end, slice_index)

                if slices is None:
                    return run(x, None)
                return _over_slices(run, slices[1], slices[2], x.shape[0], x.dtype)
        inputs = [x] * k if shared else tf.unstack(x, num=k, axis=0)
        return self._forward_each(per_network, inputs, training, seed, offset, start, None)

    def _forward_each(self, per_network, inputs, training, seed, offset, start, slice_index):
        outs = [self._forward_one(weights, h, training, seed, offset + i, start, slice_index)
                for i, (weights, h) in enumerate(zip(per_network, inputs))]
        return tf.stack(outs, axis=0)

    @staticmethod
    def _linear(layer, spec, h, kernel):
        if spec.kind == "conv2d":
            return tf.nn.convolution(h, kernel, strides=layer.strides, padding=layer.padding.upper(),
                                     dilations=layer.dilation_rate)
        return tf.matmul(h, kernel) if h.shape.rank == 2 else tf.tensordot(h, kernel, axes=1)

    def _weighted(self, layer, spec, pool, h, kernel, bias, pooled=False):
        """The layer (and its moved max-pool) on `h`; with ``pooled=True`` `h` is already its pooled
        linear output."""
        if not pooled:
            h = self._linear(layer, spec, h, kernel)
            if pool is not None:
                h = pool.call(h)
        if bias is not None:
            h = h + bias
        return layer.activation(h)

    def _wide_weights(self, params, k, start):
        """The k networks' kernels of plan entry `start` side by side: ``[..., k*C]`` (and bias ``[k*C]``)."""
        spec = self._plan[start][2]
        kernel = params[spec.kernel.name]  # [k, ..., C]
        rank = kernel.shape.rank
        kernel = tf.transpose(kernel, list(range(1, rank - 1)) + [0, rank - 1])
        kernel = tf.reshape(kernel, [*spec.kernel.shape[:-1], k * spec.num_filters])
        bias = None if spec.bias is None else tf.reshape(params[spec.bias.name], [k * spec.num_filters])
        return kernel, bias

    def _forward_wide(self, wide, x, k, start, end, from_patches=False):
        """Plan entries [start, end) for k networks on one shared input (for convolutions, one slice of
        the batch) as one layer with k·C outputs (`wide` from `_wide_weights`); `x` may be the slice's
        patches ``[q, S·P, D]`` (see `_patches`). Returns the k networks' outputs, a list of ``[B, ..., C]``."""
        _, layer, spec, pool = self._plan[start]
        if from_patches:
            kernel = tf.reshape(wide[0], [x.shape[-1], -1])
            outs = [tf.matmul(p, kernel) for p in tf.unstack(x, num=x.shape[0])]
            while len(outs) > 1:  # max over the pool window's positions, as a tree
                outs = [tf.maximum(a, b) for a, b in zip(outs[0::2], outs[1::2])] + outs[len(outs) - len(outs) % 2:]
            h = tf.reshape(outs[0], [-1, *self._pooled_shape(start), k * spec.num_filters])
            h = self._weighted(layer, spec, pool, h, None, wide[1], pooled=True)
        else:
            h = self._weighted(layer, spec, pool, x, *wide)
        for kind, later, _, _ in self._plan[start + 1:end]:
            if kind == "stateless":  # dropout here is inactive (see _wide_end)
                h = later.call(h)
        r = h.shape.rank  # [b, ..., k*C] -> k x [b, ..., C]
        h = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [k, spec.num_filters]], 0))
        return tf.unstack(tf.transpose(h, [r - 1] + list(range(r - 1)) + [r]), num=k, axis=0)

    def _forward_one(self, weights, h, training, seed, k, start=0, slice_index=None):
        for kind, layer, spec, pool in self._plan[start:]:
            if kind == "weighted":
                h = self._weighted(layer, spec, pool, h, weights[spec.kernel.name],
                                   None if spec.bias is None else weights[spec.bias.name])
            elif kind == "dropout":
                if training and layer.rate > 0:
                    if seed is None:
                        h = tf.nn.dropout(h, rate=layer.rate, noise_shape=layer.noise_shape)
                    else:
                        s = tf.stack([tf.cast(seed, tf.int64), tf.cast(k, tf.int64)])
                        if slice_index is not None:  # a different mask for every slice of the batch
                            s = tf.random.experimental.stateless_fold_in(s, slice_index)
                        h = tf.nn.experimental.stateless_dropout(
                            h, rate=layer.rate, seed=s, noise_shape=layer.noise_shape
                        )
            else:
                h = layer.call(h)
        return h

    def __repr__(self):
        rows = ", ".join(f"{s.name}:{s.kind}[{s.num_filters}x{s.filter_size}]" for s in self.layers)
        return f"TargetNetwork({rows}; num_params={self.num_params})"


def _batch_slices(x):
    """The batch `x` [B, ...] as slices of _WIDE_BATCH images ``[n, S, ...]`` (the last one zero-padded;
    one slice of B images when B <= _WIDE_BATCH is known statically), and B."""
    size, rank = _WIDE_BATCH, x.shape.rank
    if x.shape[0] is not None and x.shape[0] <= size:
        return x[None], x.shape[0]
    b = tf.shape(x)[0]
    n = (b + size - 1) // size
    xs = tf.pad(x, [[0, n * size - b]] + [[0, 0]] * (rank - 1))
    xs = tf.reshape(xs, tf.concat([[n, size], tf.shape(x)[1:]], 0))
    xs.set_shape([None, size, *x.shape[1:]])
    return xs, b


def _over_slices(fn, slices, b, static_b, dtype):
    """``fn(slice, slice_index) -> [K, S, ...]`` over `slices` [n, ...] (from `_batch_slices`, or patches
    of them). Returns ``[K, B, ...]`` without the padding."""
    if slices.shape[0] == 1:
        return fn(slices[0], 0)
    out = tf.map_fn(lambda a: fn(a[0], a[1]), (slices, tf.range(tf.shape(slices)[0])), fn_output_signature=dtype)
    r = out.shape.rank  # [n, K, S, ...]
    out = tf.transpose(out, [1, 0] + list(range(2, r)))
    out = tf.reshape(out, tf.concat([tf.shape(out)[:1], [-1], tf.shape(out)[3:]], 0))[:, :b]
    out.set_shape([out.shape[0], static_b, *out.shape[2:]])
    return out


# ---------------------------------------------------------------------- architectures from the papers
_BUILDERS: dict[str, Callable[..., keras.Model]] = {}


def register_target(name: str):
    """Decorator: registers a function ``(**kwargs) -> keras.Model`` under `name` for `build_model`."""

    def wrap(fn):
        _BUILDERS[name] = fn
        return fn

    return wrap


def available_targets() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs) -> keras.Model:
    """Builds a registered target architecture (see `available_targets()`) as a plain keras.Model."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown target {name!r}; available: {available_targets()}.")
    return _BUILDERS[name](**kwargs)


@register_target("deutsch_mnist")
def deutsch_mnist(input_shape=(28, 28, 1), num_classes=10, seed=None) -> keras.Model:
    """Deutsch (2018) Table 1: conv 5×5×32 SAME + ReLU + max-pool 2, conv 5×5×16 SAME + ReLU +
    max-pool 2, dense 8 + ReLU, dense 10 (logits). 20,018 weights for 28×28×1 inputs."""
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 5, padding="same", activation="relu", kernel_initializer=init, name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 5, padding="same", activation="relu", kernel_initializer=init, name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="dense1"),
            keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"),
        ],
        name="deutsch_mnist",
    )


@register_target("mlp")
def mlp(input_shape=(64,), hidden=(64, 32), num_classes=10, activation="relu", dropout=0.0, seed=None):
    """A plain multi-layer perceptron (Flatten, then Dense layers; optional dropout after each)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input(input_shape), keras.layers.Flatten(name="flatten")]
    for i, width in enumerate(hidden):
        layers.append(keras.layers.Dense(width, activation=activation, kernel_initializer=init, name=f"dense{i + 1}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"))
    return keras.Sequential(layers, name="mlp")


# ---------------------------------------------------------------------- HyperGAN (Ratzlaff & Fuxin) targets
def _hypergan_stack(name, input_shape, convs, denses, num_classes, negative_slope, dropout, seed):
    """Conv (VALID) + leaky ReLU + 2×2 max-pool blocks, Flatten, Dense + leaky ReLU layers, Dense logits.
    `dropout` > 0 adds a Dropout after every pooling / hidden dense layer (MC-dropout baseline)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input(input_shape)]
    for i, (filters, size) in enumerate(convs):
        layers += [
            keras.layers.Conv2D(filters, size, padding="valid", kernel_initializer=init, name=f"conv{i + 1}"),
            keras.layers.LeakyReLU(negative_slope, name=f"lrelu{i + 1}"),
            keras.layers.MaxPooling2D(2, name=f"pool{i + 1}"),
        ]
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{i + 1}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    for i, width in enumerate(denses):
        layers += [
            keras.layers.Dense(width, kernel_initializer=init, name=f"linear{i + 1}"),
            keras.layers.LeakyReLU(negative_slope, name=f"lrelu_linear{i + 1}"),
        ]
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_linear{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"))
    return keras.Sequential(layers, name=name)


@register_target("hypergan_mnist")
def hypergan_mnist(input_shape=(28, 28, 1), num_classes=10, negative_slope=0.01, dropout=0.0, seed=None):
    """HyperGAN Table 5 (MNIST): conv 32×1×5×5, leaky ReLU, 2×2 max-pool, conv 32×32×5×5, leaky ReLU,
    2×2 max-pool, linear 512×10. VALID convolutions: 28 → 24 → 12 → 8 → 4, so the flattened features
    are 4·4·32 = 512. 31,594 weights. The paper does not give the leaky-ReLU slope; 0.01 (PyTorch's
    default) is used."""
    return _hypergan_stack("hypergan_mnist", input_shape, [(32, 5), (32, 5)], [], num_classes, negative_slope, dropout, seed)


@register_target("hypergan_cifar10")
def hypergan_cifar10(input_shape=(32, 32, 3), num_classes=10, negative_slope=0.01, dropout=0.0, seed=None):
    """HyperGAN Table 6 (CIFAR-10): conv 16×3×3×3, conv 32×16×3×3, conv 64×32×3×3 (each VALID + leaky
    ReLU + 2×2 max-pool: 32 → 30 → 15 → 13 → 6 → 4 → 2), linear 256×128 + leaky ReLU, linear 128×10.
    The table prints conv 3 as "32 × 64 × 3 × 3"; only 64 output channels from 32 inputs are
    consistent with conv 2's 32 outputs and linear 1's 256 = 2·2·64 inputs. 57,770 weights
    (the paper's "50,000+")."""
    return _hypergan_stack(
        "hypergan_cifar10", input_shape, [(16, 3), (32, 3), (64, 3)], [128], num_classes, negative_slope, dropout, seed
    )


@register_target("hypergan_regression")
def hypergan_regression(input_shape=(1,), hidden=100, outputs=1, dropout=0.0, seed=None):
    """HyperGAN §4.3 (after Hernández-Lobato & Adams): one hidden layer of 100 ReLU units, linear output."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input(input_shape), keras.layers.Dense(hidden, activation="relu", kernel_initializer=init, name="hidden")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    layers.append(keras.layers.Dense(outputs, kernel_initializer=init, name="output"))
    return keras.Sequential(layers, name="hypergan_regression")
