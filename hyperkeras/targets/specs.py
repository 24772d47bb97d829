"""What a target network's weights are: one `ParamSpec` per trainable variable, one `StateSpec` per
non-trainable one, and the filter layout (`LayerSpec`) of the Conv/Dense layers where it has a meaning.

Everything here reads a built `keras.Model`; nothing runs it.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

# The weights of K networks: ``{ParamSpec.name: [K, *shape]}`` (tensors, variables or NumPy arrays).
Params = dict

# Weighted layers whose kernel has output filters along its last axis and a bias of one value per filter:
# these get a filter layout (`LayerSpec`).
FILTER_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D")

# Weightless per-example layers, with True where the layer is positively homogeneous per channel
# (f(a·x) = a·f(x) for a > 0), which scale gauge fixing needs to pass a filter's scale through it.
# An allow-list: a layer not named here is never assumed to be anything.
WEIGHTLESS_LAYERS = {
    "InputLayer": True,
    "Flatten": True,
    "Reshape": False,
    "Activation": None,  # depends on the activation
    "ReLU": None,  # depends on max_value / threshold
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
HOMOGENEOUS_ACTIVATIONS = {"linear", "relu", "leaky_relu"}
# Activations that act on each value on its own (so K networks' channels may share one tensor).
ELEMENTWISE_ACTIVATIONS = {
    "linear",
    "relu",
    "leaky_relu",
    "relu6",
    "sigmoid",
    "tanh",
    "elu",
    "selu",
    "softplus",
    "softsign",
    "hard_sigmoid",
    "exponential",
    "gelu",
    "silu",
    "swish",
    "mish",
    "hard_silu",
    "hard_swish",
    "celu",
    "log_sigmoid",
    "tanh_shrink",
}
# Non-decreasing elementwise activations: they commute with max-pooling, max(f(v + b)) = f(max(v) + b).
MONOTONE_ACTIVATIONS = {
    "linear",
    "relu",
    "leaky_relu",
    "relu6",
    "sigmoid",
    "tanh",
    "elu",
    "selu",
    "softplus",
    "softsign",
    "hard_sigmoid",
    "exponential",
    "log_sigmoid",
}


def activation_name(fn) -> str:
    """The registered name of a Keras activation function (``"custom"`` for anything unnamed)."""
    name = keras.activations.serialize(fn)
    if isinstance(name, dict):  # registered custom activations serialise as a dict
        name = name.get("config", name.get("class_name", "custom"))
        name = name if isinstance(name, str) else "custom"
    return name


def layer_activation(layer) -> str | None:
    """The elementwise function a weightless activation layer applies, by name, or None if unknown.

    ``ReLU(max_value=...)``, ``ReLU(threshold>0)`` and ``ReLU(negative_slope=...)`` are not plain ReLUs
    and are named ``"relu_variant"``; ``LeakyReLU(negative_slope=a)`` is ``"leaky_relu"``."""
    cls = type(layer).__name__
    if cls == "Activation":
        return activation_name(layer.activation)
    if cls == "ReLU":
        plain = layer.max_value is None and float(layer.threshold) == 0.0 and float(layer.negative_slope) == 0.0
        return "relu" if plain else "relu_variant"
    if cls == "LeakyReLU":
        return "leaky_relu"
    if cls == "ELU":
        return "elu"
    if cls == "Softmax":
        return "softmax"
    if cls == "Identity":
        return "linear"
    return None


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One trainable weight of the target network.

    Attributes:
        name: ``"<layer name>/<weight>"`` (e.g. ``"conv1/kernel"``, ``"bn1/gamma"``,
            ``"mha/query/kernel"``); the key in a params dict. Unique, and stable across `.keras`
            save/load (it is built from layer names, which the model's config keeps).
        shape: shape of one network's weight (without the sample axis).
        layer: name of the model's (top-level) layer that owns it.
        role: the variable's own name (``"kernel"``, ``"bias"``, ``"gamma"``, ``"embeddings"``, ...).
        filter_axis: axis of ``shape`` that indexes output filters/neurons for the kernels and biases
            of Conv/Dense layers (see `LayerSpec`); None for every other weight.
    """

    name: str
    shape: tuple
    layer: str
    role: str
    filter_axis: int | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One non-trainable variable of the target (e.g. a BatchNormalization moving mean).

    Attributes:
        name: ``"<layer name>/<variable>"``, the key in a state dict.
        shape: shape for one network.
        dtype: the variable's dtype.
        layer: name of the top-level layer that owns it.
        momentum: for BatchNormalization moving statistics, the layer's momentum (used by
            `TargetNetwork.calibrate_state`); None otherwise.
    """

    name: str
    shape: tuple
    dtype: str
    layer: str
    momentum: float | None = None


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A Conv/Dense layer of the target and its filter layout.

    Attributes:
        name: Keras layer name.
        kind: ``"dense"``, ``"conv1d"``, ``"conv2d"`` or ``"conv3d"``.
        kernel: the kernel's `ParamSpec` (filter axis last).
        bias: the bias's `ParamSpec`, or None when the layer has ``use_bias=False``.
        num_filters: number of output filters (conv) or neurons (dense).
        filter_size: weights per filter: ``prod(kernel.shape[:-1]) + (1 if bias else 0)``.
        input_channels: size of the channel axis of the tensor this layer reads, *before* any
            Flatten in between. The kernel reshaped to ``[-1, input_channels, num_filters]`` has the
            previous layer's filters along its middle axis (channels-last flattening keeps the
            channel as the fastest-varying index).
        ops_before: for a model that is a single chain of Conv/Dense and allow-listed weightless
            layers, the weightless ops between the previous Conv/Dense layer's linear output (its
            activation included) and this layer, e.g. ``("activation:relu", "MaxPooling2D",
            "Flatten")``; None when the model is not such a chain (the layers' order is not defined).
        homogeneous_before: True if the model is such a chain and all of ``ops_before`` are positively
            homogeneous per channel, so that scaling a filter of the previous layer by a > 0 can be
            undone by scaling this layer's matching input channel by 1/a.
    """

    name: str
    kind: str
    kernel: ParamSpec
    bias: ParamSpec | None
    num_filters: int
    filter_size: int
    input_channels: int
    ops_before: tuple | None
    homogeneous_before: bool


def _owners(model):
    """``{id(variable): top-level layer}`` for every variable of the model's layers."""
    owners = {}
    for layer in model.layers:
        for v in layer.variables:
            owners.setdefault(id(v), layer)
    return owners


def _relative_name(variable, layer_name):
    """``"<layer>/<rest of the variable path>"``: the variable's path from its top-level layer on."""
    parts = variable.path.split("/")
    if layer_name in parts:
        parts = parts[parts.index(layer_name) :]
        return "/".join(parts)
    return f"{layer_name}/{variable.name}"


def is_seed_state(variable) -> bool:
    """True for the state variable of a `keras.random.SeedGenerator` (randomness, not network state)."""
    return variable.name == "seed_generator_state"


def state_variables(model) -> list:
    """The model's non-trainable variables that are network state (seed-generator states left out),
    in the order of `StateSpec`s."""
    return [v for v in model.non_trainable_variables if not is_seed_state(v)]


def param_and_state_specs(model):
    """`ParamSpec`s in ``model.trainable_variables`` order, and `StateSpec`s in the order of the
    model's non-trainable variables (seed-generator states excluded)."""
    owners = _owners(model)
    bn_momentum = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in (layer.moving_mean, layer.moving_variance):
                bn_momentum[id(v)] = float(layer.momentum)

    def named(variables):
        out = []
        for v in variables:
            layer = owners.get(id(v))
            layer_name = layer.name if layer is not None else model.name
            out.append((v, layer_name, _relative_name(v, layer_name)))
        names = [n for _, _, n in out]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"TargetNetwork: the model has several variables named {dupes}; give its layers unique names."
            )
        return out

    params = []
    for v, layer_name, name in named(model.trainable_variables):
        if not v.dtype.startswith("float") and v.dtype != "bfloat16":
            raise ValueError(
                f"TargetNetwork: trainable variable {name!r} has dtype {v.dtype}; only floating weights can be generated."
            )
        params.append(ParamSpec(name, tuple(int(d) for d in v.shape), layer_name, v.name))
    states = [
        StateSpec(name, tuple(int(d) for d in v.shape), str(v.dtype), layer_name, bn_momentum.get(id(v)))
        for v, layer_name, name in named(state_variables(model))
    ]
    return params, states


def chain_layers(model):
    """The model's layers in order if it is a single chain (Sequential, or functional with one path
    from input to output, each layer used once), else None."""
    layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
    if isinstance(model, keras.Sequential):
        return layers
    try:
        prev_out = model.inputs[0]
    except (AttributeError, TypeError, IndexError):  # a subclassed model has no graph of layers
        return None
    for layer in layers:
        try:
            inp, out = layer.input, layer.output  # raises for a layer used more than once
        except (AttributeError, ValueError):
            return None
        if isinstance(inp, (list, tuple)) or inp is not prev_out:
            return None
        prev_out = out
    return layers if prev_out is model.outputs[0] else None


def _homogeneous(layer) -> bool:
    cls = type(layer).__name__
    flag = WEIGHTLESS_LAYERS.get(cls)
    if flag is None:
        return layer_activation(layer) in HOMOGENEOUS_ACTIVATIONS
    return bool(flag)


def layer_specs(model, param_specs, input_shape):
    """`LayerSpec`s of the model's top-level Conv/Dense layers (in layer order), with the chain
    information (``ops_before``, ``homogeneous_before``) where the model is a chain of Conv/Dense and
    allow-listed weightless layers."""
    by_name = {s.name: s for s in param_specs}
    chain = chain_layers(model)
    if chain is not None and any(
        type(l).__name__ not in FILTER_LAYERS and (type(l).__name__ not in WEIGHTLESS_LAYERS or l.weights)
        for l in chain
    ):
        chain = None
    # Input channels of each filter layer (before any Flatten), from the chain's shapes.
    channels_of, ops_of, homog_of = {}, {}, {}
    if chain is not None:
        shape = (None, *input_shape)
        channels, pending, homogeneous = int(shape[-1]), [], True
        for layer in chain:
            cls = type(layer).__name__
            if cls in FILTER_LAYERS:
                channels_of[layer.name], ops_of[layer.name], homog_of[layer.name] = (
                    channels,
                    tuple(pending),
                    homogeneous,
                )
                act = activation_name(layer.activation)
                pending = [] if act == "linear" else [f"activation:{act}"]
                homogeneous = act in HOMOGENEOUS_ACTIVATIONS
            else:
                act = layer_activation(layer)
                pending.append(f"activation:{act}" if cls == "Activation" else cls)
                homogeneous = homogeneous and _homogeneous(layer)
            shape = tuple(layer.compute_output_shape(shape))
            if cls != "Flatten":  # flattening keeps channels as the fastest axis: remember them
                channels = int(shape[-1])
    out = []
    for layer in model.layers:
        cls = type(layer).__name__
        kernel = by_name.get(f"{layer.name}/kernel")
        if cls not in FILTER_LAYERS or kernel is None:
            continue
        cfg = layer.get_config()
        if cfg.get("data_format", "channels_last") != "channels_last" or cfg.get("groups", 1) != 1:
            continue  # filter layout only for channels-last, ungrouped kernels
        bias = by_name.get(f"{layer.name}/bias")
        kernel = dataclasses.replace(kernel, filter_axis=len(kernel.shape) - 1)
        if bias is not None:
            bias = dataclasses.replace(bias, filter_axis=0)
        n = kernel.shape[-1]
        out.append(
            LayerSpec(
                name=layer.name,
                kind=cls.lower(),
                kernel=kernel,
                bias=bias,
                num_filters=n,
                filter_size=int(np.prod(kernel.shape[:-1])) + (1 if bias is not None else 0),
                input_channels=channels_of.get(layer.name, int(kernel.shape[-2])),
                ops_before=ops_of.get(layer.name),
                homogeneous_before=homog_of.get(layer.name, False),
            )
        )
    return out, chain


def output_activation(model):
    """The last activation applied on the model's output (``"softmax"``, ``"linear"``, ...): read from
    the layer that produces the output, looking through Dropout/Identity/Flatten/Reshape; None for a
    subclassed model (no layer graph)."""
    try:
        tensor = model.outputs[0]
    except (AttributeError, TypeError, IndexError):
        return None
    while True:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer = history.operation
        cls = type(layer).__name__
        if cls in ("Dropout", "Identity", "Flatten", "Reshape"):
            tensor = layer.input
            continue
        if cls == "InputLayer":
            return "linear"
        act = layer_activation(layer)
        if act is not None:
            return act
        if hasattr(layer, "activation") and callable(layer.activation):
            return activation_name(layer.activation)
        return "linear"
