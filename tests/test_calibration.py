"""Temperature scaling: against scipy's scalar minimiser, recovery of known temperatures, refusals."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from hyperkeras.calibration import apply_temperature, fit_temperature, temperature_nll


def numpy_nll(z, y, t):
    a = np.asarray(z, np.float64) / t
    return float(np.mean(logsumexp(a, axis=1) - a[np.arange(len(a)), y]))


def synthetic(n=5000, c=10, factor=1.0, seed=0):
    """Calibrated logits (labels drawn from their own softmax), then multiplied by `factor`: the fitted T
    should be about `factor`."""
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.normal(size=(n, c))
    p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    y = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return factor * z, y


@pytest.mark.parametrize("factor, seed", [(3.0, 0), (0.5, 1), (1.0, 2), (7.0, 3)])
def test_matches_scipy_minimize_scalar(factor, seed):
    z, y = synthetic(2000, 6, factor, seed)
    got = fit_temperature(z, y)
    res = minimize_scalar(
        lambda s: numpy_nll(z, y, np.exp(s)),
        bounds=(np.log(1e-3), np.log(1e3)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert got == pytest.approx(float(np.exp(res.x)), rel=1e-4)
    assert temperature_nll(z, y, got) <= numpy_nll(z, y, np.exp(res.x)) + 1e-12


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_recovers_the_temperature_of_scaled_logits(factor):
    z, y = synthetic(5000, 10, factor, seed=4)
    t = fit_temperature(z, y)
    assert t == pytest.approx(factor, rel=0.05)
    before, after = temperature_nll(z, y), temperature_nll(z, y, t)
    assert after <= before
    assert after == pytest.approx(numpy_nll(z, y, t), rel=1e-12)
    np.testing.assert_allclose(apply_temperature(z, t), z / t)


def test_ensemble_log_mean_probs_and_log_probs_give_the_same_fit():
    rng = np.random.default_rng(5)
    z, y = synthetic(3000, 5, 2.0, seed=5)
    members = z[None] + 0.5 * rng.normal(size=(4, *z.shape))  # K = 4 networks around z
    log_probs = members - logsumexp(members, axis=2, keepdims=True)
    fused = logsumexp(log_probs, axis=0) - np.log(4)  # log of the mean probabilities
    t = fit_temperature(fused, y)
    assert t == pytest.approx(fit_temperature(fused + 17.0, y), rel=1e-9)  # a per-row shift changes nothing
    assert temperature_nll(fused, y, t) <= temperature_nll(fused, y)
    assert t > 1.2  # the scaled-up members make the ensemble over-confident


def test_apply_temperature_keeps_tensors_and_numpy():
    z = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = apply_temperature(tf.constant(z), 2.0)
    assert isinstance(out, tf.Tensor) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), z / 2)
    graph = tf.function(lambda v: apply_temperature(v, 4.0))
    np.testing.assert_allclose(graph(tf.constant(z)).numpy(), z / 4)
    assert apply_temperature(z, 2.0).dtype == np.float32
    assert np.argmax(apply_temperature(z, 0.1), 1).tolist() == np.argmax(z, 1).tolist()


def test_separable_data_returns_a_bound():
    z = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    y = np.array([0, 1] * 10)
    assert fit_temperature(z, y) == pytest.approx(1e-3)  # the NLL decreases all the way to T → 0
    assert fit_temperature(z, y, bounds=(0.1, 10.0)) == pytest.approx(0.1)


def test_refuses_bad_input():
    z, y = synthetic(50, 4)
    with pytest.raises(ValueError, match="N must match"):
        fit_temperature(z, y[:-1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        fit_temperature(z, np.where(np.arange(50) == 3, 4, y))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        fit_temperature(z, np.where(np.arange(50) == 3, -1, y))
    bad = z.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(bad, y)
    bad[2, 1] = -np.inf
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(bad, y)
    with pytest.raises(ValueError, match=r"must be \[N, C\]"):
        fit_temperature(z[:, 0], y)
    with pytest.raises(ValueError, match=r"must be \[N, C\]"):
        fit_temperature(z[:, :1], y)
    with pytest.raises(ValueError, match="integer class indices"):
        fit_temperature(z, y + 0.5)
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(z, y, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        apply_temperature(z, 0.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        temperature_nll(z, y, float("inf"))
