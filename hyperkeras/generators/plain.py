"""Plain tensors: the weights a generator makes that have no Conv/Dense filter layout (BatchNorm/LayerNorm
γ and β, embeddings, RNN and attention kernels, ...). Every generator emits such a tensor as
``plain_initial_values(target)[name] + plain_scale(shape, role) · output``: around the wrapped model's
own value, at the spread Keras would initialise it with. Shared by the Deutsch and HyperGAN generators."""

from __future__ import annotations

import numpy as np

__all__ = ["plain_scale", "plain_initial_values"]


def _fans(shape):
    """``(fan_in, fan_out)`` of a weight tensor, by the convention of Keras's variance-scaling initialisers."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


# Roles of per-unit vectors (whatever their rank, e.g. a GRU's [2, 3·units] bias): one value per unit.
_VECTOR_ROLES = ("bias", "beta", "gamma")


def plain_scale(shape, role=None) -> float:
    """Spread of a generated weight tensor that has no Conv/Dense filter layout (a "plain" tensor:
    BatchNorm/LayerNorm γ and β, embeddings, RNN and attention kernels, ...).

    The standard deviation Keras's default initialiser (Glorot) would give a tensor of that shape,
    ``sqrt(2 / (fan_in + fan_out))`` with Keras's fan convention, where a per-unit vector (role
    ``"bias"``, ``"beta"`` or ``"gamma"``, or any rank-0/1 tensor) of n values counts as n units in
    and out: ``1 / sqrt(n)``. Generators emit ``offset + plain_scale · u`` with u of about unit
    variance at initialisation, so every network varies around the offset at the scale Keras would
    initialise that tensor with, whatever its size.

    Args:
        shape: shape of one network's tensor.
        role: the variable's own name (`ParamSpec.role`), e.g. ``"gamma"``.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) <= 1 or role in _VECTOR_ROLES:
        return float(1.0 / np.sqrt(max(int(np.prod(shape)), 1)))
    fan_in, fan_out = _fans(shape)
    return float(np.sqrt(2.0 / (fan_in + fan_out)))


def plain_initial_values(target) -> dict:
    """``{name: array}``: the wrapped model's current value of every tensor in ``target.plain_specs``
    (for a freshly built model, its initial value: BatchNorm γ = 1, β = 0, Keras's random embeddings,
    orthogonal recurrent kernels, an LSTM's unit forget bias, ...). Generators offset their plain
    outputs by these values."""
    if not target.plain_specs:
        return {}
    params = target.get_params()
    return {s.name: np.asarray(params[s.name][0], dtype="float32") for s in target.plain_specs}
