"""`HyperGAN` (Ratzlaff & Fuxin): mixer + per-layer generators + latent discriminator, a `Hypernetwork` preset."""

from __future__ import annotations

import keras
import tensorflow as tf

from hyperkeras.generators.hypergan import HyperGANGenerator
from hyperkeras.models.hypernetwork import TASKS, Hypernetwork, as_target, positive_int
from hyperkeras.objectives.latent_gan import GENERATOR_LOSSES, LatentGAN
from hyperkeras.optimizers import FusedAdam

__all__ = ["HyperGAN", "TASKS", "GENERATOR_LOSSES"]


@keras.saving.register_keras_serializable(package="hyperkeras")
class HyperGAN(Hypernetwork):
    """HyperGAN: a GAN-regularised hypernetwork that generates all weights of a target network.

    A preset of `Hypernetwork`: ``Hypernetwork(target, HyperGANGenerator.from_target(target, ...),
    [LatentGAN(beta, ...)], shared_batch=True)``. Noise s ~ N(0, I_j) goes through the mixer Q to N layer
    codes q_1..q_N of size d (N = number of Keras layers of the target that own trainable weights);
    generator G_i turns q_i into all weights of target layer i, so every weight of any target is
    generated. Conv/Dense kernels and biases are He-scaled (``sqrt(2 / fan_in)``, fan_in = weights feeding
    one output unit); every other tensor (BatchNorm/LayerNorm γ and β, embeddings, RNN and attention
    weights: ``target.plain_specs``) is ``initial value + plain_scale · output``: offset by the wrapped
    model's value of that tensor when the HyperGAN is built (so BN γ starts near 1, β near 0, an LSTM's
    forget bias near 1) and spread at the Glorot scale of its shape
    (`hyperkeras.generators.hypergan.plain_scale`). Training (eq. 2) minimises the task loss of the
    generated networks (cross-entropy or MSE, eqs. 4–5) plus β times an adversarial term that pushes the
    codes towards P = N(0, I_d), judged by the latent discriminator D (eq. 3, `LatentGAN`). D and (Q, G)
    have separate optimizers. D outputs logits used once by a logits loss, and D's own update sees the
    codes through `tf.stop_gradient`, so the discriminator step never moves the mixer (both defects of
    the original code).

    Metrics: ``loss``, ``task_loss``, ``adversarial``, ``d_loss`` and (classification) ``accuracy``.

    Args:
        target: the target architecture: a `hyperkeras.TargetNetwork`, a `keras.Model`, or a registered
            target name (e.g. ``"hypergan_mnist"``). Available afterwards as ``.target``.
        noise_dim: j, the size of s (paper: 256).
        code_dim: d, the size of each layer code (paper: 128 for MNIST, 256 for CIFAR-10, 64 for the
            1-D regression).
        mixer_units: hidden widths of Q (paper: 512).
        generator_units: hidden widths of each G_i (paper: 512; 128 for the regression).
        discriminator_units: hidden widths of D (paper: 512).
        activation: hidden activation of Q, G_i and D (paper: ReLU).
        beta: β, the weight of the adversarial term.
        num_networks: networks sampled per training step (each sees the whole batch) and averaged by ``call``.
        task: ``"classification"`` (cross-entropy on integer or one-hot labels) or ``"regression"`` (MSE).
        generator_loss: adversarial term of (Q, G): ``"non_saturating"`` (−log D(q), the usual GAN
            practice) or ``"minimax"`` (log(1 − D(q)), eq. 2 taken literally).
        seed: seed of the noise stream of training and evaluation steps (`seed_generator`, checkpointed
            with the model: a resumed run draws exactly what an uninterrupted run would) and of the fixed
            networks of ``call``.

    Call arguments:
        inputs: a batch ``[B, *target input shape]``.

    Returns (``call``, ``predict``): the mean class probabilities ``[B, C]`` (regression: the mean output
    ``[B, ...]``) of the ``num_networks`` networks ``sample(num_networks, seed)``. For the networks
    themselves use `sample` and ``target.apply``.

    Example:

    ```python
    model = hyperkeras.models.HyperGAN("hypergan_mnist", beta=1.0, num_networks=16)
    model.compile(optimizer=hyperkeras.optimizers.FusedAdam(1e-3),  # or any Keras optimizer
                  discriminator_optimizer=hyperkeras.optimizers.FusedAdam(1e-4))
    model.pretrain_mixer(steps=500)
    model.fit(train_ds, epochs=1, steps_per_epoch=1000, shuffle=False)  # a tf.data.Dataset: shuffle it there
    params = model.sample(100, seed=1)                    # {name: [100, *shape]}
    logits = model.target.apply(params, images)            # [100, B, 10]
    ```

    Reference:
        Ratzlaff & Fuxin, "HyperGAN: Generating Diverse, Performant Neural Networks with a GAN" (2019),
        §3, eqs. 2–5, Fig. 1, Appendix A.4.
    """

    def __init__(
        self,
        target,
        noise_dim=256,
        code_dim=128,
        mixer_units=(512,),
        generator_units=(512,),
        discriminator_units=(512,),
        activation="relu",
        beta=1.0,
        num_networks=32,
        task="classification",
        generator_loss="non_saturating",
        seed=0,
        **kwargs,
    ):
        target = as_target(target)
        positive_int("num_networks", num_networks)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        generator = HyperGANGenerator.from_target(
            target,
            noise_dim=noise_dim,
            code_dim=code_dim,
            mixer_units=mixer_units,
            generator_units=generator_units,
            activation=activation,
            name="hyper_gan_generator",
        )
        latent_gan = LatentGAN(
            beta=beta,
            discriminator_units=discriminator_units,
            activation=activation,
            generator_loss=generator_loss,
            name="latent_gan",
        )
        super().__init__(
            target,
            generator,
            [latent_gan],
            num_networks=num_networks,
            task=task,
            shared_batch=True,
            target_training=True,
            seed=int(seed),
            **kwargs,
        )
        self.code_dim = generator.code_dim
        self.activation = activation
        self.mixer_units = generator.mixer_units
        self.generator_units = generator.generator_units
        self.discriminator_units = latent_gan.discriminator_units
        self.beta = latent_gan.beta
        self.generator_loss = latent_gan.generator_loss

    def _track_parts(self, generator, regularizers):
        super()._track_parts(generator, regularizers)
        # The parts under their 0.1 names (and, with `layers` and `__dir__` below, the 0.1 layout of the
        # weights in `.keras` files, so files saved by hyperkeras 0.1 load).
        self.mixer = generator.mixer
        self.generators = generator.layer_generators
        self.discriminator = regularizers[0].discriminator

    @property
    def layers(self):
        """The mixer, the layer generators and the discriminator."""
        return [self.mixer, *self.generators, self.discriminator]

    def __dir__(self):
        # `.keras` files store weights under the first attribute (in sorted order) that reaches them;
        # without "generator" the mixer, layer generators and discriminator keep their 0.1 places.
        return [name for name in super().__dir__() if name != "generator"]

    @property
    def latent_gan(self) -> LatentGAN:
        """The adversarial regulariser (discriminator + its optimizer)."""
        return self.regularizers[0]

    # ------------------------------------------------------------------ variables
    @property
    def discriminator_variables(self):
        """Trainable variables of D (updated by ``discriminator_optimizer``)."""
        return list(self.discriminator.trainable_variables)

    # ------------------------------------------------------------------ generation
    def codes(self, noise, training=False):
        """Mixer output Q(s): ``[K, num_layers, code_dim]`` (one code per layer generator)."""
        return self.generator.codes(noise, training=training)

    def generate(self, noise, training=False):
        """Weights of K networks from noise ``[K, noise_dim]``: a params dict ``{name: [K, *shape]}``."""
        return super().generate(noise, training=training)

    def _params_from_codes(self, codes, training=False):
        return self.generator.params_from_codes(codes, training=training)

    def sample(self, n, seed=0):
        """Weights of `n` new networks, ``{name: [n, *shape]}``; the same (n, seed) always gives the same
        networks. Works inside `tf.function` (n and seed may be tensors; a Python int n keeps the
        sample axis static)."""
        return super().sample(n, seed)

    # ------------------------------------------------------------------ losses
    def compute_losses(self, x, y, training=True, noise=None, prior=None, sample_weight=None):
        """All terms of one step (`Hypernetwork.compute_losses`): ``loss`` = task_loss + β·adversarial,
        ``task_loss``, ``adversarial`` (the (Q, G) term, through D into the codes), ``d_loss`` (D's loss on
        prior samples vs. *stopped* codes), ``outputs`` [K, B, ...], ``codes``. `noise` and `prior`
        (``[K, num_layers, code_dim]``) fix the random inputs."""
        return super().compute_losses(x, y, sample_weight=sample_weight, training=training, noise=noise, prior=prior)

    # ------------------------------------------------------------------ Keras training API
    def compile(self, optimizer="adam", discriminator_optimizer="adam", **kwargs):
        """Configures training.

        Args:
            optimizer: optimizer of the mixer and layer generators (instance, name or config).
            discriminator_optimizer: optimizer of the latent discriminator.
            **kwargs: passed to `Hypernetwork.compile` (e.g. ``run_eagerly``, ``steps_per_execution``,
                ``jit_compile``); ``loss`` and ``metrics`` are not taken (the model has its own).
        """
        super().compile(
            optimizer=optimizer, regularizer_optimizers={self.latent_gan.name: discriminator_optimizer}, **kwargs
        )
        self.discriminator_optimizer = self.latent_gan.optimizer

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["discriminator_optimizer"] = config.pop("regularizer_optimizers")[self.latent_gan.name]
        return config

    def compile_from_config(self, config):
        config = dict(config)
        config["optimizer"] = keras.optimizers.deserialize(config["optimizer"])
        config["discriminator_optimizer"] = keras.optimizers.deserialize(config["discriminator_optimizer"])
        self.compile(**config)

    # ------------------------------------------------------------------ mixer pretraining
    def latent_moment_distance(self, codes):
        """Squared distances of the codes' mean and covariance from those of P = N(0, I):
        ``(‖mean‖² / D, ‖cov − I‖_F² / D)`` over the flattened N·d code, D = N·d."""
        flat = tf.reshape(codes, [tf.shape(codes)[0], -1])
        dim = tf.cast(tf.shape(flat)[1], flat.dtype)
        n = tf.cast(tf.shape(flat)[0], flat.dtype)
        mean = tf.reduce_mean(flat, axis=0)
        centred = flat - mean
        cov = tf.matmul(centred, centred, transpose_a=True) / (n - 1.0)
        eye = tf.eye(tf.shape(flat)[1], dtype=flat.dtype)
        return tf.reduce_sum(tf.square(mean)) / dim, tf.reduce_sum(tf.square(cov - eye)) / dim

    def pretrain_mixer(self, steps=1000, batch_size=1024, learning_rate=1e-3, seed=0, verbose=1):
        """Pretrains the mixer so that the mean and covariance of Q(s) match P = N(0, I) (paper §4.1).

        Minimises ``‖mean‖²/D + ‖cov − I‖_F²/D`` of the flattened codes of `batch_size` noise samples
        per step with Adam (an optimizer private to this call). Returns the two distances before and
        after, measured on a fresh batch of ``max(batch_size, 4096)`` samples.
        """
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}.")
        positive_int("batch_size", batch_size)
        opt = FusedAdam(learning_rate)
        variables = list(self.mixer.trainable_variables)
        opt.build(variables)

        def measure():
            noise = self.sample_noise(max(batch_size, 4096), seed + 10_000_019)
            m, c = self.latent_moment_distance(self.codes(noise))
            return float(m), float(c)

        @tf.function
        def step(i):
            noise = self.sample_noise(batch_size, tf.stack([tf.constant(seed, tf.int32), i]))
            with tf.GradientTape() as tape:
                m, c = self.latent_moment_distance(self.mixer(noise, training=True))
                loss = m + c
            opt.apply(tape.gradient(loss, variables), variables)
            return loss

        before = measure()
        bar = keras.utils.Progbar(steps, verbose=verbose, unit_name="step") if verbose and steps else None
        for i in range(steps):
            loss = step(tf.constant(i + 1, tf.int32))
            if bar is not None and ((i + 1) % 50 == 0 or i + 1 == steps):
                bar.update(i + 1, [("moment_loss", float(loss))])
        after = measure()
        return {"mean_before": before[0], "cov_before": before[1], "mean_after": after[0], "cov_after": after[1]}

    # ------------------------------------------------------------------ serialisation
    def get_config(self):
        config = keras.Model.get_config(self)
        config.update(
            target=keras.saving.serialize_keras_object(self.target.model),
            noise_dim=self.noise_dim,
            code_dim=self.code_dim,
            mixer_units=list(self.mixer_units),
            generator_units=list(self.generator_units),
            discriminator_units=list(self.discriminator_units),
            activation=self.activation,
            beta=self.beta,
            num_networks=self.num_networks,
            task=self.task,
            generator_loss=self.generator_loss,
            seed=self.seed,
            state_calibration=self.state_calibration,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["target"] = as_target(config["target"])
        return cls(**config)
