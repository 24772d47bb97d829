"""hyperkeras.metrics against values computed by hand on small arrays."""

import math

import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras import metrics

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.25, 0.5, 0.25]])
LABELS = np.array([0, 1, 0, 2])


def test_accuracy_from_probs_and_from_predictions():
    assert metrics.accuracy(PROBS, LABELS) == 0.5  # predictions 0, 1, 2, 1
    assert metrics.accuracy(np.array([0, 1, 2, 1]), LABELS) == 0.5


def test_negative_log_likelihood_by_hand():
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(0.25)) / 4
    assert metrics.negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.7925215, abs=1e-6)


def test_brier_score_by_hand():
    # rows: 0.09+0.04+0.01, 0.01+0.04+0.01, 0.49+0.09+0.16, 0.0625+0.25+0.5625
    assert metrics.brier_score(PROBS, LABELS) == pytest.approx((0.14 + 0.06 + 0.74 + 0.875) / 4, rel=1e-12)


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.65, 0.35], [0.3, 0.7], [0.55, 0.45], [0.95, 0.05]])
    labels = np.array([0, 1, 1, 0, 1])
    # 5 bins of width 0.2: (0.8, 1]: conf .9 right, .95 wrong -> |0.5 - 0.925| * 2/5 = 0.17
    # (0.6, 0.8]: .65 wrong, .7 right -> |0.5 - 0.675| * 2/5 = 0.07; (0.4, 0.6]: .55 right -> 0.45 / 5 = 0.09
    assert metrics.expected_calibration_error(probs, labels, num_bins=5) == pytest.approx(0.33, abs=1e-12)
    bins = metrics.calibration_bins(probs, labels, num_bins=5)
    np.testing.assert_array_equal(bins["count"], [0, 0, 1, 2, 2])
    # the default 15 bins: .9 and .95 fall in different bins (13 and 14), .65/.7 in 9 and 10
    ece15 = (abs(1 - 0.9) + abs(0 - 0.95) + abs(0 - 0.65) + abs(1 - 0.7) + abs(1 - 0.55)) / 5
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(ece15, abs=1e-12)


def test_perfectly_calibrated_predictions_have_zero_ece():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.expected_calibration_error(probs, np.array([0, 1])) == 0.0


def test_entropy():
    assert metrics.entropy(np.full(4, 0.25)) == pytest.approx(math.log(4))
    assert metrics.entropy(np.array([1.0, 0.0])) == 0.0


def test_ood_scores_by_hand():
    in_scores = [0.1, 0.4, 0.35, 0.8]
    out_scores = [0.9, 0.5, 0.3]
    r = metrics.ood_scores(in_scores, out_scores)
    assert set(r) == {"auroc", "auprc", "fpr_at_95_tpr"}
    assert r["auroc"] == pytest.approx(8 / 12)  # pairs with out > in: 4 + 3 + 1
    # ranking 0.9(out) 0.8(in) 0.5(out) 0.4 0.35 (in) 0.3(out): AP = 1/3·1 + 1/3·2/3 + 1/3·3/6
    assert r["auprc"] == pytest.approx(13 / 18)
    # all 3 OOD flagged only at threshold 0.3, which also flags 0.8, 0.4, 0.35
    assert r["fpr_at_95_tpr"] == pytest.approx(0.75)
    perfect = metrics.ood_scores([0.0, 0.1], [1.0, 2.0])
    assert perfect == {"auroc": 1.0, "auprc": 1.0, "fpr_at_95_tpr": 0.0}


def test_weight_norm_statistics_by_hand():
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(4,), hidden=(3,), num_classes=2))
    params = {}
    for s in target.param_specs:
        scale = np.arange(1, 4, dtype="float32").reshape([3] + [1] * len(s.shape))
        params[s.name] = tf.constant(np.ones((3,) + s.shape, "float32") * scale)
    stats = metrics.weight_norm_statistics(target, params)
    # dense1 kernel 4x3 = 12 entries equal to k: norms sqrt(12)·[1, 2, 3]
    assert stats["dense1"]["mean"] == pytest.approx(2 * math.sqrt(12))
    assert stats["dense1"]["variance"] == pytest.approx(12 * 2 / 3)
    assert stats["logits"]["mean"] == pytest.approx(2 * math.sqrt(6))
    with_bias = metrics.weight_norm_statistics(target, params, include_bias=True)
    assert with_bias["dense1"]["mean"] == pytest.approx(2 * math.sqrt(15))
    # the same from a list of keras models (directly trained networks)
    models = [target.to_keras_model(params, i) for i in range(3)]
    assert metrics.weight_norm_statistics(target, models)["dense1"] == pytest.approx(stats["dense1"])


def test_bad_inputs_raise_clear_errors():
    logits = np.array([[2.0, -1.0], [0.5, 3.0]])
    with pytest.raises(ValueError, match="logits"):
        metrics.negative_log_likelihood(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.brier_score(PROBS, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels must have shape \[B\]"):
        metrics.expected_calibration_error(PROBS, np.array([0, 1]))
    with pytest.raises(ValueError, match="num_bins"):
        metrics.expected_calibration_error(PROBS, LABELS, num_bins=0)
    with pytest.raises(ValueError, match="non-empty"):
        metrics.ood_scores([], [1.0])


def test_weight_norms_take_the_target_first():
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(6,), hidden=(4,)))
    params = target.get_params()
    with pytest.raises(TypeError, match="target comes first"):
        metrics.weight_norms(params, target)


_LABEL_METRICS = {
    "accuracy": metrics.accuracy,
    "negative_log_likelihood": metrics.negative_log_likelihood,
    "brier_score": metrics.brier_score,
    "calibration_bins": metrics.calibration_bins,
    "expected_calibration_error": metrics.expected_calibration_error,
    "classification_summary": metrics.classification_summary,
}


@pytest.mark.parametrize("name", sorted(_LABEL_METRICS))
@pytest.mark.parametrize(
    "labels,match",
    [
        (np.array([0, 1, 0, 3]), r"labels must lie in \[0, 3\) \(the number of classes in probs\); got range \[0, 3\]"),
        (np.array([0, -1, 0, 2]), r"labels must lie in \[0, 3\)"),
        (np.array([0.0, 1.5, 0.0, 2.0]), "labels must be integer class indices"),
        (np.array([0, 1]), r"labels must have shape \[B\] = \[4\]"),
    ],
)
def test_every_label_metric_refuses_bad_labels_the_same_way(name, labels, match):
    """Issue 19: accuracy took label 10 of 10 classes (it is never equal to an argmax) where ECE refused."""
    with pytest.raises(ValueError, match=f"^{name}: {match}"):
        _LABEL_METRICS[name](PROBS, labels)


def test_accuracy_label_check_by_hand():
    # 10 classes, 16 examples, one label is 10: refused (it returned 1/16 = 0.0625 for one right argmax).
    probs = np.full((16, 10), 0.1)
    probs[:, 3] = 0.19
    labels = np.full(16, 10)
    labels[0] = 3
    with pytest.raises(ValueError, match=r"accuracy: labels must lie in \[0, 10\)"):
        metrics.accuracy(probs, labels)
    labels[1:] = 4
    assert metrics.accuracy(probs, labels) == 1 / 16  # in range: as before
    assert metrics.accuracy(probs, labels.astype("float32")) == 1 / 16  # integer-valued floats are classes
    # predicted classes [B]: the number of classes is unknown, labels must still be classes >= 0
    assert metrics.accuracy(np.array([1, 2]), np.array([1, 3])) == 0.5
    with pytest.raises(ValueError, match=r"accuracy: labels must lie in \[0, inf\)"):
        metrics.accuracy(np.array([1, 2]), np.array([1, -3]))


def test_uncertainty_scores_against_hand_computation():
    """Entropy, mutual information and max probability of a hand-made 3-network ensemble, raw and tempered."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 7, 4)) * 2.0
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p32 = p.astype(np.float32)  # the precision predictions come in
    scores = metrics.uncertainty_scores(p32)
    mean = p.mean(0)
    h = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
    np.testing.assert_allclose(scores["entropy"], h(mean), rtol=1e-5)
    np.testing.assert_allclose(scores["mutual_information"], h(mean) - h(p).mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores["max_probability"], -mean.max(-1), rtol=1e-6)
    # temperature T: the tempered mean is mean^(1/T) renormalised; the mutual information does not change
    t = 2.5
    tempered = mean ** (1 / t) / (mean ** (1 / t)).sum(-1, keepdims=True)
    scaled = metrics.uncertainty_scores(p32, temperature=t)
    np.testing.assert_allclose(scaled["entropy"], h(tempered), rtol=1e-5)
    np.testing.assert_allclose(scaled["max_probability"], -tempered.max(-1), rtol=1e-5)
    np.testing.assert_allclose(scaled["mutual_information"], scores["mutual_information"])
    # one network: no disagreement
    assert np.all(metrics.uncertainty_scores(p32[:1])["mutual_information"] == 0)
    with pytest.raises(ValueError, match=r"\[K, B, C\]"):
        metrics.uncertainty_scores(p32[0])
    with pytest.raises(ValueError, match="temperature"):
        metrics.uncertainty_scores(p32, temperature=0.0)
