"""`Generator.sample_noise` and `LatentGAN.sample_prior`: the library's own noise priors are drawn with
`tf.random` alone (no TFP import); the draw must equal TFP's sample of the distribution for the same seed,
and any other distribution (a subclass's) must still be sampled through TFP."""

import numpy as np
import pytest
import tensorflow as tf

from hyperkeras.generators import DeutschGenerator, MLPGenerator
from hyperkeras.generators.base import stateless_seed, tfd
from hyperkeras.objectives import LatentGAN


def _tfp_draw(gen, n, seed):
    return gen.noise_distribution.sample(n, seed=stateless_seed(seed)).numpy()


@pytest.mark.parametrize("trial", range(6))
def test_plain_draws_equal_tfp_draws(trial):
    rng = np.random.default_rng(trial)
    n, dim = int(rng.integers(1, 40)), int(rng.integers(1, 300))
    seed = int(rng.integers(0, 2**31 - 1)) if trial % 2 else [int(v) for v in rng.integers(-(2**31), 2**31 - 1, 2)]
    bound = float(rng.uniform(0.05, 5.0))
    deutsch = DeutschGenerator([(3, 4)], noise_dim=dim, code_size=[2], noise_bound=bound)
    mlp = MLPGenerator({"w": (2, 3)}, noise_dim=dim)
    for gen in (deutsch, mlp):
        assert gen._plain_noise(n, stateless_seed(seed)) is not None  # the allow-listed priors
        got = gen.sample_noise(n, seed).numpy()
        assert got.shape == (n, dim) and got.dtype == np.float32
        np.testing.assert_array_equal(got, _tfp_draw(gen, n, seed))
    assert np.abs(deutsch.sample_noise(n, seed).numpy()).max() <= bound


def test_plain_draws_inside_tf_function_with_tensor_arguments():
    gen = DeutschGenerator([(3, 4)], noise_dim=7, code_size=[2], noise_bound=0.5)
    graph = tf.function(lambda n, s: gen.sample_noise(n, s))(tf.constant(5), tf.constant([3, 9]))
    np.testing.assert_array_equal(graph.numpy(), _tfp_draw(gen, 5, [3, 9]))


def test_subclass_with_its_own_prior_is_sampled_through_tfp():
    class LaplaceNoise(MLPGenerator):
        @property
        def noise_distribution(self):
            d = tfd()
            return d.Sample(d.Laplace(0.0, 1.0), sample_shape=self.noise_dim)

    class WideUniform(DeutschGenerator):
        @property
        def noise_distribution(self):
            d = tfd()
            return d.Sample(d.Uniform(-3.0, 3.0), sample_shape=self.noise_dim)

    for gen in (LaplaceNoise({"w": (2,)}, noise_dim=50), WideUniform([(3, 4)], noise_dim=50, code_size=[2])):
        assert gen._plain_noise(8, stateless_seed(1)) is None
        got = gen.sample_noise(8, 1).numpy()
        np.testing.assert_array_equal(got, _tfp_draw(gen, 8, 1))
    assert np.abs(WideUniform([(3, 4)], noise_dim=50, code_size=[2]).sample_noise(64, 2).numpy()).max() > 1.0


@pytest.mark.parametrize("trial", range(3))
def test_latent_gan_prior_draws_equal_tfp_draws(trial):
    rng = np.random.default_rng(10 + trial)
    shape = [int(v) for v in rng.integers(1, 20, 3)]
    seed = tf.constant([int(v) for v in rng.integers(-(2**31), 2**31 - 1, 2)], tf.int64)
    gan = LatentGAN()
    got = gan.sample_prior(tf.constant(shape), seed).numpy()
    assert got.shape == tuple(shape) and got.dtype == np.float32
    np.testing.assert_array_equal(got, gan.prior.sample(shape, seed=tf.cast(seed, tf.int32)).numpy())


def test_latent_gan_subclass_prior_is_sampled_through_tfp():
    class LaplacePrior(LatentGAN):
        @property
        def prior(self):
            return tfd().Laplace(0.0, 1.0)

    gan = LaplacePrior()
    seed = tf.constant([4, 2])
    np.testing.assert_array_equal(
        gan.sample_prior([6, 5], seed).numpy(), tfd().Laplace(0.0, 1.0).sample([6, 5], seed=seed).numpy()
    )
