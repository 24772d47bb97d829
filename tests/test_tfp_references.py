"""hyperkeras's hand-written probability code against TensorFlow Probability, an independent library."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from hyperkeras import metrics
from hyperkeras.data.strokes import mdn_nll, mdn_split

tfd = tfp.distributions


@pytest.mark.parametrize("num_bins", [5, 15])
def test_expected_calibration_error_matches_tfp(num_bins):
    rng = np.random.RandomState(0)
    logits = rng.randn(500, 7) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.randint(0, 7, size=500)
    want = float(
        tfp.stats.expected_calibration_error(
            num_bins, logits=tf.constant(np.log(probs), tf.float32), labels_true=tf.constant(labels, tf.int32)
        )
    )
    assert metrics.expected_calibration_error(probs, labels, num_bins=num_bins) == pytest.approx(want, abs=1e-5)


def test_mixture_density_nll_matches_tfp_mixture_same_family():
    """The handwriting model's bivariate-Gaussian mixture + Bernoulli end-of-stroke likelihood (Graves
    2013, eqs. 23-26) against tfd.MixtureSameFamily of tfd.MultivariateNormalTriL and tfd.Bernoulli."""
    m = 4
    rng = np.random.RandomState(1)
    out = tf.constant(rng.randn(3, 5, 6 * m + 1).astype("float32"))
    target = np.concatenate([rng.randn(3, 5, 2), rng.randint(0, 2, (3, 5, 1))], -1).astype("float32")
    log_pi, mu1, mu2, log_s1, log_s2, rho, eos_logit = mdn_split(out, m)
    s1, s2 = tf.exp(log_s1), tf.exp(log_s2)
    # Cholesky factor of [[s1², ρ s1 s2], [ρ s1 s2, s2²]].
    scale_tril = tf.stack(
        [tf.stack([s1, tf.zeros_like(s1)], -1), tf.stack([rho * s2, s2 * tf.sqrt(1.0 - rho**2)], -1)], -2
    )
    mixture = tfd.MixtureSameFamily(
        tfd.Categorical(logits=log_pi), tfd.MultivariateNormalTriL(loc=tf.stack([mu1, mu2], -1), scale_tril=scale_tril)
    )
    want = -mixture.log_prob(target[..., :2]) - tfd.Bernoulli(logits=eos_logit).log_prob(target[..., 2])
    np.testing.assert_allclose(mdn_nll(tf.constant(target), out, m).numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
