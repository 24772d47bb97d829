"""Initialisation of generators whose output is the target's flat parameter vector: hyperfan-in / hyperfan-out
(Chang, Flokas & Lipson, ICLR 2020) and the residual form θ = θ₀ + Δ.

A flat generator (`MLPGenerator`, `ChunkedGenerator`) emits ``θ = offset + scale ⊙ u``, where u is its output
layer's output, started at unit variance per entry (its kernel's variance is set from the second moment of
the layer's inputs, measured at build time), and ``scale`` is one fixed number per target tensor:

- ``init="hyperfan_in"``: a Conv/Dense kernel gets the spread ``sqrt(gain / fan_in)``, ``"hyperfan_out"``:
  ``sqrt(gain / fan_out)`` (Keras's fan convention), with ``gain`` the ``scale`` of the layer's own
  variance-scaling initializer (2 for He, 1 for Glorot and LeCun; 1 for any other). So at initialisation the
  generated kernels have the variance of the target's initializer in fan-in (fan-out) form: exactly He
  normal/uniform for He-initialised layers, Glorot's ``2 / (fan_in + fan_out)`` where fan_in = fan_out.
  Chang et al. choose the variance of the hypernetwork's output-layer weights for that; here the same
  variance is reached by a fixed per-tensor factor on a unit-variance output (equal at initialisation;
  in training the factor also scales each tensor's step, as `LayerGenerator`'s He scale does).
  A bias gets its layer's kernel scale and starts where the target's initializer puts it when that is
  zeros (`MLPGenerator` zeroes those output columns; `ChunkedGenerator`, whose columns are shared by
  tensors, cannot). Every other tensor (BatchNorm γ/β, embeddings, RNN kernels) is offset by the wrapped
  model's value, as in the other generators, and spread at that value's own standard deviation (the spread
  of its initializer: an embedding's uniform ±0.05, an orthogonal recurrent kernel's 1/√n), or at
  `plain_scale` where it starts constant (γ = 1, β = 0, biases).
- ``init="default"``: scale 1 and Keras's default output layer (no variance control).
- ``residual=True``: every tensor is offset by the wrapped model's current weights θ₀ (initial or
  pretrained; a non-trainable weight of the generator, saved with it, set by `from_target`), and the output
  layer starts at zero, so the first generated networks are exactly the wrapped model (Δ = 0); the scales
  of `init` still set each tensor's step size.
"""

from __future__ import annotations

import keras
import numpy as np

from hyperkeras.generators.plain import _fans, plain_initial_values, plain_scale

INITS = ("hyperfan_in", "hyperfan_out", "default")

__all__ = ["INITS", "calibrated_output", "hyperfan_scales", "flat_offsets", "zero_start_names"]


def check_init(init) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    return init


def _layer_initializer(target, spec, role):
    try:
        layer = target.model.get_layer(spec.layer)
    except ValueError:
        return None
    return getattr(layer, f"{role}_initializer", None)


def _gain(initializer) -> float:
    """The ``scale`` of a variance-scaling initializer (He 2, Glorot/LeCun 1), 1 for any other."""
    if isinstance(initializer, keras.initializers.VarianceScaling):
        return float(initializer.scale)
    return 1.0


def hyperfan_scales(target, init: str) -> dict:
    """``{param name: scale}``: the fixed factor of each target tensor in ``θ = offset + scale ⊙ u`` (see the
    module docstring); all 1 for ``init="default"``."""
    check_init(init)
    if init == "default":
        return {s.name: 1.0 for s in target.param_specs}
    kernel_scale = {}
    for spec in target.param_specs:
        if spec.filter_axis is not None and spec.role == "kernel":
            fan_in, fan_out = _fans(spec.shape)
            n = fan_in if init == "hyperfan_in" else fan_out
            kernel_scale[spec.layer] = float(np.sqrt(_gain(_layer_initializer(target, spec, "kernel")) / n))
    initial = plain_initial_values(target)
    scales = {}
    for spec in target.param_specs:
        if spec.filter_axis is not None and spec.layer in kernel_scale:
            scales[spec.name] = kernel_scale[spec.layer]
        elif spec.name in initial and float(np.std(initial[spec.name])) > 1e-6:
            scales[spec.name] = float(np.std(initial[spec.name]))  # its own initializer's spread
        else:
            scales[spec.name] = plain_scale(spec.shape, spec.role)  # a constant start (γ = 1, β = 0)
    return scales


def zero_start_names(target) -> set:
    """Names of the Conv/Dense biases whose layer initialises them to zeros (Keras's default)."""
    names = set()
    for spec in target.param_specs:
        if spec.filter_axis is not None and spec.role == "bias":
            if isinstance(_layer_initializer(target, spec, "bias"), keras.initializers.Zeros):
                names.add(spec.name)
    return names


def flat_offsets(target, residual: bool) -> np.ndarray:
    """``[num_params]`` float32: θ₀, the wrapped model's current weights, on every tensor (``residual``) or
    on the tensors outside the Conv/Dense layout only (`plain_initial_values`), zeros elsewhere."""
    if residual:
        return target.flatten(target.get_params()).numpy()[0].astype("float32")
    plain = plain_initial_values(target)
    parts = [
        np.asarray(plain[s.name], "float32").reshape(-1) if s.name in plain else np.zeros(s.size, "float32")
        for s in target.param_specs
    ]
    return np.concatenate(parts) if parts else np.zeros(0, "float32")


def calibrated_output(h, width: int, zero_columns=None):
    """Initial ``(kernel [d, width], bias [width])`` of a generator's linear output layer whose input on typical
    inputs is ``h [m, d]``: each output has mean 0 and unit variance over those inputs (kernel variance
    ``1 / (d · mean_i Var(h_i))``, bias ``-mean(h) @ kernel``), so the generated networks are centred on the
    offset (θ₀ for the tensors that have one, zero for kernels) and spread at the hyperfan scale. When the
    inputs barely vary (one task, no noise) the second moment replaces the variance and the bias stays 0.
    Columns in `zero_columns` start at zero (kernel and bias)."""
    h = np.asarray(h, np.float64)
    d = h.shape[1]
    variance = float(np.mean(np.var(h, axis=0)))
    second_moment = float(np.mean(np.square(h)))
    centred = variance > 1e-6 * max(second_moment, 1e-30)
    spread = variance if centred else max(second_moment, 1e-12)
    kernel = keras.initializers.VarianceScaling(1.0 / spread, "fan_in", "truncated_normal")((d, width))
    kernel = np.array(kernel, dtype="float32")
    bias = (-(np.mean(h, axis=0) @ kernel)).astype("float32") if centred else np.zeros(width, "float32")
    if zero_columns is not None and len(zero_columns):
        kernel[:, zero_columns] = 0.0
        bias[zero_columns] = 0.0
    return kernel, bias
