"""The generator contract: noise ``[K, noise_dim]`` (+ an optional condition) -> params ``{name: [K, *shape]}``
(+ auxiliary outputs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
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
    # Conditioning (see `condition_vectors`): unconditioned unless a subclass calls `_setup_condition`.
    num_conditions: int | None = None
    condition_dim: int | None = None

    @property
    def conditional(self) -> bool:
        """Whether `generate` takes a condition (a task id or a condition vector) beside the noise."""
        return bool(self.condition_dim)

    def _setup_condition(self, num_conditions=None, condition_dim=None):
        """Makes the generator conditional (call from ``__init__``; both None: unconditioned).

        ``num_conditions`` N (int): the condition is an integer task id in ``[0, N)``, looked up in a learned
        `TaskEmbedding` ``[N, condition_dim]`` (``condition_dim`` default 8). ``num_conditions`` None and
        ``condition_dim`` d: the condition is a float vector ``[d]`` (or ``[K, d]``, one per network), e.g. a
        task description's embedding, fed as is (standardise it: the initialisations assume unit variance).
        """
        if num_conditions is None and condition_dim is None:
            return
        if num_conditions is not None:
            num_conditions = _positive_int("num_conditions", num_conditions)
            condition_dim = 8 if condition_dim is None else condition_dim
        self.condition_dim = _positive_int("condition_dim", condition_dim)
        self.num_conditions = num_conditions
        if num_conditions is not None:
            self.condition_embedding = TaskEmbedding(
                num_conditions, self.condition_dim, name="condition_embedding", dtype=self.dtype_policy
            )

    def _build_condition(self):
        if self.num_conditions is not None and not self.condition_embedding.built:
            self.condition_embedding.build((None,))

    def _condition_config(self) -> dict:
        """The conditioning arguments for `get_config` (none for an unconditioned generator, whose config
        is thus the same as before conditioning existed)."""
        if not self.conditional:
            return {}
        return {"num_conditions": self.num_conditions, "condition_dim": self.condition_dim}

    def condition_vectors(self, condition, k):
        """The condition as the generator sees it: float ``[k, condition_dim]``, one row per network.

        Accepts a task id (int scalar: the same task for all k networks) or ids ``[k]`` for a generator with
        ``num_conditions`` (ids outside ``[0, num_conditions)`` raise: ValueError when the value is known,
        else InvalidArgumentError when the graph runs); a float vector ``[condition_dim]`` or
        ``[k, condition_dim]`` for one with ``condition_dim`` only. Returns None for an unconditioned
        generator and no condition. Raises ValueError for a condition given to an unconditioned generator,
        a missing one, or a wrong dtype or shape.
        """
        name = type(self).__name__
        if not self.conditional:
            if condition is not None:
                raise ValueError(
                    f"{name} is unconditioned (made without num_conditions / condition_dim), but a condition was "
                    "given: build the generator with num_conditions=N (task ids) or condition_dim=d (vectors)."
                )
            return None
        if condition is None:
            want = (
                f"a task id in [0, {self.num_conditions})"
                if self.num_conditions is not None
                else f"a float vector [{self.condition_dim}]"
            )
            raise ValueError(f"{name} is conditional: it needs a condition ({want}), got none.")
        condition = tf.convert_to_tensor(condition)
        if self.num_conditions is not None:
            return self.condition_embedding(_broadcast_ids(condition, k, self.num_conditions, name))
        if condition.dtype.is_integer or condition.dtype == tf.bool:
            raise ValueError(
                f"{name} takes float condition vectors [{self.condition_dim}] (condition_dim, no num_conditions), "
                f"got {condition.dtype.name} values; for task ids build it with num_conditions=N."
            )
        d = self.condition_dim
        if condition.shape.rank not in (1, 2) or condition.shape[-1] != d:
            raise ValueError(
                f"{name}: condition vectors must have shape [{d}] or [K, {d}] (condition_dim={d}), got "
                f"{tuple(condition.shape)}."
            )
        condition = tf.cast(condition, self.compute_dtype)
        if condition.shape.rank == 1:
            return tf.broadcast_to(condition[None], tf.stack([tf.cast(k, tf.int32), d]))
        _check_rows(condition, k, name)
        return condition

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
        stateless pair ``[seed, 0]``, or a pair); works inside `tf.function` (n and seed may be tensors).
        A generator without noise (``noise_dim == 0``: a deterministic, conditional generator) gets ``[n, 0]``."""
        if int(self.noise_dim) == 0:
            return tf.zeros(self._noise_shape(n), tf.float32)
        noise = self._plain_noise(n, stateless_seed(seed))
        if noise is not None:
            return noise
        return self.noise_distribution.sample(n, seed=stateless_seed(seed))

    def _plain_noise(self, n, seed):
        """The draw `noise_distribution.sample(n, seed)` makes, by `tf.random` alone, for the library's own
        noise priors (allow-listed: this class's N(0, 1)); None for any other `noise_distribution`, which
        `sample_noise` then samples through TFP. Equal values (tests/test_noise.py); it only spares the
        TensorFlow Probability import (about a second, on the first step of a training run)."""
        if type(self).noise_distribution is not Generator.noise_distribution:
            return None
        return tf.random.stateless_normal(self._noise_shape(n), seed)

    def _noise_shape(self, n):
        """``[n, noise_dim]`` as an int32 shape tensor (`n` may be a tensor)."""
        return tf.stack([tf.cast(n, tf.int32), int(self.noise_dim)])

    def generate(self, target: TargetNetwork, noise: tf.Tensor, training: bool = False) -> Params | tuple[Params, dict]:
        """The params of ``K = noise.shape[0]`` networks of `target`: ``{name: [K, *shape]}``, or a pair
        ``(params, aux)`` with ``aux = {name: [K, *shape]}`` (see `aux_shapes`). A `conditional` generator
        also takes ``condition=`` (see `condition_vectors`); `hyperkeras.models.Hypernetwork` passes it only
        to conditional generators, so an unconditioned one need not accept it."""
        raise NotImplementedError(f"{type(self).__name__} must implement generate(target, noise, training).")

    def check_target(self, target):
        """Raises ValueError unless this generator produces `target`'s params (default: no check; the
        params are checked against the target when they are used)."""


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def _check_rows(t, k, name):
    """Checks that `t` has `k` rows when both are known (a tensor k is checked by the caller's shapes)."""
    k_static = tf.get_static_value(k) if tf.is_tensor(k) else k
    if k_static is not None and t.shape[0] is not None and int(t.shape[0]) != int(k_static):
        raise ValueError(
            f"{name}: {t.shape[0]} conditions for {int(k_static)} networks (one per network, or one for all)."
        )


def _broadcast_ids(ids, k, num_conditions, name):
    """Task ids as int32 ``[k]`` (a scalar for all k networks), range-checked."""
    if not ids.dtype.is_integer:
        raise ValueError(
            f"{name} takes integer task ids in [0, {num_conditions}) as its condition, got {ids.dtype.name} values "
            "(for condition vectors build the generator with condition_dim=d and no num_conditions)."
        )
    if ids.shape.rank not in (0, 1):
        raise ValueError(f"{name}: task ids must be a scalar or [K], got shape {tuple(ids.shape)}.")
    ids = tf.cast(ids, tf.int32)
    value = tf.get_static_value(ids)
    if value is not None:
        bad = np.asarray(value)[(np.asarray(value) < 0) | (np.asarray(value) >= num_conditions)]
        if bad.size:
            raise ValueError(
                f"{name}: task id {int(bad.flat[0])} is out of range [0, {num_conditions}) (num_conditions)."
            )
    else:
        with tf.control_dependencies(
            [
                tf.debugging.assert_non_negative(ids, message=f"{name}: task ids must be in [0, {num_conditions})"),
                tf.debugging.assert_less(
                    ids, num_conditions, message=f"{name}: task ids must be in [0, {num_conditions})"
                ),
            ]
        ):
            ids = tf.identity(ids)
    if ids.shape.rank == 0:
        return tf.fill(tf.reshape(tf.cast(k, tf.int32), [1]), ids)
    _check_rows(ids, k, name)
    return ids


@keras.saving.register_keras_serializable(package="hyperkeras")
class TaskEmbedding(keras.layers.Layer):
    """One learned vector per task (von Oswald et al.'s task embedding): task ids -> ``[..., condition_dim]``.

    Args:
        num_conditions: N, the number of tasks (ids ``0 .. N-1``).
        condition_dim: size of each task's vector.
        initializer: initialiser of the ``[N, condition_dim]`` table (default N(0, 1): unit-variance inputs,
            which the generators' initialisations assume).

    Call arguments:
        ids: integer task ids of any shape (range-checked by `Generator.condition_vectors`).

    Example:

    ```python
    emb = TaskEmbedding(5, 8)
    emb(tf.constant([0, 0, 3]))   # [3, 8]
    ```

    Reference:
        von Oswald, Henning, Grewe, Sacramento, "Continual learning with hypernetworks", ICLR 2020.
    """

    def __init__(self, num_conditions, condition_dim, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_conditions = _positive_int("num_conditions", num_conditions)
        self.condition_dim = _positive_int("condition_dim", condition_dim)
        self.initializer = keras.initializers.get(initializer or keras.initializers.RandomNormal(stddev=1.0))

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            shape=(self.num_conditions, self.condition_dim), initializer=self.initializer, name="embeddings"
        )
        self.built = True

    def call(self, ids):
        return tf.gather(self.embeddings, tf.cast(ids, tf.int32))

    def get_config(self):
        return {
            **super().get_config(),
            "num_conditions": self.num_conditions,
            "condition_dim": self.condition_dim,
            "initializer": keras.initializers.serialize(self.initializer),
        }
