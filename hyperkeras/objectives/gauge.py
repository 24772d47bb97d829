"""Gauge fixing for the scale and logit-bias symmetries of a target network (Deutsch 2018, eqs. 7–11).

Scale symmetry: with positively homogeneous ops (ReLU, leaky ReLU, max/avg pooling, flatten, ...)
between two weighted layers, multiplying filter i of layer l (kernel slice and bias) by a > 0 and
dividing input channel i of every filter of layer l+1 by a leaves the network's outputs unchanged.
Logit-bias symmetry: adding a constant to every logit leaves the softmax unchanged.

The gauge chosen by the paper: every filter of layers 1..m−1 has ``Σ_k θ[k]² = n`` (n = number of its
weights including the bias), and the last layer's biases sum to zero.

The two symmetries are independent (Deutsch §2.2 lists them separately): the scale symmetry needs only
piecewise-linear (positively homogeneous) ops between the weighted layers, and leaves the last layer's
output exactly unchanged, whatever follows it; the logit-bias symmetry needs the output to be logits fed
into a softmax. So the gauge depends on the task (``task=`` of every function here):

* ``"classification"``: both conditions, as the paper; the output must be logits (the last Conv/Dense
  layer's linear output, followed by nothing or a softmax) — any other output is refused, naming the
  layer.
* ``"regression"``: the scale conditions only. The output is a value, not logits: adding a constant to it
  changes the prediction, so the last layer's biases are left alone (subtracting their mean would return
  networks other than those trained).

`check_gauge` decides where these symmetries provably hold (single chains of Conv/Dense and allow-listed
weightless layers, softmax/linear logits for classification) and names the layer that breaks them
everywhere else; both `gauge_transform` and `gauge_penalty` call it.
"""

from __future__ import annotations

import tensorflow as tf

from hyperkeras.targets.specs import (
    FILTER_LAYERS,
    HOMOGENEOUS_ACTIVATIONS,
    WEIGHTLESS_LAYERS,
    activation_name,
    chain_layers,
    layer_activation,
)

# What may follow the logits (the last Conv/Dense layer's linear output) for adding a constant to every
# logit to leave the output unchanged: nothing, or a softmax over the last axis.
_LOGIT_ACTIVATIONS = ("linear", "softmax")

TASKS = ("classification", "regression")


def _check_target(target):
    from hyperkeras.targets import TargetNetwork

    if not isinstance(target, TargetNetwork):
        raise TypeError(f"target must be a hyperkeras.TargetNetwork, got {type(target).__name__}.")


def _describe(layer) -> str:
    """``'name' (Class)``, with the activation or ReLU arguments where they decide the symmetry."""
    cls = type(layer).__name__
    if cls == "ReLU":
        args = f"max_value={layer.max_value}, threshold={float(layer.threshold)}, negative_slope={float(layer.negative_slope)}"
        return f"{layer.name!r} (ReLU({args}))"
    if cls == "Activation":
        return f"{layer.name!r} (Activation({activation_name(layer.activation)!r}))"
    if hasattr(layer, "activation") and cls in FILTER_LAYERS:
        return f"{layer.name!r} ({cls} with activation {activation_name(layer.activation)!r})"
    return f"{layer.name!r} ({cls})"


def _homogeneous(layer) -> bool:
    """A weightless allow-listed layer (or a Conv/Dense layer's activation) passes a positive per-channel
    scale through: f(a·x) = a·f(x) for a > 0."""
    cls = type(layer).__name__
    if cls in FILTER_LAYERS:
        return activation_name(layer.activation) in HOMOGENEOUS_ACTIVATIONS
    flag = WEIGHTLESS_LAYERS.get(cls)
    if flag is None:
        return layer_activation(layer) in HOMOGENEOUS_ACTIVATIONS
    return bool(flag)


def _graph_culprit(model):
    """The first layer that keeps `model` from being a single chain (for the error message), or None."""
    try:
        prev = model.inputs[0]
    except (AttributeError, TypeError, IndexError):
        return None
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        try:
            inp, out = layer.input, layer.output
        except (AttributeError, ValueError):  # used more than once (shared layer)
            return layer
        if isinstance(inp, (list, tuple, dict)) or inp is not prev:
            return layer
        prev = out
    return None


def check_gauge(target, task: str = "classification") -> bool:
    """Raises ValueError (naming the layer) unless gauge fixing provably keeps `target`'s function.

    Gauge fixing (`gauge_transform`, `gauge_penalty`) relies on symmetries that hold only for some
    architectures; it accepts a target only when it can prove them from the model's structure:

    - the model is a single chain of Conv/Dense layers and allow-listed weightless layers (a graph with
      residual adds or branches, or any other layer, is refused);
    - every trainable weight belongs to a Conv/Dense layer's kernel or bias (``target.plain_specs``
      empty: BatchNormalization, LayerNormalization, embeddings, RNN or attention weights are refused);
    - every op between two Conv/Dense layers is positively homogeneous per channel (ReLU, leaky ReLU,
      linear, pooling, Flatten, Dropout); ``ReLU(max_value=...)``, ``ReLU(threshold>0)``, tanh, ELU,
      Reshape ... are refused;
    - for ``task="classification"``, if the last Conv/Dense layer has a bias: nothing but a softmax
      follows its linear output (a sigmoid, ReLU or any other op after the logits is refused: the
      logit-bias symmetry needs logits). For ``task="regression"`` the output is not constrained (the
      scale gauge keeps it exactly) and the logit-bias symmetry is not used.

    Args:
        target: a `hyperkeras.TargetNetwork`.
        task: ``"classification"`` (the output is logits: both symmetries) or ``"regression"`` (scale
            symmetry only).

    Returns:
        True if the gauge includes the logit-bias condition (classification and a last-layer bias).

    Raises:
        TypeError: `target` is not a TargetNetwork.
        ValueError: an unknown `task`, or a symmetry cannot be proved; the message names the layer.
    """
    _check_target(target)
    if task not in TASKS:
        raise ValueError(f"gauge fixing: task must be one of {TASKS}, got {task!r}.")
    model = target.model
    if target.plain_specs:
        owners = {}
        for s in target.plain_specs:
            owners.setdefault(s.layer, []).append(s.name)
        layer, names = next(iter(owners.items()))
        try:
            cls = type(model.get_layer(layer)).__name__
        except ValueError:
            cls = "layer"
        more = f" (so do layers {list(owners)[1:]})" if len(owners) > 1 else ""
        raise ValueError(
            f"gauge fixing cannot prove the symmetries of model {model.name!r}: layer {layer!r} ({cls}) owns "
            f"trainable weights {names} outside the Conv/Dense filter layout{more}; only chains of Conv/Dense "
            "and weightless layers are supported. Use gauge='none'."
        )
    if not target.layers:
        raise ValueError(
            f"gauge fixing: model {model.name!r} has no Conv/Dense layer with a filter layout. Use gauge='none'."
        )
    if any(spec.ops_before is None for spec in target.layers):
        chain = chain_layers(model)
        if chain is None:
            culprit = _graph_culprit(model)
            where = (
                f"layer {_describe(culprit)} makes it a graph" if culprit is not None else "it has no graph of layers"
            )
            raise ValueError(
                f"gauge fixing needs a model that is a single chain of layers, but model {model.name!r} is not: "
                f"{where} (branches, residual adds, shared layers). Use gauge='none'."
            )
        for layer in chain:
            cls = type(layer).__name__
            if cls not in FILTER_LAYERS and (cls not in WEIGHTLESS_LAYERS or layer.weights):
                raise ValueError(
                    f"gauge fixing cannot prove the symmetries of model {model.name!r}: layer {_describe(layer)} is "
                    "not one of the weightless layers it knows (see hyperkeras.targets.specs.WEIGHTLESS_LAYERS). "
                    "Use gauge='none'."
                )
        raise ValueError(f"gauge fixing: model {model.name!r} is not a chain it supports. Use gauge='none'.")
    chain = chain_layers(model)
    position = {layer.name: i for i, layer in enumerate(chain)}
    for prev, spec in zip(target.layers[:-1], target.layers[1:]):
        if not spec.homogeneous_before:
            between = chain[position[prev.name] : position[spec.name]]
            culprits = [_describe(layer) for layer in between if not _homogeneous(layer)]
            raise ValueError(
                f"gauge fixing needs positively homogeneous ops between layers {prev.name!r} and "
                f"{spec.name!r}, but found {list(spec.ops_before)}: a filter's scale cannot be passed "
                f"through {', '.join(culprits) or 'them'} (use ReLU / leaky ReLU / linear activations, pooling "
                "and Flatten; ReLU(max_value=...) and ReLU(threshold>0) are not scale-symmetric)."
            )
        if spec.input_channels != prev.num_filters:
            raise ValueError(
                f"gauge fixing: layer {spec.name!r} reads {spec.input_channels} channels but layer "
                f"{prev.name!r} has {prev.num_filters} filters (a Reshape or similar in between?)."
            )
    last = target.layers[-1]
    if task != "classification" or last.bias is None:
        return False
    after = chain[position[last.name] :]
    for layer in after:
        cls = type(layer).__name__
        if cls in FILTER_LAYERS:
            ok = activation_name(layer.activation) in _LOGIT_ACTIVATIONS
        elif cls == "Softmax":
            ok = list(layer.axis) == [-1] if isinstance(layer.axis, (list, tuple)) else layer.axis == -1
        else:
            ok = cls in ("Activation", "Identity") and layer_activation(layer) in _LOGIT_ACTIVATIONS
        if not ok:
            raise ValueError(
                f"gauge fixing (task='classification'): the last layer {last.name!r} must output logits, "
                f"followed by nothing but a softmax, for the logit-bias symmetry to hold; found layer "
                f"{_describe(layer)}, so the output is not logits. Use gauge='none'."
            )
    return True


def _scale_inputs(filters, spec, scale):
    """Multiplies input channel c of every filter of layer `spec` by ``scale[:, c]`` (bias untouched)."""
    k = tf.shape(filters)[0]
    nk = spec.filter_size - (spec.bias is not None)
    kern = tf.reshape(filters[:, :, :nk], [k, spec.num_filters, nk // spec.input_channels, spec.input_channels])
    kern = kern * scale[:, None, None, :]
    kern = tf.reshape(kern, [k, spec.num_filters, nk])
    if spec.bias is None:
        return kern
    return tf.concat([kern, filters[:, :, nk:]], axis=2)


def gauge_transform(target, params, eps: float = 1e-12, task: str = "classification"):
    """Brings every network of `params` into the paper's gauge without changing its function (S of eq. 11).

    For l = 1..m−1 in order: each filter of layer l (weights and bias) is divided by
    ``a = sqrt(Σθ² / n)``, so that afterwards ``Σθ² = n``, and the matching input channel of every
    filter of layer l+1 is multiplied by ``a``. For classification, finally the **mean** of the last
    layer's biases is subtracted (so they sum to zero; the original code subtracted their sum, which does
    not fix the gauge): the logits change by a constant, the probabilities not at all. For regression
    the last layer's biases are kept, and the outputs are unchanged. Differentiable.

    Args:
        target: a `hyperkeras.TargetNetwork`.
        params: params dict ``{name: [K, *shape]}``.
        eps: floor of ``Σθ²/n`` (an all-zero filter stays zero instead of producing NaN).
        task: ``"classification"`` (scale and logit-bias gauge) or ``"regression"`` (scale gauge only:
            the output is not logits); see the module docstring.

    Returns:
        The transformed params dict (same structure).

    Raises:
        ValueError: an unknown `task`, or `check_gauge` cannot prove the symmetries (not a single chain,
            trainable weights outside Conv/Dense layers, an op between two weighted layers that is not
            positively homogeneous, for classification anything but a softmax after the logits); the
            message names the layer.
    """
    shift = check_gauge(target, task)
    filters = dict(target.to_filters(params))
    specs = target.layers
    for i, spec in enumerate(specs[:-1]):
        f = filters[spec.name]
        scale = tf.sqrt(tf.maximum(tf.reduce_mean(tf.square(f), axis=2), eps))  # [K, n]
        filters[spec.name] = f / scale[:, :, None]
        nxt = specs[i + 1]
        filters[nxt.name] = _scale_inputs(filters[nxt.name], nxt, scale)
    out = target.from_filters(filters)
    last = specs[-1]
    if shift:
        b = out[last.bias.name]
        out[last.bias.name] = b - tf.reduce_mean(b, axis=1, keepdims=True)
    return out


def gauge_penalty(target, params, task: str = "classification"):
    """The gauge-fixing penalty G(θ) of eq. 8, one value per network: ``[K]``.

    ``G = Σ_{l<m, i} (Σ_k θ_{l,i}[k]² − n_{l,i})² + (Σ_i θ_{m,i}[bias])²``; for ``task="regression"``
    without the last term (the output bias is a free parameter there, not a gauge).

    Args:
        target: a `hyperkeras.TargetNetwork`.
        params: params dict ``{name: [K, *shape]}``.
        task: ``"classification"`` or ``"regression"``, as in `gauge_transform`.

    Raises:
        ValueError: as `gauge_transform`, when the symmetries the penalty breaks do not exist.
    """
    shift = check_gauge(target, task)
    filters = target.to_filters(params)
    specs = target.layers
    total = tf.zeros([tf.shape(filters[specs[0].name])[0]], filters[specs[0].name].dtype)
    for spec in specs[:-1]:
        f = filters[spec.name]
        total = total + tf.reduce_sum(tf.square(tf.reduce_sum(tf.square(f), axis=2) - spec.filter_size), axis=1)
    last = specs[-1]
    if shift:
        total = total + tf.square(tf.reduce_sum(params[last.bias.name], axis=1))
    return total
