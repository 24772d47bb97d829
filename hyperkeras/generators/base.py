"""The generator contract: noise ``[K, noise_dim]`` -> params ``{name: [K, *shape]}`` (+ auxiliary outputs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from hyperkeras.targets.specs import Params

if TYPE_CHECKING:
    from hyperkeras.targets import TargetNetwork


def tfd():
    """`tensorflow_probability.distributions`, imported on first use (the import takes about a second,
    and TFP 0.25 needs the ``tf-keras`` package installed)."""
    try:
        import tensorflow_probability as tfp
    except ImportError as e:
        import tensorflow as tf_

        raise ImportError(
            f"hyperkeras needs tensorflow-probability, which needs the tf-keras package ({e}). Install the "
            f"tf-keras matching your TensorFlow without pulling a second TensorFlow: "
            f"pip install --no-deps tf-keras=={tf_.__version__.split('-')[0]}"
        ) from e
    return tfp.distributions


def stateless_seed(seed, salt=0):
    """A stateless seed pair ``int32[2]`` for `tf.random.stateless_*` and TFP's ``sample(seed=...)``.

    Args:
        seed: a Python int or a scalar integer tensor (-> ``[seed, salt]``), or a pair ``[2]`` used as is.
        salt: second element for a scalar `seed`.
    """
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 1:
        return tf.cast(seed, tf.int32)
    if seed.shape.rank != 0:
        raise ValueError(f"seed must be an int or a pair [2] of ints, got shape {seed.shape}.")
    return tf.stack([tf.cast(seed, tf.int32), tf.constant(salt, tf.int32)])


@keras.saving.register_keras_serializable(package="hyperkeras")
class Generator(keras.layers.Layer):
    """Base class of weight generators: noise ``[K, noise_dim]`` -> the params of K target networks.

    A generator maps noise drawn from its own `noise_distribution` to a complete params dict
    ``{name: [K, *shape]}`` of a `hyperkeras.TargetNetwork` (every name of ``target.param_specs``), and may
    return auxiliary outputs that regularisers use (HyperGAN's latent codes, `aux_shapes`). It is sized
    from the target when it is built (e.g. ``from_target``) and receives the target again in `generate`,
    so it never stores one. `hyperkeras.models.Hypernetwork` trains any generator with any task loss and
    regularisers.

    Subclasses set ``self.noise_dim`` and implement `generate`; they may override `noise_distribution`
    (default N(0, I)), `aux_shapes` and `check_target`.

    Example (a complete generator):

    ```python
    @keras.saving.register_keras_serializable()
    class LinearGenerator(hyperkeras.generators.Generator):
        def __init__(self, num_params, noise_dim=8, **kwargs):
            super().__init__(**kwargs)
            self.num_params, self.noise_dim = num_params, noise_dim
            self.dense = keras.layers.Dense(num_params)

        def build(self, input_shape=None):
            self.dense.build((None, self.noise_dim))

        def generate(self, target: TargetNetwork, noise: tf.Tensor, training: bool = False) -> Params | tuple[Params, dict]:
            return target.unflatten(0.1 * self.dense(noise))

        def get_config(self):
            return {**super().get_config(), "num_params": self.num_params, "noise_dim": self.noise_dim}

    model = hyperkeras.models.Hypernetwork(target, LinearGenerator(target.num_params), num_networks=8)
    ```
    """

    noise_dim: int

    @property
    def noise_distribution(self):
        """The distribution of one noise vector (event shape ``[noise_dim]``), a TFP distribution."""
        d = tfd()
        return d.Sample(d.Normal(0.0, 1.0), sample_shape=self.noise_dim)

    @property
    def aux_shapes(self) -> dict:
        """``{name: shape}`` (without the K axis) of the auxiliary outputs of `generate`."""
        return {}

    def sample_noise(self, n, seed=0):
        """``[n, noise_dim]`` noise from `noise_distribution`, deterministic in `seed` (an int -> the
        stateless pair ``[seed, 0]``, or a pair); works inside `tf.function` (n and seed may be tensors)."""
        return self.noise_distribution.sample(n, seed=stateless_seed(seed))

    def generate(self, target: TargetNetwork, noise: tf.Tensor, training: bool = False) -> Params | tuple[Params, dict]:
        """The params of ``K = noise.shape[0]`` networks of `target`: ``{name: [K, *shape]}``, or a pair
        ``(params, aux)`` with ``aux = {name: [K, *shape]}`` (see `aux_shapes`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement generate(target, noise, training).")

    def check_target(self, target):
        """Raises ValueError unless this generator produces `target`'s params (default: no check; the
        params are checked against the target when they are used)."""
