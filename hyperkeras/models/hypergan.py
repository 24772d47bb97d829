"""`HyperGAN`: mixer + per-layer generators + latent discriminator as one `keras.Model` (Ratzlaff & Fuxin)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hyperkeras.generators.hypergan import LatentDiscriminator, LayerGenerator, Mixer, plain_initial_values, plain_scale
from hyperkeras.optimizers import FusedAdam
from hyperkeras.targets import TargetNetwork, build_model

TASKS = ("classification", "regression")
GENERATOR_LOSSES = ("non_saturating", "minimax")


def _as_target(target):
    if isinstance(target, TargetNetwork):
        return target
    if isinstance(target, str):
        return TargetNetwork(build_model(target))
    if isinstance(target, keras.Model):
        return TargetNetwork(target)
    if isinstance(target, dict):  # a serialised keras.Model (from get_config)
        return TargetNetwork(keras.saving.deserialize_keras_object(target))
    raise TypeError(
        "target must be a hyperkeras.TargetNetwork, a keras.Model or a registered target name "
        f"(hyperkeras.targets.available_targets()), got {type(target).__name__}."
    )


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="hyperkeras")
class HyperGAN(keras.Model):
    """HyperGAN: a GAN-regularised hypernetwork that generates all weights of a target network.

    Noise s ~ N(0, I_j) goes through the mixer Q to N layer codes q_1..q_N of size d (N = number of
    Keras layers of the target that own trainable weights); generator G_i turns q_i into all weights of
    target layer i, so every weight of any target is generated. Conv/Dense kernels and biases are
    He-scaled (``sqrt(2 / fan_in)``, fan_in = weights feeding one output unit); every other tensor
    (BatchNorm/LayerNorm γ and β, embeddings, RNN and attention weights: ``target.plain_specs``) is
    ``initial value + plain_scale · output``: offset by the wrapped model's value of that tensor when the
    HyperGAN is built (so BN γ starts near 1, β near 0, an LSTM's forget bias near 1) and spread at the
    Glorot scale of its shape (`hyperkeras.generators.hypergan.plain_scale`). Training
    (eq. 2) minimises the task loss of the generated networks (cross-entropy or MSE, eqs. 4–5) plus
    β times an adversarial term that pushes the codes towards P = N(0, I_d), judged by the latent
    discriminator D (eq. 3). D and (Q, G) have separate optimizers. D outputs logits used once by a
    logits loss, and D's own update sees the codes through `tf.stop_gradient`, so the discriminator
    step never moves the mixer (both defects of the original code).

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
        num_networks: networks sampled per training step (each sees the whole batch) and by ``call``.
        task: ``"classification"`` (cross-entropy on integer labels) or ``"regression"`` (MSE).
        generator_loss: adversarial term of (Q, G): ``"non_saturating"`` (−log D(q), the usual GAN
            practice) or ``"minimax"`` (log(1 − D(q)), eq. 2 taken literally).
        seed: base seed of the noise drawn in training steps (stateless: step k of a resumed run draws
            exactly what an uninterrupted run would) and of ``call``.

    Call arguments:
        inputs: a batch ``[B, *target input shape]``.

    Returns (``call``): the outputs ``[num_networks, B, *target output]`` of ``num_networks``
    networks sampled with ``seed`` (deterministic; use ``sample`` for fresh networks).

    Example:

    ```python
    model = hyperkeras.models.HyperGAN("hypergan_mnist", beta=1.0, num_networks=16)
    model.compile(optimizer=hyperkeras.optimizers.FusedAdam(1e-3),  # or any Keras optimizer
                  discriminator_optimizer=hyperkeras.optimizers.FusedAdam(1e-4))
    model.pretrain_mixer(steps=500)
    model.fit(train_ds, epochs=1, steps_per_epoch=1000)
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
        super().__init__(**kwargs)
        self.target = _as_target(target)
        self.noise_dim = _positive_int("noise_dim", noise_dim)
        self.code_dim = _positive_int("code_dim", code_dim)
        self.num_networks = _positive_int("num_networks", num_networks)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {GENERATOR_LOSSES}, got {generator_loss!r}.")
        beta = float(beta)
        if not np.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {beta}.")
        self.beta = beta
        self.task = task
        self.generator_loss = generator_loss
        self.seed = int(seed)
        self.activation = activation
        self.mixer_units = tuple(mixer_units)
        self.generator_units = tuple(generator_units)
        self.discriminator_units = tuple(discriminator_units)

        # One layer generator per Keras layer owning trainable weights, in the order of its first weight.
        groups = {}
        for spec in self.target.param_specs:
            groups.setdefault(spec.layer, []).append(spec)
        fan_ins = {l.name: l.filter_size - (l.bias is not None) for l in self.target.layers}
        plain = {s.name for s in self.target.plain_specs}
        initial = plain_initial_values(self.target)
        self.mixer = Mixer(len(groups), self.code_dim, self.mixer_units, activation, name="mixer")
        self.generators = []
        for layer, specs in groups.items():
            shapes = {s.name: s.shape for s in specs}
            own = [s for s in specs if s.name in plain]
            scales = {s.name: plain_scale(s.shape, s.role) for s in own} or None
            offsets = {s.name: float(np.mean(initial[s.name])) for s in own} or None
            self.generators.append(LayerGenerator(
                shapes, fan_ins.get(layer), self.generator_units, activation, scales=scales, offsets=offsets,
                name=f"generator_{layer}",
            ))
        self.discriminator = LatentDiscriminator(self.discriminator_units, activation, name="discriminator")
        self.mixer.build((None, self.noise_dim))
        for gen in self.generators:
            gen.build((None, self.code_dim))
            if gen.offsets:
                gen.set_offsets({name: initial[name] for name in gen.offsets})
        self.discriminator.build((None, self.code_dim))

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.adversarial_tracker = keras.metrics.Mean(name="adversarial")
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.built = True

    # ------------------------------------------------------------------ variables
    @property
    def generator_variables(self):
        """Trainable variables of the mixer and the layer generators (updated by ``optimizer``)."""
        out = list(self.mixer.trainable_variables)
        for gen in self.generators:
            out += gen.trainable_variables
        return out

    @property
    def discriminator_variables(self):
        """Trainable variables of D (updated by ``discriminator_optimizer``)."""
        return list(self.discriminator.trainable_variables)

    # ------------------------------------------------------------------ generation
    def codes(self, noise, training=False):
        """Mixer output Q(s): ``[K, num_layers, code_dim]`` (one code per layer generator)."""
        noise = tf.convert_to_tensor(noise, self.compute_dtype)
        if noise.shape.rank != 2 or (noise.shape[-1] is not None and noise.shape[-1] != self.noise_dim):
            raise ValueError(f"noise must have shape [K, {self.noise_dim}] (noise_dim), got {noise.shape}.")
        return self.mixer(noise, training=training)

    def generate(self, noise, training=False):
        """Weights of K networks from noise ``[K, noise_dim]``: a params dict ``{name: [K, *shape]}``."""
        return self._params_from_codes(self.codes(noise, training), training)

    def _params_from_codes(self, codes, training=False):
        params = {}
        for i, gen in enumerate(self.generators):
            params.update(gen(codes[:, i, :], training=training))
        return params

    def sample_noise(self, n, seed=0):
        """s ~ N(0, I_j) for n networks, drawn statelessly from ``[seed, 0]``: ``[n, noise_dim]``."""
        seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
        return tf.random.stateless_normal(tf.stack([n, self.noise_dim]), seed=seed, dtype=self.compute_dtype)

    def sample(self, n, seed=0):
        """Weights of `n` new networks, ``{name: [n, *shape]}``; the same (n, seed) always gives the same
        networks. Works inside `tf.function` (n and seed may be tensors; a Python int n keeps the
        sample axis static)."""
        if isinstance(n, (int, np.integer)):
            _positive_int("n", n)
        return self.generate(self.sample_noise(n, seed))

    def call(self, inputs, training=False):
        params = self.sample(self.num_networks, self.seed)
        return self.target.apply(params, inputs, training=training)

    # ------------------------------------------------------------------ losses
    def _task_loss_per_example(self, y, outputs):
        """Per-example task loss averaged over networks: outputs [K, B, ...] -> [B]."""
        if self.task == "classification":
            y = tf.cast(tf.reshape(y, [-1]), tf.int32)
            k = tf.shape(outputs)[0]
            labels = tf.broadcast_to(y[None], [k, tf.shape(y)[0]])
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=self.target.as_logits(outputs))
            return tf.reduce_mean(ce, axis=0)
        y = tf.cast(y, outputs.dtype)
        y = tf.reshape(y, tf.shape(outputs)[1:])
        sq = tf.square(outputs - y[None])
        return tf.reduce_mean(tf.reshape(sq, [tf.shape(sq)[0], tf.shape(sq)[1], -1]), axis=[0, 2])

    def _step_seeds(self, salt):
        """Stateless seeds for this step: depend on (seed, salt, step) only. Every replica of a
        distributed run therefore draws the SAME K networks and evaluates them on its share of the
        global batch, which makes a distributed step equal to a single-device step."""
        step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else tf.constant(0, tf.int64)
        return tf.stack([tf.constant(self.seed * 2 + salt, tf.int64), tf.cast(step, tf.int64)])

    def compute_losses(self, x, y, training=True, noise=None, prior=None):
        """All terms of one training step (used by `train_step`; handy for inspection and tests).

        Returns a dict with ``task_loss`` (per-replica share of the global-batch mean), ``adversarial``
        (the (Q, G) adversarial term, through D into the codes), ``d_loss`` (D's loss on prior samples
        vs. *stopped* codes), ``loss`` = task_loss + β·adversarial, ``outputs`` [K, B, ...], ``codes``.
        """
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if noise is None:
            noise = tf.random.stateless_normal(
                [self.num_networks, self.noise_dim], seed=self._step_seeds(0), dtype=self.compute_dtype
            )
        codes = self.codes(noise, training=training)
        params = self._params_from_codes(codes, training=training)
        outputs = self.target.apply(params, x, training=training)
        per_example = self._task_loss_per_example(y, outputs)
        global_batch = tf.shape(per_example)[0] * num_replicas
        task_loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)

        # Adversarial term of (Q, G): gradients flow through D into the codes (D is not updated here).
        logits_q = self.discriminator(codes, training=training)  # [K, N]
        if self.generator_loss == "non_saturating":
            adv = tf.reduce_mean(tf.reduce_sum(tf.nn.softplus(-logits_q), axis=-1))  # −Σ_i log D(q_i)
        else:
            adv = -tf.reduce_mean(tf.reduce_sum(tf.nn.softplus(logits_q), axis=-1))  # Σ_i log(1 − D(q_i))
        adv = adv / tf.cast(num_replicas, adv.dtype)

        # D's own loss (eq. 3): the codes are constants here, so D's update cannot reach the mixer.
        if prior is None:
            prior = tf.random.stateless_normal(tf.shape(codes), seed=self._step_seeds(1), dtype=codes.dtype)
        logits_p = self.discriminator(prior, training=training)
        logits_q_stopped = self.discriminator(tf.stop_gradient(codes), training=training)
        d_loss = tf.reduce_mean(
            tf.reduce_sum(tf.nn.softplus(-logits_p) + tf.nn.softplus(logits_q_stopped), axis=-1)
        ) / tf.cast(num_replicas, codes.dtype)
        return {
            "loss": task_loss + self.beta * adv,
            "task_loss": task_loss,
            "adversarial": adv,
            "d_loss": d_loss,
            "outputs": outputs,
            "codes": codes,
        }

    def _update_metrics(self, terms, y):
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        scale = tf.cast(num_replicas, terms["loss"].dtype)  # metrics show global (unscaled) values
        self.loss_tracker.update_state(terms["loss"] * scale)
        self.task_loss_tracker.update_state(terms["task_loss"] * scale)
        self.adversarial_tracker.update_state(terms["adversarial"] * scale)
        self.d_loss_tracker.update_state(terms["d_loss"] * scale)
        if self.task == "classification":
            pred = tf.argmax(terms["outputs"], axis=-1, output_type=tf.int32)
            y = tf.cast(tf.reshape(y, [1, -1]), tf.int32)
            self.accuracy_tracker.update_state(tf.reduce_mean(tf.cast(pred == y, tf.float32)))

    # ------------------------------------------------------------------ Keras training API
    def compile(self, optimizer="adam", discriminator_optimizer="adam", **kwargs):
        """Configures training.

        Args:
            optimizer: optimizer of the mixer and layer generators (instance, name or config).
            discriminator_optimizer: optimizer of the latent discriminator.
            **kwargs: passed to `keras.Model.compile` (e.g. ``run_eagerly``, ``steps_per_execution``,
                ``jit_compile``); ``loss`` and ``metrics`` are not used (the model has its own).
        """
        for key in ("loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(key) is not None:
                raise ValueError(f"HyperGAN.compile does not take {key!r}: its losses and metrics are built in.")
        super().compile(optimizer=optimizer, **kwargs)
        self.discriminator_optimizer = keras.optimizers.get(discriminator_optimizer)
        if self.discriminator_optimizer is self.optimizer:
            raise ValueError("optimizer and discriminator_optimizer must be two different optimizer objects.")
        self.optimizer.build(self.generator_variables)
        self.discriminator_optimizer.build(self.discriminator_variables)
        self._hypergan_compile_config = {
            "optimizer": keras.optimizers.serialize(self.optimizer),
            "discriminator_optimizer": keras.optimizers.serialize(self.discriminator_optimizer),
            **{k: v for k, v in kwargs.items() if k in ("steps_per_execution", "jit_compile", "run_eagerly")},
        }

    def get_compile_config(self):
        return dict(getattr(self, "_hypergan_compile_config", {}))

    def compile_from_config(self, config):
        config = dict(config)
        config["optimizer"] = keras.optimizers.deserialize(config["optimizer"])
        config["discriminator_optimizer"] = keras.optimizers.deserialize(config["discriminator_optimizer"])
        self.compile(**config)

    @property
    def metrics(self):
        out = [self.loss_tracker, self.task_loss_tracker, self.adversarial_tracker, self.d_loss_tracker]
        if self.task == "classification":
            out.append(self.accuracy_tracker)
        return out

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape(persistent=True) as tape:
            terms = self.compute_losses(x, y, training=True)
        g_vars, d_vars = self.generator_variables, self.discriminator_variables
        g_grads = tape.gradient(terms["loss"], g_vars)
        d_grads = tape.gradient(terms["d_loss"], d_vars)
        del tape
        self.discriminator_optimizer.apply(d_grads, d_vars)
        self.optimizer.apply(g_grads, g_vars)
        self._update_metrics(terms, y)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data[0], data[1]
        noise = self.sample_noise(self.num_networks, self.seed)
        prior = tf.random.stateless_normal(
            [self.num_networks, len(self.generators), self.code_dim], seed=[self.seed, 1], dtype=self.compute_dtype
        )
        terms = self.compute_losses(x, y, training=False, noise=noise, prior=prior)
        self._update_metrics(terms, y)
        return {m.name: m.result() for m in self.metrics}

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
        _positive_int("batch_size", batch_size)
        opt = FusedAdam(learning_rate)
        variables = list(self.mixer.trainable_variables)
        opt.build(variables)

        def measure():
            noise = self.sample_noise(max(batch_size, 4096), seed + 10_000_019)
            m, c = self.latent_moment_distance(self.codes(noise))
            return float(m), float(c)

        @tf.function
        def step(i):
            noise = tf.random.stateless_normal(
                [batch_size, self.noise_dim], seed=tf.stack([tf.constant(seed, tf.int64), i]), dtype=self.compute_dtype
            )
            with tf.GradientTape() as tape:
                m, c = self.latent_moment_distance(self.mixer(noise, training=True))
                loss = m + c
            opt.apply(tape.gradient(loss, variables), variables)
            return loss

        before = measure()
        bar = keras.utils.Progbar(steps, verbose=verbose, unit_name="step") if verbose and steps else None
        for i in range(steps):
            loss = step(tf.constant(i + 1, tf.int64))
            if bar is not None and ((i + 1) % 50 == 0 or i + 1 == steps):
                bar.update(i + 1, [("moment_loss", float(loss))])
        after = measure()
        return {"mean_before": before[0], "cov_before": before[1], "mean_after": after[0], "cov_after": after[1]}

    # ------------------------------------------------------------------ serialisation
    def get_config(self):
        config = super().get_config()
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
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["target"] = _as_target(config["target"])
        return cls(**config)
