"""Entropy-regularised hypernetwork (Deutsch 2018): λ·cross-entropy − Ĥ(S(θ)) (+ γ·G(θ))."""

from __future__ import annotations

import keras
import tensorflow as tf

from hyperkeras.generators.deutsch import DeutschGenerator, check_layout
from hyperkeras.generators.stacks import recalibrate_batchnorm
from hyperkeras.objectives.entropy import kozachenko_leonenko_entropy
from hyperkeras.objectives.gauge import check_gauge, gauge_penalty, gauge_transform
from hyperkeras.targets import TargetNetwork

GAUGES = ("transform", "penalty", "none")


@keras.saving.register_keras_serializable(package="hyperkeras")
class EntropyHypernetwork(keras.Model):
    """Trains a weight generator so that its networks are accurate and essentially different.

    Each training step draws K noise vectors z ~ U[−b, b]^noise_dim, generates K networks θ_k, and
    minimises ``λ·CE − Ĥ`` (eqs. 11–14) where CE is the mean cross-entropy of the K networks and Ĥ the
    Kozachenko–Leonenko entropy of the flattened weights. With ``gauge="transform"`` the entropy is
    taken of the gauge-fixed weights S(θ) (scale and logit-bias symmetries removed); with
    ``gauge="penalty"`` of θ itself plus the penalty ``γ·mean_k G(θ_k)`` (eq. 10); ``"none"`` uses θ.

    Any target trains (BatchNorm, residual adds, embeddings, RNNs, attention): the generator emits every
    weight (`DeutschGenerator` generates the weights outside the Conv/Dense filter layout with per-tensor
    heads) and the entropy is taken of all of them, flattened. Gauge fixing needs symmetries that only
    some targets have (`hyperkeras.objectives.gauge.check_gauge`): for the others ``gauge="transform"``
    or ``"penalty"`` fails here, naming the layer, and ``gauge="none"`` is the choice.

    Args:
        target: the target architecture, a `hyperkeras.TargetNetwork` or a built keras.Model.
        generator: a weight generator layer mapping ``[K, noise_dim]`` to per-layer filters followed by
            the target's plain tensors (default `DeutschGenerator.from_target(target)`; use
            `DeutschGenerator.paper_config` for Table 2).
        lam: λ, weight of the cross-entropy (paper: 1e3 and 1e5).
        gauge: ``"transform"`` (paper), ``"penalty"`` or ``"none"``.
        gamma: γ, weight of the gauge penalty (``gauge="penalty"`` only).
        num_samples: K, networks per step (paper: 32).
        shared_batch: if False (paper), a training batch of ``K·B`` examples is split so network k
            sees its own B examples; if True all K networks see the same batch.
        entropy_dim: d of eq. 14 (default: the noise dimension, as the paper).
        noise_bound: b of z ~ U[−b, b].
        seed: seed of the noise drawn during training.
        batchnorm_recalibration: at the end of every `fit`, the generator's batch-normalisation
            statistics are recomputed from this many training-mode batches of `num_samples` networks
            (`recalibrate_batchnorm`); 0 keeps the moving averages of training. Without it, networks
            sampled early in training (a few hundred steps) can be far worse than those the loss saw.

    Call arguments:
        x: ``[B, *input_shape]`` images; returns the logits ``[num_samples, B, classes]`` of freshly
            sampled networks.

    Example:

    ```python
    target = hyperkeras.TargetNetwork(hyperkeras.targets.build_model("deutsch_mnist"))
    model = EntropyHypernetwork(target, DeutschGenerator.paper_config(target), lam=1e3)
    model.compile(optimizer=hyperkeras.optimizers.FusedAdam(3e-4))  # or any Keras optimizer
    model.fit(dataset_of_1024_example_batches, steps_per_epoch=100)
    params = model.sample(500, seed=0)           # {name: [500, *shape]}, gauge-fixed
    ```

    Reference:
        Deutsch, "Generating neural networks with neural networks" (2018), arXiv:1801.01952.
    """

    def __init__(
        self,
        target,
        generator=None,
        lam: float = 1e3,
        gauge: str = "transform",
        gamma: float = 1.0,
        num_samples: int = 32,
        shared_batch: bool = False,
        entropy_dim=None,
        noise_bound: float = 1.0,
        seed=None,
        batchnorm_recalibration: int = 50,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(target, keras.Model):
            target = TargetNetwork(target)
        if not isinstance(target, TargetNetwork):
            raise TypeError(f"target must be a hyperkeras.TargetNetwork or a keras.Model, got {type(target).__name__}.")
        if gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}.")
        if int(num_samples) < 2:
            raise ValueError(f"num_samples must be >= 2 (the entropy needs nearest neighbours), got {num_samples}.")
        if float(lam) < 0 or float(gamma) < 0 or float(noise_bound) <= 0:
            raise ValueError(f"lam and gamma must be >= 0 and noise_bound > 0; got {lam}, {gamma}, {noise_bound}.")
        if int(batchnorm_recalibration) < 0:
            raise ValueError(f"batchnorm_recalibration must be >= 0 batches, got {batchnorm_recalibration!r}.")
        self._target = target
        if gauge != "none":
            check_gauge(target)  # names the layer whose symmetry cannot be proved
        self.generator = generator if generator is not None else DeutschGenerator.from_target(target)
        check_layout(self.generator, target)
        self.noise_dim = int(self.generator.noise_dim)
        self.lam = float(lam)
        self.gauge = gauge
        self.gamma = float(gamma)
        self.num_samples = int(num_samples)
        self.shared_batch = bool(shared_batch)
        self.entropy_dim = entropy_dim
        self.noise_bound = float(noise_bound)
        self.seed = seed
        self.batchnorm_recalibration = int(batchnorm_recalibration)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ce_tracker = keras.metrics.Mean(name="cross_entropy")
        self.entropy_tracker = keras.metrics.Mean(name="entropy")
        self.gauge_tracker = keras.metrics.Mean(name="gauge")
        self.acc_tracker = keras.metrics.Mean(name="accuracy")
        if not self.generator.built:
            self.generator.build((None, self.noise_dim))
        self.built = True

    @property
    def target(self) -> TargetNetwork:
        """The `TargetNetwork` whose weights are generated."""
        return self._target

    @property
    def metrics(self):
        return [self.loss_tracker, self.ce_tracker, self.entropy_tracker, self.gauge_tracker, self.acc_tracker]

    # ------------------------------------------------------------------ generation
    def generate(self, z, training=False, gauge_fixed=True):
        """Params ``{name: [K, *shape]}`` for noise `z` ``[K, noise_dim]`` (gauge-fixed unless asked not to,
        or when the model uses ``gauge="none"``)."""
        outputs = self.generator(z, training=training)
        if hasattr(self.generator, "to_params"):
            params = self.generator.to_params(self._target, outputs)
        else:  # a generator of filters only (checked against the target in __init__)
            params = self._target.from_filters({l.name: f for l, f in zip(self._target.layers, outputs)})
        if gauge_fixed and self.gauge == "transform":
            params = gauge_transform(self._target, params)
        return params

    def sample_noise(self, n, seed=0):
        """z ~ U[−b, b]^noise_dim, ``[n, noise_dim]``, from the stateless seed ``[seed, 0]``."""
        seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
        return tf.random.stateless_uniform(
            [n, self.noise_dim], seed=seed, minval=-self.noise_bound, maxval=self.noise_bound
        )

    def sample(self, n, seed=0, gauge_fixed=True):
        """`n` generated networks as params ``{name: [n, *shape]}`` (inference-mode batch norm;
        deterministic in `seed`; usable inside tf.function)."""
        return self.generate(self.sample_noise(n, seed), training=False, gauge_fixed=gauge_fixed)

    def sample_flat(self, n, seed=0, gauge_fixed=True):
        """`n` generated networks as one matrix ``[n, target.num_params]``."""
        return self._target.flatten(self.sample(n, seed, gauge_fixed))

    def recalibrate_batchnorm(self, num_batches: int = 50, seed: int = 0) -> int:
        """Recomputes the generator's batch-normalisation statistics under its current weights: the
        average batch mean and variance over `num_batches` training-mode batches of `num_samples`
        networks (stateless noise from `seed`; the training noise stream is not touched). `fit` calls
        this at its end (``batchnorm_recalibration`` batches). Returns the number of batch-normalisation
        layers updated."""
        z = tf.random.stateless_uniform(
            [int(num_batches), self.num_samples, self.noise_dim], seed=tf.constant([int(seed), 1], tf.int64),
            minval=-self.noise_bound, maxval=self.noise_bound,
        )
        return recalibrate_batchnorm(self.generator, lambda i: self.generator(z[i], training=True), num_batches)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, then `recalibrate_batchnorm` (see ``batchnorm_recalibration``)."""
        history = super().fit(*args, **kwargs)
        if self.batchnorm_recalibration:
            self.recalibrate_batchnorm(self.batchnorm_recalibration)
        return history

    def call(self, x, training=False):
        z = keras.random.uniform(
            [self.num_samples, self.noise_dim], -self.noise_bound, self.noise_bound, seed=self.seed_generator
        )
        return self._target.apply(self.generate(z, training=training, gauge_fixed=False), x)

    # ------------------------------------------------------------------ training
    def _objective(self, x, y, training):
        k = self.num_samples
        z = keras.random.uniform([k, self.noise_dim], -self.noise_bound, self.noise_bound, seed=self.seed_generator)
        params = self.generate(z, training=training, gauge_fixed=False)
        if not self.shared_batch:
            b = x.shape[0]
            if b is not None and b % k:
                raise ValueError(
                    f"with shared_batch=False the batch size ({b}) must be a multiple of num_samples ({k}): "
                    f"network k gets its own batch_size/num_samples examples."
                )
            x = tf.reshape(x, [k, -1, *x.shape[1:]])
            y = tf.reshape(y, [k, -1])
        logits = self._target.as_logits(self._target.apply(params, x))  # [K, B, C]
        y = tf.cast(y, tf.int32)
        if self.shared_batch:
            y = tf.broadcast_to(y[None], tf.shape(logits)[:2])
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32))
        gauge = tf.reduce_mean(gauge_penalty(self._target, params)) if self.gauge != "none" else tf.constant(0.0)
        fixed = gauge_transform(self._target, params) if self.gauge == "transform" else params
        dim = self.entropy_dim if self.entropy_dim is not None else self.noise_dim
        entropy = kozachenko_leonenko_entropy(self._target.flatten(fixed), dim=dim)
        loss = self.lam * ce - entropy
        if self.gauge == "penalty":
            loss = loss + self.gamma * gauge
        return loss, ce, entropy, gauge, acc

    def _update_metrics(self, loss, ce, entropy, gauge, acc):
        self.loss_tracker.update_state(loss)
        self.ce_tracker.update_state(ce)
        self.entropy_tracker.update_state(entropy)
        self.gauge_tracker.update_state(gauge)
        self.acc_tracker.update_state(acc)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            loss, ce, entropy, gauge, acc = self._objective(x, y, training=True)
            # The objective is a per-replica mean: divide by the replica count so the summed
            # gradients equal the gradient of the global mean.
            scaled = loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._update_metrics(loss, ce, entropy, gauge, acc)

    def test_step(self, data):
        x, y = data[0], data[1]
        return self._update_metrics(*self._objective(x, y, training=False))

    # ------------------------------------------------------------------ serialisation
    def get_config(self):
        return {
            "name": self.name,
            "target": keras.saving.serialize_keras_object(self._target.model),
            "generator": keras.saving.serialize_keras_object(self.generator),
            "lam": self.lam,
            "gauge": self.gauge,
            "gamma": self.gamma,
            "num_samples": self.num_samples,
            "shared_batch": self.shared_batch,
            "entropy_dim": self.entropy_dim,
            "noise_bound": self.noise_bound,
            "seed": self.seed,
            "batchnorm_recalibration": self.batchnorm_recalibration,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["target"] = keras.saving.deserialize_keras_object(config["target"])
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        return cls(**config)
