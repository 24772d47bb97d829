"""Post-hoc temperature scaling (Guo et al. 2017): one scalar T > 0 that makes softmax(z / T) calibrated.

Fit T on held-out data (`fit_temperature`), then divide the logits by it at test time
(`apply_temperature`). T > 1 softens an over-confident model, T < 1 sharpens an under-confident one;
the arg-max, hence the accuracy, never changes.

For a generated ensemble, the input is the fused prediction: the log of the mean of the K networks'
probabilities, ``log p̄ = logsumexp_k(log p_k) − log K`` (e.g. ``tf.reduce_logsumexp(log_probs, axis=0)
− log K`` of ``[K, N, C]`` log-probabilities), not the mean of their logits: the ensemble predicts with
p̄, and softmax(log p̄ / T) is then the tempered p̄ (p̄^(1/T), renormalised). Log-probabilities and logits
give the same fit (softmax ignores a per-row shift).

Reference:
    Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks" (ICML 2017).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

__all__ = ["apply_temperature", "fit_temperature", "temperature_nll"]

BOUNDS = (1e-3, 1e3)


def _check(z, labels):
    """z as float64 ``[N, C]`` and labels as int64 ``[N]``, or a ValueError naming the problem."""
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 2:
        raise ValueError(f"logits must be [N, C] with N >= 1 and C >= 2 classes, got shape {z.shape}.")
    if not np.all(np.isfinite(z)):
        bad = int(np.sum(~np.isfinite(z)))
        raise ValueError(
            f"logits has {bad} non-finite values (NaN or ±inf; log-probabilities of 0 are −inf): "
            "floor the probabilities (e.g. at 1e-12) before taking logs."
        )
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"labels must be [N] class indices, got shape {y.shape}.")
    if len(y) != len(z):
        raise ValueError(f"labels has {len(y)} entries but logits has {len(z)} rows (N must match).")
    if y.size and not (np.issubdtype(y.dtype, np.integer) or np.all(np.asarray(y, np.float64) % 1 == 0)):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype} with fractional values.")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must be in [0, {z.shape[1]}) for {z.shape[1]} classes, got [{y.min()}, {y.max()}].")
    return z, y


def _nll_and_derivatives(z, y, u):
    """NLL(u) = mean_n [logsumexp(u z_n) − u z_{n,y_n}] at u = 1/T, and its first two derivatives in u:
    mean(E_p[z] − z_y) and mean(Var_p[z]) >= 0 (the NLL is convex in u)."""
    a = u * z
    a_max = a.max(axis=1, keepdims=True)
    e = np.exp(a - a_max)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    lse = (a_max + np.log(s))[:, 0]
    zy = z[np.arange(len(z)), y]
    mean_z = np.sum(p * z, axis=1)
    var_z = np.maximum(np.sum(p * z * z, axis=1) - mean_z**2, 0.0)
    return float(np.mean(lse - u * zy)), float(np.mean(mean_z - zy)), float(np.mean(var_z))


def temperature_nll(z, labels, temperature=1.0) -> float:
    """Mean negative log-likelihood (nats) of softmax(z / T) at the labels, in float64.

    Args:
        z: logits or log-probabilities ``[N, C]``.
        labels: class indices ``[N]``.
        temperature: T > 0.

    Returns:
        The mean NLL.
    """
    z, y = _check(z, labels)
    t = _check_temperature(temperature)
    return _nll_and_derivatives(z, y, 1.0 / t)[0]


def _check_temperature(temperature):
    if isinstance(temperature, bool) or not np.ndim(temperature) == 0:
        raise ValueError(f"temperature must be a positive scalar, got {temperature!r}.")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
    return t


def fit_temperature(z, labels, bounds=BOUNDS, tol=1e-12, max_steps=300) -> float:
    """The temperature T minimising the mean NLL of softmax(z / T) at the labels.

    The fit is over s = log T in float64. The NLL is convex in u = 1/T (its second derivative is the mean
    variance of z under softmax(u z)), so dNLL/ds changes sign once: a safeguarded Newton iteration on
    dNLL/ds = 0 (Newton steps in s, falling back to bisection of the bracket when a step leaves it)
    converges in a few tens of steps. When the NLL still decreases at a bound (e.g. every example right
    and confident: T → 0), the bound is returned.

    Args:
        z: logits, or log-probabilities, ``[N, C]`` (for an ensemble: the log of the mean probabilities,
            see the module's docstring). NumPy or tensors; finite.
        labels: class indices ``[N]`` in [0, C).
        bounds: ``(T_min, T_max)``, 0 < T_min < T_max.
        tol: stop when the step in log T is below this.
        max_steps: at most this many iterations (each one pass over z).

    Returns:
        T as a Python float.

    Raises:
        ValueError: for z not [N, C], non-finite z, labels not [N] integers in [0, C), or bad bounds.
    """
    z, y = _check(z, labels)
    t_lo, t_hi = (float(b) for b in bounds)
    if not (0 < t_lo < t_hi and math.isfinite(t_hi)):
        raise ValueError(f"bounds must be (T_min, T_max) with 0 < T_min < T_max finite, got {bounds!r}.")

    def slope(s):  # dNLL/ds and d²NLL/ds² at s = log T (u = e^−s): dNLL/ds = −u g, d² = u g + u² h
        u = math.exp(-s)
        _, g, h = _nll_and_derivatives(z, y, u)
        return -u * g, u * g + u * u * h

    lo, hi = math.log(t_lo), math.log(t_hi)
    d_lo, _ = slope(lo)
    if d_lo >= 0:  # increasing from the lower bound on (unimodal): the minimum is there
        return t_lo
    d_hi, _ = slope(hi)
    if d_hi <= 0:
        return t_hi
    s = 0.0 if lo < 0 < hi else 0.5 * (lo + hi)
    for _ in range(int(max_steps)):
        d, dd = slope(s)
        if d == 0:
            break
        if d > 0:
            hi = s
        else:
            lo = s
        step = -d / dd if dd > 0 else None
        new = s + step if step is not None else None
        if new is None or not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - s) < tol or hi - lo < tol:
            s = new
            break
        s = new
    return float(math.exp(s))


def apply_temperature(z, temperature):
    """Tempered logits ``z / T``: softmax of them is the calibrated distribution.

    Args:
        z: logits or log-probabilities ``[..., C]``: NumPy (returns NumPy) or a tensor (returns a tensor
            of its dtype; graph-safe).
        temperature: T > 0 (e.g. from `fit_temperature`).

    Returns:
        ``z / T``.
    """
    t = _check_temperature(temperature)
    if isinstance(z, (tf.Tensor, tf.Variable)):
        return z / tf.cast(t, z.dtype)
    z = np.asarray(z)
    dtype = z.dtype if np.issubdtype(z.dtype, np.floating) else np.float64
    return (z / t).astype(dtype)
