"""Gauge fixing for the scale and logit-bias symmetries of a target network (Deutsch 2018, eqs. 7–11).

Scale symmetry: with positively homogeneous ops (ReLU, leaky ReLU, max/avg pooling, flatten, ...)
between two weighted layers, multiplying filter i of layer l (kernel slice and bias) by a > 0 and
dividing input channel i of every filter of layer l+1 by a leaves the network's outputs unchanged.
Logit-bias symmetry: adding a constant to every logit leaves the softmax unchanged.

The gauge chosen by the paper: every filter of layers 1..m−1 has ``Σ_k θ[k]² = n`` (n = number of its
weights including the bias), and the last layer's biases sum to zero.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_LOGIT_ACTIVATIONS = ("linear", "softmax")


def _check_target(target):
    from hyperkeras.targets import TargetNetwork

    if not isinstance(target, TargetNetwork):
        raise TypeError(f"target must be a hyperkeras.TargetNetwork, got {type(target).__name__}.")


def _check_homogeneous(target):
    for prev, spec in zip(target.layers[:-1], target.layers[1:]):
        if not spec.homogeneous_before:
            raise ValueError(
                f"gauge fixing needs positively homogeneous ops between layers {prev.name!r} and "
                f"{spec.name!r}, but found {list(spec.ops_before)}: a filter's scale cannot be passed "
                "through them (use ReLU / leaky ReLU / linear activations, pooling and Flatten)."
            )
        if spec.input_channels != prev.num_filters:
            raise ValueError(
                f"gauge fixing: layer {spec.name!r} reads {spec.input_channels} channels but layer "
                f"{prev.name!r} has {prev.num_filters} filters (a Reshape or similar in between?)."
            )


def _last_is_logits(target):
    last = target.layers[-1]
    act = keras.activations.serialize(target.model.get_layer(last.name).activation)
    return last.bias is not None and act in _LOGIT_ACTIVATIONS


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


def gauge_transform(target, params, eps: float = 1e-12):
    """Brings every network of `params` into the paper's gauge without changing its function (S of eq. 11).

    For l = 1..m−1 in order: each filter of layer l (weights and bias) is divided by
    ``a = sqrt(Σθ² / n)``, so that afterwards ``Σθ² = n``, and the matching input channel of every
    filter of layer l+1 is multiplied by ``a``. Finally the **mean** of the last layer's biases is
    subtracted (so they sum to zero; the original code subtracted their sum, which does not fix the
    gauge). Differentiable.

    Args:
        target: a `hyperkeras.TargetNetwork`.
        params: params dict ``{name: [K, *shape]}``.
        eps: floor of ``Σθ²/n`` (an all-zero filter stays zero instead of producing NaN).

    Returns:
        The transformed params dict (same structure).

    Raises:
        ValueError: if an op between two weighted layers is not positively homogeneous (e.g. tanh,
            Reshape), or the last layer's logit-bias symmetry does not hold (non-linear output
            activation other than softmax); the message names the layers.
    """
    _check_target(target)
    _check_homogeneous(target)
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
    if last.bias is not None:
        if not _last_is_logits(target):
            raise ValueError(
                f"gauge fixing: the last layer {last.name!r} must output logits (linear or softmax "
                "activation) for the logit-bias symmetry to hold."
            )
        b = out[last.bias.name]
        out[last.bias.name] = b - tf.reduce_mean(b, axis=1, keepdims=True)
    return out


def gauge_penalty(target, params):
    """The gauge-fixing penalty G(θ) of eq. 8, one value per network: ``[K]``.

    ``G = Σ_{l<m, i} (Σ_k θ_{l,i}[k]² − n_{l,i})² + (Σ_i θ_{m,i}[bias])²``.

    Raises:
        ValueError: as `gauge_transform`, when the symmetries the penalty breaks do not exist.
    """
    _check_target(target)
    _check_homogeneous(target)
    filters = target.to_filters(params)
    specs = target.layers
    total = tf.zeros([tf.shape(filters[specs[0].name])[0]], filters[specs[0].name].dtype)
    for spec in specs[:-1]:
        f = filters[spec.name]
        total = total + tf.reduce_sum(tf.square(tf.reduce_sum(tf.square(f), axis=2) - spec.filter_size), axis=1)
    last = specs[-1]
    if last.bias is not None:
        if not _last_is_logits(target):
            raise ValueError(
                f"gauge penalty: the last layer {last.name!r} must output logits (linear or softmax "
                "activation) for the logit-bias symmetry to hold."
            )
        total = total + tf.square(tf.reduce_sum(params[last.bias.name], axis=1))
    return total
