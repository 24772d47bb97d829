"""`LatentGAN`: HyperGAN's adversarial term on the generator's codes, with its own discriminator D
(`LatentDiscriminator`) and optimizer."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from hyperkeras.generators.base import tfd
from hyperkeras.generators.stacks import build_stack, check_units, dense_layers, run_stack
from hyperkeras.objectives.base import AuxiliaryTrainer, RegularizerTerms, StepInputs

GENERATOR_LOSSES = ("non_saturating", "minimax")


@keras.saving.register_keras_serializable(package="hyperkeras")
class LatentDiscriminator(keras.layers.Layer):
    """HyperGAN discriminator D on latent codes: one logit per code ("is this a sample of P = N(0, I)?").

    Outputs are *logits*, meant for a single logits loss (eq. 3 with log D = −softplus(−logit) and
    log(1 − D) = −softplus(logit)); there is no sigmoid inside (the original code applied one and then a
    loss "with logits" again).

    Args:
        hidden_units: widths of the hidden layers (paper: 512).
        activation: hidden activation.

    Call arguments:
        inputs: codes ``[..., code_dim]``.

    Returns:
        logits ``[...]``.

    Example:

    ```python
    disc = LatentDiscriminator()
    logits = disc(keras.random.normal([32, 3, 128]))   # [32, 3]
    ```

    Reference:
        Ratzlaff & Fuxin, "HyperGAN", eq. 3; Goodfellow et al. (2014).
    """

    def __init__(self, hidden_units=(512, 512), activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = check_units("hidden_units", hidden_units)
        self._activation_config = activation
        self.hidden = dense_layers(self, "hidden", self.hidden_units, activation)
        self.out = keras.layers.Dense(1, name="logit", dtype=self.dtype_policy)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"LatentDiscriminator needs a known code size, got input shape {tuple(input_shape)}.")
        shape = (None, input_shape[-1])
        build_stack([*self.hidden, self.out], shape)
        self.built = True

    def call(self, inputs):
        h = run_stack(self.hidden, inputs)
        return ops.squeeze(self.out(h), -1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), activation=self._activation_config)
        return config


@keras.saving.register_keras_serializable(package="hyperkeras")
class LatentGAN(AuxiliaryTrainer):
    """Pushes a generator's latent codes towards a prior P = N(0, I) with a discriminator (HyperGAN, eqs. 2–3).

    The generator's auxiliary output ``codes`` ``[K, N, d]`` (`HyperGANGenerator`) is judged code by code
    by a `LatentDiscriminator` D (logits). The hypernetwork's loss gets ``β · adversarial`` with
    ``adversarial = mean_k Σ_i −log D(q_ki)`` (``"non_saturating"``) or ``mean_k Σ_i log(1 − D(q_ki))``
    (``"minimax"``, eq. 2 taken literally); gradients flow through D into the codes but D is not updated by
    it. D is trained by its own optimizer on ``d_loss = mean_k Σ_i −log D(p_ki) − log(1 − D(q_ki))`` (eq. 3)
    with p ~ P (`prior`, a TFP distribution) and the codes held constant (`tf.stop_gradient`), so D's
    update never moves the generator.

    Metrics: ``adversarial`` (unweighted) and ``d_loss``.

    Args:
        beta: β, the weight of the adversarial term.
        discriminator_units: hidden widths of D (paper: 512).
        activation: hidden activation of D.
        generator_loss: ``"non_saturating"`` or ``"minimax"``.
        optimizer: D's optimizer (instance, name or config), created and built when the hypernetwork is
            compiled; ``compile(regularizer_optimizers={name: ...})`` (HyperGAN:
            ``discriminator_optimizer=``) replaces it.
        aux_key: name of the generator's auxiliary output holding the codes.

    Example:

    ```python
    model = hyperkeras.models.Hypernetwork(
        target, HyperGANGenerator.from_target(target), regularizers=[LatentGAN(beta=1.0, optimizer="adam")])
    ```

    Reference:
        Ratzlaff & Fuxin, "HyperGAN" (2019), §3, eqs. 2–3; Goodfellow et al. (2014).
    """

    def __init__(
        self,
        beta=1.0,
        discriminator_units=(512,),
        activation="relu",
        generator_loss="non_saturating",
        optimizer="adam",
        aux_key="codes",
        **kwargs,
    ):
        super().__init__(**kwargs)
        beta = float(beta)
        if not np.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {beta}.")
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {GENERATOR_LOSSES}, got {generator_loss!r}.")
        self.beta = beta
        self.discriminator_units = tuple(int(u) for u in discriminator_units)
        self.activation = activation
        self.generator_loss = generator_loss
        self.aux_key = str(aux_key)
        self._optimizer_spec = (
            optimizer if isinstance(optimizer, (str, dict)) else keras.optimizers.serialize(optimizer)
        )
        self.optimizer = None
        self.discriminator = LatentDiscriminator(self.discriminator_units, activation, name="discriminator")

    @property
    def metric_names(self):
        return ("adversarial", "d_loss")

    @property
    def prior(self):
        """P, the distribution of each code entry: ``tfd.Normal(0, 1)``."""
        return tfd().Normal(0.0, 1.0)

    def sample_prior(self, shape, seed):
        """A sample of `prior` of `shape` for the stateless `seed` pair. This class's N(0, 1) is drawn with
        `tf.random` alone — the draw TFP makes, bit for bit (tests/test_noise.py), without importing TFP
        into the first training step; a subclass's own `prior` is sampled through TFP."""
        seed = tf.cast(seed, tf.int32)
        if type(self).prior is LatentGAN.prior:
            return tf.random.stateless_normal(shape, seed)
        return self.prior.sample(shape, seed=seed)

    def setup(self, target, generator, num_networks):
        shape = dict(generator.aux_shapes).get(self.aux_key)
        if shape is None:
            raise ValueError(
                f"LatentGAN needs the generator's auxiliary output {self.aux_key!r} (latent codes); "
                f"{type(generator).__name__} provides {sorted(generator.aux_shapes)}."
            )
        if not self.discriminator.built:
            self.discriminator.build((None, int(shape[-1])))
        self.built = True

    def build_optimizer(self, optimizer=None):
        spec = self._optimizer_spec if optimizer is None else optimizer
        self.optimizer = keras.optimizers.get(spec)
        self.optimizer.build(self.discriminator.trainable_variables)
        return self.optimizer

    def compute(self, step: StepInputs) -> RegularizerTerms:
        """The adversarial term and D's loss; ``step.extra["prior"]`` (a sample of P shaped like the codes)
        replaces the draw from `prior` with the step's seed."""
        codes, training, seed, prior = step.aux[self.aux_key], step.training, step.seed, step.extra.get("prior")
        # Adversarial term of the generator: gradients flow through D into the codes.
        logits_q = self.discriminator(codes, training=training)  # [K, N]
        if self.generator_loss == "non_saturating":
            adv = tf.reduce_mean(tf.reduce_sum(tf.nn.softplus(-logits_q), axis=-1))  # −Σ_i log D(q_i)
        else:
            adv = -tf.reduce_mean(tf.reduce_sum(tf.nn.softplus(logits_q), axis=-1))  # Σ_i log(1 − D(q_i))
        # D's own loss (eq. 3): the codes are constants here, so D's update cannot reach the generator.
        if prior is None:
            if seed is None:
                raise ValueError("LatentGAN needs a stateless `seed` pair in the step (or a `prior` sample).")
            prior = self.sample_prior(tf.shape(codes), seed)
        prior = tf.cast(prior, codes.dtype)
        logits_p = self.discriminator(prior, training=training)
        logits_q_stopped = self.discriminator(tf.stop_gradient(codes), training=training)
        d_loss = tf.reduce_mean(tf.reduce_sum(tf.nn.softplus(-logits_p) + tf.nn.softplus(logits_q_stopped), axis=-1))
        return RegularizerTerms(self.beta * adv, {"adversarial": adv, "d_loss": d_loss}, own_loss=d_loss)

    def get_config(self):
        config = super().get_config()
        optimizer = keras.optimizers.serialize(self.optimizer) if self.optimizer is not None else self._optimizer_spec
        config.update(
            beta=self.beta,
            discriminator_units=list(self.discriminator_units),
            activation=self.activation,
            generator_loss=self.generator_loss,
            optimizer=optimizer,
            aux_key=self.aux_key,
        )
        return config
