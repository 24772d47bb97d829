"""Class outputs -> probabilities, log-probabilities and entropies: the one place where this is written.

A classifier's outputs ``[..., C]`` are of one of two kinds (`KINDS`):

* ``"logits"``: unnormalised scores; the probabilities are their softmax.
* ``"probs"``: probabilities already (the network ends in a softmax, see `kind_of`). Their log, floored
  so that a probability that underflowed to 0 gives a large negative number instead of -inf, stands in
  for logits: ``log_softmax(log p) = log p`` for probabilities that sum to 1.

TensorFlow (in-graph, differentiable, in the outputs' dtype): `as_logits`, `as_log_probs`, `as_probs`,
`log_softmax`, `softmax`, `tf_entropy`, `entropy_from_log_probs`. NumPy (float64): `entropy`.
Entropies are in nats, with ``0 log 0 = 0``.

A low-level module: it imports nothing else of hyperkeras, so that every part of it (targets, ensembles,
metrics, export, the models' losses) can use it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = [
    "KINDS",
    "TINY",
    "kind_of",
    "full_precision",
    "as_logits",
    "as_log_probs",
    "as_probs",
    "log_softmax",
    "softmax",
    "entropy",
    "tf_entropy",
    "entropy_from_log_probs",
]

KINDS = ("logits", "probs")

# The smallest positive normal float32 (≈ 1.18e-38): the default floor of probabilities before their log.
TINY = float(np.finfo(np.float32).tiny)


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


def kind_of(activation: str | None) -> str:
    """The kind of outputs that come out of a last activation named `activation`: ``"probs"`` for
    ``"softmax"``, ``"logits"`` for anything else (e.g. `hyperkeras.targets.specs.output_activation`)."""
    return "probs" if activation == "softmax" else "logits"


def full_precision(outputs):
    """`outputs` in float32 if they are float16/bfloat16 (a mixed precision policy's), else unchanged: the
    probabilities, losses and sums made from them are computed in float32."""
    return tf.cast(outputs, tf.float32) if outputs.dtype in (tf.float16, tf.bfloat16) else outputs


def as_logits(outputs, kind: str):
    """Logits for a softmax cross-entropy: the outputs themselves (``"logits"``), or the log of the
    probabilities floored at `TINY` (``"probs"``)."""
    _check_kind(kind)
    if kind == "probs":
        return tf.math.log(tf.maximum(outputs, tf.cast(TINY, outputs.dtype)))
    return outputs


def as_log_probs(outputs, kind: str, floor: float = TINY):
    """Log-probabilities: ``log_softmax(outputs)`` (``"logits"``), or ``log(max(outputs, floor))``
    (``"probs"``: the probabilities are taken as they are, not renormalised)."""
    _check_kind(kind)
    if kind == "logits":
        return tf.nn.log_softmax(outputs, axis=-1)
    return tf.math.log(tf.maximum(outputs, tf.cast(floor, outputs.dtype)))


def as_probs(outputs, kind: str):
    """Probabilities: ``softmax(outputs)`` (``"logits"``), or the outputs themselves (``"probs"``)."""
    _check_kind(kind)
    return outputs if kind == "probs" else tf.nn.softmax(outputs, axis=-1)


def log_softmax(outputs, kind: str):
    """``log_softmax(as_logits(outputs, kind))``: log-probabilities that are normalised in either case (for
    ``"probs"``, the floored probabilities renormalised). What the training losses compare."""
    return tf.nn.log_softmax(as_logits(outputs, kind), axis=-1)


def softmax(outputs, kind: str):
    """``softmax(as_logits(outputs, kind))``: normalised probabilities in either case."""
    return tf.nn.softmax(as_logits(outputs, kind), axis=-1)


def entropy(probs, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) of probability vectors along `axis`, in NumPy float64; ``0 log 0 = 0``.

    Takes anything `np.asarray` accepts (e.g. eager tensors)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=axis)


def tf_entropy(probs, axis: int = -1):
    """`entropy` in-graph: ``-Σ p log p`` along `axis` (``tf.math.xlogy``: ``0 log 0 = 0``)."""
    return -tf.reduce_sum(tf.math.xlogy(probs, probs), axis=axis)


def entropy_from_log_probs(log_probs, axis: int = -1):
    """Entropy in-graph from log-probabilities: ``-Σ exp(l) · l`` along `axis` (finite for a floored
    ``l``, e.g. from `as_log_probs`)."""
    return -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=axis)
