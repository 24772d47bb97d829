"""The regulariser contract of `hyperkeras.models.Hypernetwork`: three roles, one step input.

A regulariser is one of three roles, each a subclass of `Regularizer`:

- `LossTerm` — an additive term of the generator's loss, from the generated networks (`Entropy`,
  `FunctionSpaceEntropy`). The common case; several compose by being listed together.
- `AuxiliaryTrainer` — a term that also trains variables of its own with its own optimizer, in the same
  step and from the same networks (`LatentGAN`'s discriminator).
- `UpdateRule` — a rule that owns the generator's gradient: its loss *replaces* the task loss there
  (`SVGD`, a particle method). At most one per hypernetwork.

Every role implements ``compute(step: StepInputs) -> RegularizerTerms``. `StepInputs` is what the
hypernetwork hands over (the generated params, the generator's auxiliary outputs, the batch, the networks'
predictions, a seed, and for an update rule its particles); nothing else reaches a regulariser.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import keras

from hyperkeras.targets.specs import Params  # {name: [K, *shape]}: the K generated networks


class RegularizerTerms(NamedTuple):
    """What a regulariser contributes to one step.

    Attributes:
        loss: scalar added to the generator's loss (already weighted). For an `UpdateRule`, the surrogate
            whose gradient is the generator's update direction (it replaces the task loss there).
        metrics: ``{name: scalar}`` for the names in `Regularizer.metric_names`.
        own_loss: an `AuxiliaryTrainer`'s scalar that its own optimizer minimises over its own variables
            (e.g. a discriminator's loss); None for the other roles.
    """

    loss: Any
    metrics: dict
    own_loss: Any = None


class StepInputs(NamedTuple):
    """Everything a regulariser sees of one step (training or evaluation) of a `Hypernetwork`.

    Attributes:
        target: the `hyperkeras.TargetNetwork`.
        params: the K generated networks, ``{name: [K, *shape]}``.
        aux: the generator's auxiliary outputs ``{name: [K, ...]}`` (e.g. HyperGAN's ``codes``).
        training: whether this is a training step (training mode of the regulariser's own layers).
        seed: a stateless seed pair for any randomness of the term, fixed per step, or None.
        inputs: the batch ``[B, ...]``, or None.
        task: ``"classification"`` or ``"regression"``.
        predictions: the K networks' log-probabilities ``[K, B, C]`` on the batch (classification) or
            outputs (regression), when every network saw the whole batch; None otherwise.
        particles: for an `UpdateRule`: the K particles ``[K, D]`` (flattened weights, or predictions).
        particle_grads: for an `UpdateRule`: ∇ log p at each particle ``[K, D]`` (no gradient flows).
        extra: further named inputs given to `Hypernetwork.compute_losses` (e.g. `LatentGAN`'s ``prior``).
    """

    target: Any
    params: Params
    aux: dict
    training: bool = False
    seed: Any = None
    inputs: Any = None
    task: str = "classification"
    predictions: Any = None
    particles: Any = None
    particle_grads: Any = None
    extra: dict = {}


ROLES = ("loss_term", "auxiliary_trainer", "update_rule")


@keras.saving.register_keras_serializable(package="hyperkeras")
class Regularizer(keras.layers.Layer):
    """Base of the three regulariser roles (`LossTerm`, `AuxiliaryTrainer`, `UpdateRule`): subclass one of them.

    A regulariser sees the generated networks and the generator's auxiliary outputs (`StepInputs`), never
    how the generator is built, and returns its terms (`RegularizerTerms`). What every role shares:

    - `setup(target, generator, num_networks, task)` — called once when the hypernetwork is built: check
      that the regulariser applies (raise ValueError naming the problem) and create weights;
    - `compute(step)` — the terms of one step;
    - `metric_names` — the names of the metrics `compute` reports (shown in Keras's progress line);
    - `canonical(target, params)` — the networks as `Hypernetwork.sample` returns them (default: as generated);
    - `get_config` returning every constructor argument: a hypernetwork checks when it is built that
      ``from_config(get_config())`` works, so that a model that trains also loads.

    Regularisers written for hyperkeras 0.1 subclass `Regularizer` directly and implement
    ``terms(target, params, aux, training=False, seed=None, **inputs)`` (and `has_optimizer` /
    `particle_space` for the other roles): they keep working (`compute` calls `terms` with the step's
    inputs as keywords).
    """

    role = "loss_term"

    @property
    def metric_names(self) -> tuple:
        """Names of the metrics `compute` reports (shown in the Keras progress line)."""
        return ()

    @property
    def particle_space(self):
        """None, or for an `UpdateRule` ``"weight"``/``"function"``: what its particles are."""
        return None

    @property
    def has_optimizer(self) -> bool:
        """True for an `AuxiliaryTrainer`: it trains variables of its own with its own optimizer."""
        return False

    def setup(self, target, generator, num_networks, task="classification"):
        """Called once by the hypernetwork (through `run_setup`): check that the regulariser applies and
        create its weights.

        Args:
            target: the `hyperkeras.TargetNetwork`.
            generator: the `hyperkeras.generators.Generator`.
            num_networks: K, networks generated per step.
            task: the hypernetwork's task, ``"classification"`` (outputs are logits or probabilities) or
                ``"regression"``. Overrides may leave this argument out (the signature of hyperkeras
                0.1): it is then not passed.
        """
        self.built = True

    def run_setup(self, target, generator, num_networks, task="classification"):
        """Calls `setup`, with ``task=`` only if the subclass's `setup` accepts it (a ``task`` parameter or
        ``**kwargs``), so regularisers written for the older signature keep working."""
        params = inspect.signature(self.setup).parameters.values()
        if any(p.name == "task" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return self.setup(target, generator, num_networks, task=task)
        return self.setup(target, generator, num_networks)

    def compute(self, step: StepInputs) -> RegularizerTerms:
        """The regulariser's terms for one step. Subclasses implement this (0.1 ones `terms`)."""
        if type(self).terms is not Regularizer.terms:  # a 0.1 regulariser: its inputs as keywords
            return self.terms(
                step.target, step.params, step.aux, training=step.training, seed=step.seed, **_keywords(step)
            )
        raise NotImplementedError(f"{type(self).__name__} must implement compute(step: StepInputs).")

    def terms(self, target, params, aux, training=False, seed=None, **inputs) -> RegularizerTerms:
        """`compute` with the step's inputs as arguments (the 0.1 signature; handy in tests and notebooks).

        ``inputs`` are `StepInputs` fields by name (``inputs``, ``task``, ``predictions``, ``particles``,
        ``particle_grads``); any other name goes to ``step.extra``.
        """
        fields = {k: inputs.pop(k) for k in list(inputs) if k in StepInputs._fields}
        step = StepInputs(target, params, aux, training=training, seed=seed, extra=inputs, **fields)
        return self.compute(step)

    def canonical(self, target, params):
        """The networks in the form in which the hypernetwork returns them from ``sample`` (default: as
        generated). `Entropy` with ``gauge="transform"`` returns the gauge-fixed networks."""
        return params

    def build_optimizer(self, optimizer=None):
        """An `AuxiliaryTrainer` creates and builds its optimizer here (from ``compile``); others return None."""
        return None

    def check_config(self):
        """Raises TypeError naming the class if ``from_config(get_config())`` fails: a hypernetwork holding
        this regulariser would train and save, then fail to load."""
        try:
            type(self).from_config(self.get_config())
        except Exception as e:  # noqa: BLE001 - any failure means the saved model cannot be loaded
            detail = " ".join(str(e).split())
            detail = detail if len(detail) <= 160 else detail[:157] + "..."
            raise TypeError(
                f"{type(self).__name__}: from_config(get_config()) fails ({type(e).__name__}: {detail}), so a model "
                "holding it could be saved but not loaded. Implement get_config() returning every __init__ "
                "argument (config = super().get_config(); config.update(...); return config)."
            ) from e


def _keywords(step: StepInputs) -> dict:
    """The step's optional inputs as the keywords of the 0.1 `terms` signature."""
    out = {
        "inputs": step.inputs,
        "task": step.task,
        "predictions": step.predictions,
        **dict(step.extra),
    }
    if step.particles is not None:
        out.update(particles=step.particles, particle_grads=step.particle_grads)
    return out


@keras.saving.register_keras_serializable(package="hyperkeras")
class LossTerm(Regularizer):
    """A term added to the generator's loss, computed from the generated networks (the common role).

    Implement `compute` (and `get_config` for every constructor argument); optionally `setup`,
    `metric_names`, `canonical`. Terms compose by listing several in ``Hypernetwork(regularizers=[...])``.

    Example — an L2 penalty on the generated weights, its mean over the K networks:

    ```python
    import keras
    import tensorflow as tf
    import hyperkeras as hk

    @keras.saving.register_keras_serializable(package="my_project")
    class WeightDecay(hk.objectives.LossTerm):
        def __init__(self, rate=1e-4, **kwargs):
            super().__init__(**kwargs)
            self.rate = float(rate)

        @property
        def metric_names(self):
            return ("weight_norm",)

        def compute(self, step):
            flat = step.target.flatten(step.params)  # [K, D]
            norm = tf.reduce_mean(tf.reduce_sum(tf.square(flat), axis=1))
            return hk.objectives.RegularizerTerms(self.rate * norm, {"weight_norm": norm})

        def get_config(self):
            return {**super().get_config(), "rate": self.rate}

    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,)))
    gen = hk.generators.HyperGANGenerator.from_target(target, noise_dim=8, code_dim=4, mixer_units=(16,),
                                                      generator_units=(16,))
    model = hk.models.Hypernetwork(target, gen, [WeightDecay(1e-3)], num_networks=4)
    model.compile(optimizer="adam")
    x, y = hk.data.load_arrays("digits", "train")
    model.fit(x[:64], y[:64], batch_size=32, verbose=0)  # logs: loss, task_loss, weight_norm, accuracy
    ```
    """

    role = "loss_term"


@keras.saving.register_keras_serializable(package="hyperkeras")
class AuxiliaryTrainer(Regularizer):
    """A term that also trains variables of its own (a discriminator, a critic) with its own optimizer.

    In each step the hypernetwork adds ``terms.loss`` to the generator's loss and, from the same networks,
    lets the trainer's optimizer minimise ``terms.own_loss`` over the trainer's trainable variables (the
    generator's optimizer never touches them). Implement `compute` (returning ``own_loss``), `setup`
    (build the own layers), `build_optimizer` (create *and build* the optimizer: the hypernetwork calls it
    from ``compile``, never lazily, as lazy builds break under `tf.distribute`) and `get_config`, which
    stores the optimizer's config. ``compile(regularizer_optimizers={name: optimizer})`` replaces the
    optimizer given at construction. Mixed precision: under ``mixed_float16`` the hypernetwork wraps it in
    a `keras.optimizers.LossScaleOptimizer`.

    Example: `hyperkeras.objectives.LatentGAN` (HyperGAN's latent discriminator), and in short:

    ```python
    import keras
    import tensorflow as tf
    import hyperkeras as hk

    @keras.saving.register_keras_serializable(package="my_project")
    class CodeCritic(hk.objectives.AuxiliaryTrainer):
        # A linear critic that learns to tell the generator's codes from N(0, I) draws; the generator is
        # pushed (weight) towards codes the critic scores like the prior.
        def __init__(self, weight=0.1, optimizer="sgd", **kwargs):
            super().__init__(**kwargs)
            self.weight = float(weight)
            self._optimizer_spec = optimizer
            self.optimizer = None
            self.critic = keras.layers.Dense(1, name="critic")

        @property
        def metric_names(self):
            return ("critic_loss",)

        def setup(self, target, generator, num_networks, task="classification"):
            self.critic.build((None, int(dict(generator.aux_shapes)["codes"][-1])))
            self.built = True

        def build_optimizer(self, optimizer=None):
            self.optimizer = keras.optimizers.get(optimizer or self._optimizer_spec)
            self.optimizer.build(self.critic.trainable_variables)
            return self.optimizer

        def compute(self, step):
            codes = step.aux["codes"]
            prior = tf.random.stateless_normal(tf.shape(codes), seed=step.seed)
            fake, real = self.critic(tf.stop_gradient(codes)), self.critic(prior)
            own = tf.reduce_mean(tf.nn.softplus(fake)) + tf.reduce_mean(tf.nn.softplus(-real))
            adv = tf.reduce_mean(tf.nn.softplus(-self.critic(codes)))
            return hk.objectives.RegularizerTerms(self.weight * adv, {"critic_loss": own}, own_loss=own)

        def get_config(self):
            spec = self._optimizer_spec if self.optimizer is None else keras.optimizers.serialize(self.optimizer)
            return {**super().get_config(), "weight": self.weight, "optimizer": spec}

    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,)))
    gen = hk.generators.HyperGANGenerator.from_target(target, noise_dim=8, code_dim=4, mixer_units=(16,),
                                                      generator_units=(16,))
    model = hk.models.Hypernetwork(target, gen, [CodeCritic()], num_networks=4)
    model.compile(optimizer="adam")  # also builds the critic's optimizer
    x, y = hk.data.load_arrays("digits", "train")
    model.fit(x[:64], y[:64], batch_size=32, verbose=0)
    ```
    """

    role = "auxiliary_trainer"

    @property
    def has_optimizer(self) -> bool:
        return True

    def build_optimizer(self, optimizer=None):
        raise NotImplementedError(f"{type(self).__name__} must implement build_optimizer(optimizer=None).")


@keras.saving.register_keras_serializable(package="hyperkeras")
class UpdateRule(Regularizer):
    """A rule that owns the generator's gradient: its loss replaces the task loss there (a particle method).

    The hypernetwork treats the K generated networks as particles — their flattened weights
    (``particle_space = "weight"``) or their predictions on the batch (``"function"``, which needs
    ``shared_batch=True``) — and hands the rule ``step.particles`` ``[K, D]`` and ``step.particle_grads``,
    the gradients of each network's log-likelihood (−K · task_weight · its share of the task loss) at its
    particle. The rule returns a surrogate ``loss`` whose gradient through the particles is the update it
    wants (e.g. ``−Σ_k stop_gradient(φ_k) · x_k`` for a direction φ); the hypernetwork still reports
    ``task_loss`` and ``accuracy``, and adds the other regularisers' terms. At most one per hypernetwork.

    Implement `particle_space`, `compute` and `get_config`. Example: `hyperkeras.objectives.SVGD`; the
    simplest rule, plain maximum likelihood (the task loss's own gradient):

    ```python
    import keras
    import tensorflow as tf
    import hyperkeras as hk

    @keras.saving.register_keras_serializable(package="my_project")
    class MaximumLikelihood(hk.objectives.UpdateRule):
        particle_space = "weight"

        def compute(self, step):
            # every particle ascends its own ∇ log p, averaged over the K particles: the gradient of this
            # loss is −particle_grads / K, i.e. that of task_weight · task_loss
            k = tf.cast(tf.shape(step.particles)[0], step.particles.dtype)
            loss = -tf.reduce_sum(tf.stop_gradient(step.particle_grads) * step.particles) / k
            return hk.objectives.RegularizerTerms(loss, {})

    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,)))
    gen = hk.generators.HyperGANGenerator.from_target(target, noise_dim=8, code_dim=4, mixer_units=(16,),
                                                      generator_units=(16,))
    model = hk.models.Hypernetwork(target, gen, [MaximumLikelihood()], num_networks=4)
    model.compile(optimizer="adam")
    x, y = hk.data.load_arrays("digits", "train")
    model.fit(x[:64], y[:64], batch_size=32, verbose=0)
    ```
    """

    role = "update_rule"
    particle_space = None  # "weight" or "function": set by the subclass


def role_of(regularizer: Regularizer) -> str:
    """The role of a regulariser, for 0.1 subclasses of `Regularizer` too (by their properties)."""
    if isinstance(regularizer, (LossTerm, AuxiliaryTrainer, UpdateRule)):
        return regularizer.role
    if regularizer.particle_space is not None:
        return "update_rule"
    return "auxiliary_trainer" if regularizer.has_optimizer else "loss_term"
