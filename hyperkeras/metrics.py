"""Uncertainty and ensemble metrics: accuracy, NLL, Brier score, ECE, OOD detection, weight diversity.

All functions take NumPy arrays (or anything `np.asarray` accepts, e.g. eager tensors) and return
Python floats or dicts of floats, so results go straight into ``metrics.json``.

Conventions:
    * ``probs`` are predictive probabilities ``[B, C]`` (rows sum to 1), e.g.
      `hyperkeras.ensembles.EnsemblePrediction.mean_probs`; ``labels`` are integer classes ``[B]`` in
      ``[0, C)``. Every metric that takes labels (`accuracy`, `negative_log_likelihood`, `brier_score`,
      `calibration_bins`, `expected_calibration_error`, `classification_summary`) checks them the same
      way and raises ValueError for a wrong shape, a non-integer value or a class out of range.
    * OOD scores: higher = more anomalous; the out-of-distribution set is the positive class.

Example:

```python
from hyperkeras import ensembles, metrics

pred = ensembles.predict(hypergan, x_test, n=100, seed=1)
metrics.accuracy(pred.mean_probs, y_test)
metrics.negative_log_likelihood(pred.mean_probs, y_test)
metrics.expected_calibration_error(pred.mean_probs, y_test, num_bins=15)
out = ensembles.predict(hypergan, x_ood, n=100, seed=1)
metrics.ood_scores(pred.predictive_entropy, out.predictive_entropy)   # {"auroc", "auprc", "fpr_at_95_tpr"}
metrics.weight_norm_statistics(hypergan.target, hypergan.sample(100, seed=0))   # Table 1
```

Reference:
    Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017) for ECE; Ratzlaff & Fuxin,
    "HyperGAN" (2019), Table 1 for the 2-norm diversity statistics.
"""

from __future__ import annotations

import numpy as np

from hyperkeras.probabilities import entropy  # metrics.entropy: the one definition, with the other entropies

__all__ = [
    "accuracy",
    "negative_log_likelihood",
    "brier_score",
    "calibration_bins",
    "expected_calibration_error",
    "entropy",
    "ood_scores",
    "UNCERTAINTY_SCORES",
    "uncertainty_scores",
    "weight_norms",
    "weight_norm_statistics",
    "classification_summary",
    "disagreement",
    "pairwise_kl",
]


# ---------------------------------------------------------------------- input checking
def _labels(labels, num_examples, num_classes, fn):
    """The one check of class labels for every metric that takes them: integer classes ``[B]``
    (integer-valued floats accepted) in ``[0, num_classes)`` (``num_classes`` None: only ``>= 0``).

    Returns:
        int64 labels ``[B]``.

    Raises:
        ValueError: naming `fn`, for a wrong shape, non-integer values or a class out of range.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_examples:
        raise ValueError(f"{fn}: labels must have shape [B] = [{num_examples}], got {labels.shape}.")
    if labels.dtype.kind not in "biu":  # bool, int, uint
        if labels.dtype.kind != "f" or not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"{fn}: labels must be integer class indices, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    high = np.inf if num_classes is None else num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= high):
        where = "[0, inf)" if num_classes is None else f"[0, {num_classes}) (the number of classes in probs)"
        raise ValueError(f"{fn}: labels must lie in {where}; got range [{labels.min()}, {labels.max()}].")
    return labels


def _probs_labels(probs, labels, fn):
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"{fn}: probs must have shape [B, C], got {probs.shape}.")
    labels = _labels(labels, probs.shape[0], probs.shape[1], fn)
    if probs.size and (probs.min() < -1e-6 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)):
        raise ValueError(
            f"{fn}: probs must be probabilities (non-negative rows summing to 1); did you pass logits? "
            "Apply a softmax first."
        )
    return probs, labels


# ---------------------------------------------------------------------- classification
def accuracy(probs_or_predictions, labels) -> float:
    """Fraction of correct predictions.

    Args:
        probs_or_predictions: probabilities/logits ``[B, C]`` (argmax is taken) or predicted classes ``[B]``.
        labels: integer classes ``[B]``, in ``[0, C)`` when probabilities/logits are given.

    Raises:
        ValueError: wrong shapes, or labels that are not integer classes (or, with ``[B, C]``, not in
            ``[0, C)``): the same check as every metric that takes labels.
    """
    p = np.asarray(probs_or_predictions)
    if p.ndim not in (1, 2):
        raise ValueError(
            f"accuracy: expected predictions [B] or probs [B, C] and labels [B]; got {np.shape(probs_or_predictions)} "
            f"and {np.shape(labels)}."
        )
    labels = _labels(labels, p.shape[0], p.shape[1] if p.ndim == 2 else None, "accuracy")
    if p.ndim == 2:
        p = p.argmax(axis=1)
    return float(np.mean(p == labels)) if p.size else float("nan")


def negative_log_likelihood(probs, labels, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood ``-mean_i log probs[i, labels[i]]`` (natural log, probs clipped at `eps`)."""
    probs, labels = _probs_labels(probs, labels, "negative_log_likelihood")
    p = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p, eps))))


def brier_score(probs, labels) -> float:
    """Mean over examples of ``sum_c (probs[i, c] - onehot(labels[i])_c)^2`` (0 = perfect, 2 = worst)."""
    probs, labels = _probs_labels(probs, labels, "brier_score")
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_bins(probs, labels, num_bins: int = 15) -> dict:
    """Reliability-diagram data with `num_bins` equal-width confidence bins on [0, 1].

    Bin b holds the examples whose confidence (max probability) lies in ``(b/M, (b+1)/M]`` (bin 0 also
    takes confidence 0).

    Returns:
        dict of arrays ``[num_bins]``: ``count``, ``accuracy`` and ``confidence`` (mean per bin; NaN for
        empty bins), and ``edges`` ``[num_bins + 1]``.
    """
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
    num_bins = int(num_bins)
    probs, labels = _probs_labels(probs, labels, "calibration_bins")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # edges[idx] < conf <= edges[idx + 1]
    count = np.bincount(idx, minlength=num_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=num_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=num_bins) / count
    return {"count": count, "accuracy": acc, "confidence": mean_conf, "edges": edges}


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
    """Expected calibration error with `num_bins` equal-width bins (Guo et al., 2017).

    ``ECE = sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|`` over the bins of `calibration_bins`.
    NumPy (it also returns the bins for reliability diagrams); equal to
    `tfp.stats.expected_calibration_error` (tests/test_tfp_references.py).
    """
    probs, labels = _probs_labels(probs, labels, "expected_calibration_error")
    bins = calibration_bins(probs, labels, num_bins)
    n = bins["count"].sum()
    if n == 0:
        return float("nan")
    full = bins["count"] > 0
    gap = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float(np.sum(bins["count"][full] / n * gap))


def classification_summary(probs, labels, num_bins: int = 15) -> dict:
    """``{"accuracy", "nll", "brier", "ece"}`` of predictive probabilities ``[B, C]``."""
    probs, labels = _probs_labels(probs, labels, "classification_summary")
    return {
        "accuracy": accuracy(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels, num_bins),
    }


# ---------------------------------------------------------------------- out-of-distribution detection
def ood_scores(in_scores, out_scores) -> dict:
    """Detection quality of an anomaly score (e.g. predictive entropy).

    Args:
        in_scores: scores ``[n_in]`` of in-distribution examples (negative class).
        out_scores: scores ``[n_out]`` of out-of-distribution examples (positive class).
            Higher score = more anomalous.

    Returns:
        ``{"auroc", "auprc", "fpr_at_95_tpr"}``: area under the ROC curve, average precision (area under
        the precision-recall curve with OOD as positives), and the false-positive rate (fraction of
        in-distribution examples flagged) at the smallest threshold that flags ≥ 95% of the OOD examples.
    """
    from sklearn import metrics as skm

    a = np.asarray(in_scores, dtype=np.float64).ravel()
    b = np.asarray(out_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError(f"ood_scores needs non-empty in_scores and out_scores, got {a.size} and {b.size}.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("ood_scores: scores must be finite (got NaN or Inf).")
    y = np.concatenate([np.zeros(a.size), np.ones(b.size)])
    s = np.concatenate([a, b])
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": float(skm.roc_auc_score(y, s)),
        "auprc": float(skm.average_precision_score(y, s)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


UNCERTAINTY_SCORES = ("entropy", "mutual_information", "max_probability")


def uncertainty_scores(member_probs, temperature: float = 1.0) -> dict:
    """Anomaly scores of an ensemble's predictions (higher = more uncertain), one per example.

    - ``"entropy"``: the predictive entropy H(p̄) of the mean probabilities p̄ = mean_k p_k (total
      uncertainty);
    - ``"mutual_information"``: H(p̄) − mean_k H(p_k), the members' disagreement (epistemic part; 0 for
      one network);
    - ``"max_probability"``: −max_c p̄_c (Hendrycks & Gimpel's baseline, negated so higher = more anomalous).

    With ``temperature`` T ≠ 1 (post-hoc temperature scaling, `hyperkeras.calibration`), "entropy" and
    "max_probability" are taken of the tempered mean, softmax(log p̄ / T); the mutual information stays that
    of the members as they are (one temperature for the fused prediction does not define tempered members).

    Args:
        member_probs: ``[K, B, C]`` class probabilities of K networks (K = 1 allowed).
        temperature: T > 0 for the fused prediction.

    Returns:
        ``{name: [B] float64}`` for every name in `UNCERTAINTY_SCORES`.
    """
    p = np.asarray(member_probs, np.float64)
    if p.ndim != 3:
        raise ValueError(f"uncertainty_scores: member_probs must be [K, B, C], got shape {p.shape}.")
    if not float(temperature) > 0:
        raise ValueError(f"uncertainty_scores: temperature must be > 0, got {temperature!r}.")
    mean = p.mean(axis=0)
    mutual = np.maximum(entropy(mean, axis=1) - entropy(p, axis=2).mean(axis=0), 0.0)
    if temperature != 1.0:
        z = np.log(np.maximum(mean, 1e-300)) / float(temperature)
        z -= z.max(axis=1, keepdims=True)
        mean = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return {"entropy": entropy(mean, axis=1), "mutual_information": mutual, "max_probability": -mean.max(axis=1)}


# ---------------------------------------------------------------------- diversity of predictions
def _member_array(values, name, rank):
    a = np.asarray(values)
    if a.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {a.shape}.")
    if a.shape[0] < 2:
        raise ValueError(f"{name}: diversity needs at least 2 networks, got {a.shape[0]}.")
    return a


def disagreement(member_predictions) -> float:
    """Pairwise disagreement rate: the fraction of (network pair, example) in which two networks predict
    different classes, over all N(N−1)/2 pairs of the N networks and all B examples.

    Args:
        member_predictions: ``[N, B]`` predicted classes (e.g. ``EnsemblePrediction.member_predictions``),
            or member probabilities ``[N, B, C]`` (their argmax is taken).

    0 when all networks agree everywhere; an ensemble of independent, equally accurate networks with
    accuracy a on C classes is near ``1 − a² − (1 − a)²/(C − 1)``. Cost O(N·B) (class counts per example).
    """
    a = np.asarray(member_predictions)
    if a.ndim == 3:
        a = a.argmax(axis=-1)
    a = _member_array(a, "member_predictions", 2).astype(np.int64)
    n, b = a.shape
    counts = np.zeros((b, int(a.max()) + 1), np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(b), a.shape), a), 1)
    agreeing = (counts * (counts - 1) // 2).sum()
    return float(1.0 - agreeing / (b * n * (n - 1) / 2))


def pairwise_kl(member_probs, eps: float = 1e-12) -> float:
    """Mean KL divergence ``KL(p_i || p_j)`` (nats) over ordered pairs i ≠ j of the N networks' predictive
    distributions, averaged over the B examples.

    Args:
        member_probs: ``[N, B, C]`` probabilities of each network (``EnsemblePrediction.member_probs``).
        eps: floor of the probabilities inside the logarithms.

    Computed in O(N·B·C) from ``Σ_{i,j} KL(p_i||p_j) = N Σ_i Σ_c p_i log p_i − Σ_c (Σ_i p_i)(Σ_j log p_j)``.
    """
    p = _member_array(member_probs, "member_probs", 3).astype(np.float64)
    n = p.shape[0]
    logp = np.log(np.maximum(p, eps))
    total = n * np.sum(p * logp, axis=(0, 2)) - np.sum(p.sum(axis=0) * logp.sum(axis=0), axis=-1)  # [B]
    return float(np.mean(total) / (n * (n - 1)))


# ---------------------------------------------------------------------- diversity of generated weights
def weight_norms(target, params, include_bias: bool = False) -> dict:
    """Per Conv/Dense layer (`target.layers`), the 2-norm of each network's kernel: ``{layer name: [K]}``.

    Args:
        target: the `hyperkeras.TargetNetwork` the params belong to (first, as everywhere in hyperkeras).
        params: params dict ``{name: [K, *shape]}`` (e.g. ``generator.sample(K, seed)``) or a list of
            keras.Models with `target`'s architecture (their weights are stacked).
        include_bias: also count the layer's bias in the norm (default: kernel only).
    """
    params = _as_params(target, params)
    out = {}
    for spec in target.layers:
        k = np.asarray(params[spec.kernel.name], dtype=np.float64)
        sq = np.sum(k.reshape(k.shape[0], -1) ** 2, axis=1)
        if include_bias and spec.bias is not None:
            b = np.asarray(params[spec.bias.name], dtype=np.float64)
            sq = sq + np.sum(b.reshape(b.shape[0], -1) ** 2, axis=1)
        out[spec.name] = np.sqrt(sq)
    return out


def weight_norm_statistics(target, params, include_bias: bool = False, ddof: int = 0) -> dict:
    """HyperGAN Table 1: mean and variance, across networks, of each layer's weight 2-norm.

    Returns:
        ``{layer name: {"mean": float, "variance": float}}`` (variance with `ddof`, default population).
    """
    out = {}
    for name, norms in weight_norms(target, params, include_bias).items():
        out[name] = {
            "mean": float(np.mean(norms)),
            "variance": float(np.var(norms, ddof=ddof)) if norms.size > ddof else float("nan"),
        }
    return out


def _as_params(target, params):
    from hyperkeras.targets import TargetNetwork

    if not isinstance(target, TargetNetwork):
        hint = " (the target comes first: f(target, params))" if isinstance(params, TargetNetwork) else ""
        raise TypeError(f"target must be a hyperkeras.TargetNetwork, got {type(target).__name__}{hint}.")
    if isinstance(params, (list, tuple)):
        from hyperkeras import ensembles

        return ensembles.stack_params(params, target)
    if not isinstance(params, dict):
        raise TypeError(
            f"params must be a dict name -> [K, *shape] or a list of keras.Models, got {type(params).__name__}."
        )
    target.check_params(params)
    return params
