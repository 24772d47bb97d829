"""hyperkeras.probabilities against NumPy / SciPy: logits or probabilities -> log-probabilities, entropies."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from hyperkeras import probabilities as P

RNG = np.random.RandomState(0)
LOGITS = (3.0 * RNG.randn(4, 5, 7)).astype("float32")
PROBS = special.softmax(LOGITS.astype("float64"), axis=-1).astype("float32")


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got, dtype="float64"), want, rtol=tol, atol=tol)


def test_kind_of_an_activation():
    assert P.kind_of("softmax") == "probs"
    for activation in ("linear", "relu", "sigmoid", None):
        assert P.kind_of(activation) == "logits"


def test_as_logits():
    _close(P.as_logits(tf.constant(LOGITS), "logits"), LOGITS, 0)
    _close(P.as_logits(tf.constant(PROBS), "probs"), np.log(PROBS.astype("float64")))
    zero = P.as_logits(tf.constant([0.0, 1.0]), "probs").numpy()
    assert zero[0] == pytest.approx(np.log(np.finfo(np.float32).tiny)) and zero[1] == 0.0


def test_as_log_probs_matches_scipy():
    _close(P.as_log_probs(tf.constant(LOGITS), "logits"), special.log_softmax(LOGITS.astype("float64"), axis=-1))
    _close(P.as_log_probs(tf.constant(PROBS), "probs"), np.log(PROBS.astype("float64")))
    floored = P.as_log_probs(tf.constant([0.0, 1.0]), "probs", floor=1e-30).numpy()
    np.testing.assert_allclose(floored, [np.log(1e-30), 0.0], rtol=1e-6)
    assert P.as_log_probs(tf.constant([0.0, 1.0], tf.float64), "probs").dtype == tf.float64


def test_as_probs_and_softmax_match_scipy():
    want = special.softmax(LOGITS.astype("float64"), axis=-1)
    _close(P.as_probs(tf.constant(LOGITS), "logits"), want)
    assert P.as_probs(PROBS, "probs") is PROBS  # probabilities are taken as they are
    _close(P.softmax(tf.constant(LOGITS), "logits"), want)
    unnormalised = np.array([[0.2, 0.2, 0.1]], "float32")  # softmax of the log renormalises
    _close(P.softmax(tf.constant(unnormalised), "probs"), unnormalised / 0.5)
    _close(P.log_softmax(tf.constant(unnormalised), "probs"), np.log(unnormalised / 0.5))
    _close(P.log_softmax(tf.constant(LOGITS), "logits"), special.log_softmax(LOGITS.astype("float64"), axis=-1))


def test_entropies_match_scipy():
    want = stats.entropy(PROBS.astype("float64"), axis=-1)
    got = P.entropy(PROBS)
    assert got.dtype == np.float64 and got.shape == (4, 5)
    _close(got, want)
    _close(P.entropy(np.moveaxis(PROBS, -1, 0), axis=0), want)
    _close(P.tf_entropy(tf.constant(PROBS)), want)
    _close(P.entropy_from_log_probs(P.as_log_probs(tf.constant(LOGITS), "logits")), want)
    assert P.entropy(np.full(4, 0.25)) == pytest.approx(np.log(4))
    assert P.entropy(np.array([1.0, 0.0])) == 0.0  # 0 log 0 = 0
    assert P.tf_entropy(tf.constant([1.0, 0.0])).numpy() == 0.0
    assert np.isfinite(P.entropy_from_log_probs(P.as_log_probs(tf.constant([1.0, 0.0]), "probs")).numpy())


def test_gradients_are_finite_for_probabilities_of_zero():
    p = tf.Variable([[0.0, 0.25, 0.75]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(P.log_softmax(p, "probs"))
    assert np.all(np.isfinite(tape.gradient(loss, p).numpy()))


def test_unknown_kind_is_refused():
    for fn in (P.as_logits, P.as_log_probs, P.as_probs, P.log_softmax, P.softmax):
        with pytest.raises(ValueError, match="kind must be one of"):
            fn(tf.constant(LOGITS), "auto")
