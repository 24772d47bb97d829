"""`Hypernetwork`: a weight generator trained on a task loss plus regularisers, as one `keras.Model`."""

from __future__ import annotations

import contextlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from hyperkeras import probabilities
from hyperkeras.generators.base import Generator
from hyperkeras.generators.stacks import BatchNormRecalibrator
from hyperkeras.objectives.base import Regularizer, StepInputs, role_of
from hyperkeras.targets import TargetNetwork, build_model

TASKS = ("classification", "regression")

# The steps are plain Python over static structure (no tensor-dependent Python control flow), so AutoGraph
# has nothing to convert: skipping its conversion of every function they call roughly halves the time of
# the first step (tracing) — see benchmarks/deutsch_step.py and hypergan_step.py, ``first_step_s``.
_plain_python = tf.autograph.experimental.do_not_convert


class TrainingDivergedError(RuntimeError):
    """Training stopped at a step whose loss was NaN or Inf (or whose class labels were out of range); the
    message names the step. The model keeps the weights from before that step."""


class _StepGuard:
    """Skips the update of a training step whose losses are not finite, or whose class ids are out of range,
    and remembers the first such step for `fit` (`_GuardCallback`), which stops there with
    `TrainingDivergedError`. Keras's own `fit` trains on: the weights become NaN and stay so.

    A plain object, not tracked: its variables are not model weights (not in `.keras` files, checkpoints or
    `get_weights`). ``status`` is 0 while every step was good, then 1 (a non-finite loss) or 2 (labels out of
    range), and stays so: the later steps of a ``steps_per_execution`` call are skipped too, so the weights
    are those from before the first bad step. ``first_bad`` is that step's index among the steps since
    `reset` (from 0). Cost per step: a few scalar reductions and one conditional.
    """

    def __init__(self):
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica assigns the same value
        self.status = tf.Variable(0, dtype=tf.int32, trainable=False, aggregation=aggregation)
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation)
        self.first_bad = tf.Variable(-1, dtype=tf.int64, trainable=False, aggregation=aggregation)
        self.enabled = True

    def reset(self):
        self.status.assign(0)
        self.steps.assign(0)
        self.first_bad.assign(-1)

    def apply_if_good(self, updates, result):
        """Applies ``[(optimizer, grads, variables)]`` when this step and all before it were good."""
        losses = [result["loss"], *(own_loss for _, own_loss in result["_own"])]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(tf.cast(v, tf.float32))) for v in losses])
        labels_ok = result.get("_labels_ok")
        labels_ok = tf.constant(True) if labels_ok is None else labels_ok
        # The same verdict on every replica (each saw its own share of the batch): counts of bad replicas.
        bad_loss, bad_labels = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.cast(~finite, tf.float32), tf.cast(~labels_ok, tf.float32)]
        )  # float32: int32 tensors live in host memory, which the all-reduce of per-device values refuses
        step_status = tf.where(bad_labels > 0, 2, tf.where(bad_loss > 0, 1, 0))
        status = tf.maximum(self.status, step_status)
        good = tf.equal(status, 0)
        _apply_if(good, updates)
        self.first_bad.assign(tf.where(tf.logical_and(step_status > 0, self.first_bad < 0), self.steps, self.first_bad))
        self.status.assign(status)
        self.steps.assign_add(1)


def _apply_if(good, updates):
    """``optimizer.apply(grads, variables)`` for each update, only where the scalar `good` is True.

    Under a strategy whose optimizers merge (MirroredStrategy), the conditional is taken in the cross-replica
    context, as `keras.optimizers.LossScaleOptimizer` does: a replica-context `cond` cannot hold a `merge_call`.
    """

    def apply_all(updates):
        for optimizer, grads, variables in updates:
            optimizer.apply(grads, variables)

    replica = tf.distribute.get_replica_context()
    if tf.__internal__.distribute.strategy_supports_no_merge_call() or replica is None:
        tf.cond(good, lambda: apply_all(updates), lambda: None)
        return

    def cross_replica(distribution, good, updates):
        good = distribution.experimental_local_results(good)[0]  # equal on every replica (all-reduced)
        tf.cond(good, lambda: distribution.extended.call_for_each_replica(apply_all, args=(updates,)), lambda: None)

    replica.merge_call(cross_replica, args=(good, updates))


def as_target(target) -> TargetNetwork:
    """A `TargetNetwork` from a TargetNetwork, a built keras.Model, a registered target name or a
    serialised keras.Model (a config dict)."""
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


def positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def split_indices(batch_size, num_networks: int):
    """How a batch of B examples is shared out among K networks when each sees its own examples.

    Network k gets the contiguous block of ``B // K + (k < B % K)`` examples starting at
    ``k·(B // K) + min(k, B % K)``: the sizes differ by at most one, and when K divides B the blocks are
    those of ``reshape(x, [K, B / K, ...])``. Returns ``(indices, mask)``, both ``[K, ceil(B / K)]``: the
    example index of every slot (slots past a network's share repeat one of its examples, or example 0
    for a network with none) and whether the slot holds a real example.
    """
    b = tf.cast(batch_size, tf.int32)
    k = tf.constant(num_networks, tf.int32)
    base, extra = b // k, b % k
    nets = tf.range(k)
    counts = base + tf.cast(nets < extra, tf.int32)
    starts = nets * base + tf.minimum(nets, extra)
    slots = tf.range((b + k - 1) // k)
    mask = slots[None, :] < counts[:, None]
    last = tf.maximum(starts + counts - 1, 0)
    indices = tf.where(mask, starts[:, None] + slots[None, :], tf.minimum(last, tf.maximum(b - 1, 0))[:, None])
    return indices, mask


@keras.saving.register_keras_serializable(package="hyperkeras")
class Hypernetwork(keras.Model):
    """A weight generator trained so that the networks it generates solve a task, plus regularisers.

    Each training step draws K = `num_networks` noise vectors from the generator's prior
    (``generator.noise_distribution``), generates K networks of `target` (`Generator.generate`), runs them
    on the batch and minimises

        loss = task_weight · task_loss + Σ_r regulariser_r.compute(step).loss + mean_k (layer losses of network k)

    The task loss follows the target's output kind: for ``task="classification"`` the softmax
    cross-entropy of the outputs taken as logits, or of the log of the probabilities when the target
    ends in a softmax (`TargetNetwork.as_logits`), with integer labels ``[B]`` (``[B, T]`` for sequence
    outputs) or one-hot / soft labels ``[B, C]``; for ``task="regression"`` the mean squared error. It is
    the average over networks and examples, each example weighted by its ``sample_weight`` (Keras's
    ``sum_over_batch_size``: ``Σ_i w_i·l_i / B``). Regularisers (`hyperkeras.objectives`) see the
    generated params and the generator's auxiliary outputs; one that trains variables of its own
    (`LatentGAN`'s discriminator) gets its own optimizer, built in `compile`, and is updated in the same
    step from the same networks.

    Batches: with ``shared_batch=True`` every network sees the whole batch; with ``shared_batch=False``
    the batch is shared out among the networks (Deutsch's protocol): network k gets a contiguous block of
    ``B // K`` or ``B // K + 1`` examples (`split_indices`), so any batch size works, partial last batches
    included, and every example is used once.

    Noise: training and evaluation steps draw their noise from the model's random stream
    `seed_generator` (a `keras.random.SeedGenerator` seeded with `seed`): its state is a model variable,
    so a checkpointed run resumes the stream exactly (`hyperkeras.checkpoints`), and every replica of a
    `tf.distribute` run draws the same networks. `evaluate` (and the validation of `fit`) thus estimates
    the loss of the generator on K fresh networks per batch (assign ``seed_generator.state`` to repeat
    them). `call` and `predict` are deterministic: they use the fixed networks
    ``sample(num_networks, seed)`` (seed 0 when `seed` is None).

    Metrics: ``loss``, ``task_loss``, each regulariser's own (e.g. ``entropy``; ``adversarial``,
    ``d_loss``) and, for classification, ``accuracy`` (the fraction of (network, example) pairs that are
    right, over all examples of the epoch) and, when the target's layers have regularisers, ``target_losses``.

    BatchNorm in the target: with ``target_training=True`` every generated network normalises by its own
    batch statistics in training, and has no inference-mode statistics of its own. The model keeps them for
    its fixed networks (`target_state`, calibrated on the training data of `fit` and saved with the model):
    `call`/`predict`, `evaluate` (which then runs the fixed networks, not fresh ones) and `export` use them.
    For other sampled networks compute them with `TargetNetwork.calibrate_state`.

    Mixed precision: under a ``mixed_float16`` / ``mixed_bfloat16`` policy the generator computes in the
    policy's compute dtype, the generated weights are handed to the target in the dtype of its variables
    (float32) as Keras does with its own variables, losses and `call` outputs are float32, and under
    ``mixed_float16`` the optimizers are wrapped in `keras.optimizers.LossScaleOptimizer` (as
    `keras.Model.compile` does) and the loss is scaled in `train_step`.

    Conditioning: with a conditional generator (``generator.conditional``: built with ``num_conditions=N``
    for integer task ids, each a learned `TaskEmbedding`, or ``condition_dim=d`` for float condition
    vectors, e.g. a task description's embedding) the inputs are a dict ``{"x": examples, "condition":
    condition}`` in `fit`, `evaluate`, `predict` and `call` (a pair ``(x, condition)`` is taken too; for a
    `tf.data.Dataset`, batches ``({"x": x, "condition": c}, y)``). A batch carries ONE condition: a task id
    (scalar, or ``[B]`` ids that are all equal, as `fit` slices a per-example array), or one vector (``[d]``,
    or ``[B, d]`` rows that are all equal); the K networks of the step are generated for it. A batch mixing
    tasks is refused (InvalidArgumentError naming the rule): give `fit` one task's data, or a dataset whose
    batches each hold one task. `sample(n, seed, condition=...)` and `generate(noise, condition=...)`
    take a task id for all n networks, or one per network (``[n]`` ids, ``[n, d]`` vectors). With
    ``noise_dim=0`` (no noise) the generator is deterministic: one network per task (von Oswald et al.;
    use ``num_networks=1``); with noise, an ensemble per task. A condition given to an unconditioned model,
    or none given to a conditioned one, is a ValueError; so are wrong condition dimensions and task ids out
    of ``[0, num_conditions)`` (InvalidArgumentError when they are only seen inside a traced step). Conditioning is refused for targets whose BatchNorm trains on batch statistics (each task's
    networks would need statistics of their own) and with ``batchnorm_recalibration``.

    The rule this class keeps: every target, generator, regulariser, policy and option it accepts gives
    Keras's own answer for the same weights — each generated network as the plain Keras model holding
    them (`TargetNetwork.to_keras_model`, with its own state) — or is refused with an error that names
    the problem, when the model is built rather than after training.

    Args:
        target: the target architecture: a `hyperkeras.TargetNetwork`, a built `keras.Model` or a registered
            target name. Available as ``.target``.
        generator: a `hyperkeras.generators.Generator` for this target (e.g.
            ``DeutschGenerator.from_target(target)``, ``HyperGANGenerator.from_target(target)``).
        regularizers: regularisers in their roles (`hyperkeras.objectives`): loss terms added to the loss
            (``Entropy()``, ``FunctionSpaceEntropy()``), auxiliary trainers with variables and an optimizer
            of their own (``LatentGAN()``), and at most one update rule that owns the generator's gradient
            (``SVGD()``). Each gets a `StepInputs` per step. A regulariser whose ``from_config(get_config())``
            fails is refused here (it would train and save, then not load).
        num_networks: K, networks generated per training step, and the ensemble `call` averages.
        task: ``"classification"`` or ``"regression"``.
        task_weight: factor of the task loss (Deutsch's λ).
        shared_batch: every network sees the whole batch (True), or its own share of it (False).
        target_training: run the target networks' layers in training mode (Dropout active, BatchNorm on
            batch statistics) during training steps.
        seed: int seed of the noise stream and of the fixed networks of `call`, or None (a random stream;
            the networks of seed 0 for `call`).
        batchnorm_recalibration: recompute the generator's batch-normalisation statistics from this many
            training-mode batches of K networks (`recalibrate_batchnorm`) whenever training has changed
            the generator since they were last computed and the model is used: before validation, at the
            end of every epoch (so callbacks and checkpoints see it), at the end of `fit`, and before
            `evaluate`, `predict`, `sample`, `save` and `export`. 0 keeps the moving averages of training.
        state_calibration: for a target with BatchNormalization trained on batch statistics
            (``target_training=True``), the number of training batches on which the fixed networks of
            `call` get their own BatchNorm statistics (`calibrate_target_state`, kept in `target_state`
            and saved with the model), refreshed when stale as above from the data given to `fit`.

    Call arguments:
        x: a batch ``[B, *target input shape]``; for a conditional generator ``{"x": batch, "condition": c}``
            (see Conditioning).

    Returns (``call``, and so ``predict`` and an exported model's ``serve``): for classification the mean
    class probabilities ``[B, C]`` of the ``num_networks`` networks ``sample(num_networks, seed)``; for
    regression their mean output ``[B, ...]``. For the networks themselves use `sample` with
    `TargetNetwork.apply`, or `hyperkeras.ensembles`.

    Example:

    ```python
    target = hyperkeras.TargetNetwork(hyperkeras.targets.build_model("mlp", input_shape=(8, 8, 1)))
    model = hyperkeras.models.Hypernetwork(
        target, hyperkeras.generators.HyperGANGenerator.from_target(target, noise_dim=32, code_dim=16),
        regularizers=[hyperkeras.objectives.LatentGAN(beta=1.0, discriminator_units=(64,))], num_networks=8)
    model.compile(optimizer="adam")
    model.fit(x_train, y_train, batch_size=48, epochs=3, validation_data=(x_val, y_val))
    probs = model.predict(x_test)                # [B, C], mean of 8 fixed networks
    params = model.sample(100, seed=1)           # {name: [100, *shape]}
    ```

    Conditional (one network per task, von Oswald et al.):

    ```python
    gen = hyperkeras.generators.MLPGenerator.from_target(target, noise_dim=0, num_conditions=5)
    model = hyperkeras.models.Hypernetwork(target, gen, num_networks=1)
    model.compile(optimizer="adam")
    model.fit({"x": x_task2, "condition": np.full(len(x_task2), 2)}, y_task2, batch_size=32)
    probs = model.predict({"x": x_test, "condition": np.full(len(x_test), 2)})
    theta = model.sample_flat(1, condition=2)    # [1, P]: task 2's network, differentiable
    ```
    """

    def __init__(
        self,
        target,
        generator,
        regularizers=(),
        num_networks=32,
        task="classification",
        task_weight=1.0,
        shared_batch=True,
        target_training=True,
        seed=None,
        batchnorm_recalibration=0,
        state_calibration=20,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._target = as_target(target)
        if not isinstance(generator, Generator):
            raise TypeError(
                "generator must be a hyperkeras.generators.Generator (noise [K, noise_dim] -> params), got "
                f"{type(generator).__name__}."
            )
        regularizers = list(regularizers or ())
        for r in regularizers:
            if not isinstance(r, Regularizer):
                raise TypeError(
                    f"regularizers must be hyperkeras.objectives.Regularizer objects, got {type(r).__name__}."
                )
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        task_weight = float(task_weight)
        if not np.isfinite(task_weight) or task_weight < 0:
            raise ValueError(f"task_weight must be a finite number >= 0, got {task_weight}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {seed!r}.")
        if isinstance(batchnorm_recalibration, bool) or int(batchnorm_recalibration) < 0:
            raise ValueError(f"batchnorm_recalibration must be >= 0 batches, got {batchnorm_recalibration!r}.")
        self.num_networks = positive_int("num_networks", num_networks)
        self.task = task
        self.task_weight = task_weight
        self.shared_batch = bool(shared_batch)
        self.target_training = bool(target_training)
        self.seed = None if seed is None else int(seed)
        self.batchnorm_recalibration = int(batchnorm_recalibration)
        self.state_calibration = positive_int("state_calibration", state_calibration)
        self._param_dtypes = {
            s.name: tf.as_dtype(v.dtype)
            for s, v in zip(self._target.param_specs, self._target.model.trainable_variables)
        }
        if not generator.built:
            generator.build((None, int(generator.noise_dim)))
        generator.check_target(self._target)
        if generator.conditional:
            if self.target_training and self._target.batch_statistics:
                raise ValueError(
                    f"{type(self).__name__}: a conditional generator with a target whose BatchNorm trains on batch "
                    "statistics is not supported (each task's networks would need statistics of their own): use "
                    "target_training=False, or a target without BatchNorm."
                )
            if self.batchnorm_recalibration:
                raise ValueError(
                    f"{type(self).__name__}: batchnorm_recalibration is not supported with a conditional generator."
                )
        self._track_parts(generator, regularizers)
        rules = [r for r in regularizers if role_of(r) == "update_rule"]
        if len(rules) > 1:
            raise ValueError(
                f"at most one update rule (a regulariser that owns the generator's gradient, e.g. SVGD) per "
                f"hypernetwork, got {[r.name for r in rules]}."
            )
        for r in rules:
            if r.particle_space not in ("weight", "function"):
                raise ValueError(
                    f"{type(r).__name__} is an update rule: its particle_space must be 'weight' or 'function', got "
                    f"{r.particle_space!r}."
                )
        if rules and rules[0].particle_space == "function" and not self.shared_batch:
            raise ValueError(
                f"{type(rules[0]).__name__}(space='function') compares the networks' predictions on the "
                "same examples: it needs shared_batch=True."
            )
        self._update_rule = rules[0] if rules else None
        for r in regularizers:
            r.check_config()  # a model that trains must also load
            r.run_setup(self._target, generator, self.num_networks, task=self.task)
        # The noise of training and evaluation steps (see the class docstring).
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self._recalibrator = None
        # Whether training changed the generator since the statistics derived from it (the generator's own
        # batch-norm statistics, the fixed networks' `target_state`) were computed; see `_refresh`.
        self._stale = False
        self._calibration_data = None
        self._state_variables = self._make_target_state()
        self._compile_args = {}
        self._guard = None  # made in `compile` (under the strategy's scope, as the optimizer)

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.regularizer_trackers = []  # (regulariser, metric name in its terms, tracker)
        taken = {"loss", "task_loss", "accuracy", "target_losses"}
        for r in regularizers:
            for name in r.metric_names:
                shown = name if name not in taken else f"{r.name}_{name}"
                taken.add(shown)
                self.regularizer_trackers.append((r, name, keras.metrics.Mean(name=shown)))
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy") if task == "classification" else None
        # The target layers' own losses (kernel/bias/activity regularisers), averaged over the networks.
        self.target_losses_tracker = keras.metrics.Mean(name="target_losses") if self._target.has_layer_losses else None
        self.built = True

    def _track_parts(self, generator, regularizers):
        """Assigns the generator and regularisers as tracked attributes (presets may add aliases)."""
        self.generator = generator
        self.regularizers = regularizers

    # ------------------------------------------------------------------ parts
    @property
    def target(self) -> TargetNetwork:
        """The `TargetNetwork` whose weights are generated."""
        return self._target

    @property
    def noise_dim(self) -> int:
        return int(self.generator.noise_dim)

    @property
    def conditional(self) -> bool:
        """Whether the generator takes a condition (see Conditioning in the class docstring)."""
        return bool(self.generator.conditional)

    def _split_inputs(self, inputs):
        """``(x, condition)`` from the inputs of `call`/`fit`: ``{"x": ..., "condition": ...}``, a pair
        ``(x, condition)``, or examples alone (condition None); refuses a condition for an unconditioned
        model and a missing one for a conditioned model."""
        name = type(self).__name__
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"x", "condition"}
            if unknown or "x" not in inputs:
                raise ValueError(
                    f"{name}: dict inputs must have the keys 'x' (examples) and 'condition'; got keys {sorted(inputs)}."
                )
            x, condition = inputs["x"], inputs.get("condition")
        elif isinstance(inputs, (tuple, list)) and len(inputs) == 2 and self.conditional:
            x, condition = inputs
        else:
            x, condition = inputs, None
        if condition is not None and not self.conditional:
            raise ValueError(
                f"{name}: a condition was given, but the generator {type(self.generator).__name__} is unconditioned "
                "(build it with num_conditions=N or condition_dim=d to condition it)."
            )
        if condition is None and self.conditional:
            raise ValueError(
                f"{name}: the generator is conditional: pass inputs as {{'x': examples, 'condition': task id or "
                "vector} (see the class docstring, Conditioning)."
            )
        return x, condition

    def _batch_condition(self, condition):
        """The one condition of a batch: a scalar task id, or one vector ``[condition_dim]``. Per-example
        conditions (``[B]`` ids, ``[B, d]`` vectors) must all be equal (checked when the step runs)."""
        condition = tf.convert_to_tensor(condition)
        if self.generator.num_conditions is not None:
            if condition.shape.rank == 2 and condition.shape[-1] == 1:
                condition = condition[:, 0]
            if condition.shape.rank != 1:
                return condition  # a scalar (or a wrong shape, which the generator names)
        elif condition.shape.rank != 2:
            return condition
        first = condition[0]
        check = tf.debugging.assert_equal(
            condition,
            tf.broadcast_to(first[None], tf.shape(condition)),
            message=(
                f"{type(self).__name__}: a batch must carry one condition (all its task ids / condition vectors "
                "equal); this batch mixes several. Give fit/evaluate/predict one task's examples at a time, or a "
                "dataset whose batches each hold one task."
            ),
        )
        with tf.control_dependencies([check]):
            return tf.identity(first)

    @property
    def generator_variables(self):
        """Trainable variables updated by ``optimizer``: all but those of regularisers with their own optimizer."""
        own = {id(v) for r in self.regularizers if r.has_optimizer for v in r.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in own]

    @property
    def metrics(self):
        out = [self.loss_tracker, self.task_loss_tracker] + [t for _, _, t in self.regularizer_trackers]
        if self.target_losses_tracker is not None:
            out.append(self.target_losses_tracker)
        if self.accuracy_tracker is not None:
            out.append(self.accuracy_tracker)
        return out

    # ------------------------------------------------------------------ generation
    def sample_noise(self, n, seed=0):
        """``[n, noise_dim]`` noise from the generator's prior, deterministic in `seed` (an int -> the
        stateless pair ``[seed, 0]``, or a pair)."""
        return self.generator.sample_noise(n, seed)

    def _generate(self, noise, training=False, condition=None):
        if self.generator.conditional:  # it names a missing condition
            out = self.generator.generate(self._target, noise, training=training, condition=condition)
        else:
            if condition is not None:
                raise ValueError(
                    f"{type(self).__name__}: a condition was given, but the generator {type(self.generator).__name__} "
                    "is unconditioned (build it with num_conditions=N or condition_dim=d to condition it)."
                )
            out = self.generator.generate(self._target, noise, training=training)
        params, aux = out if isinstance(out, tuple) else (out, {})
        # Weights in the dtype of the target's variables (float32 under a mixed precision policy, as a Keras
        # model keeps them): its layers cast them to their compute dtype, exactly as for their own variables.
        params = {
            n: t if t.dtype == self._param_dtypes[n] else tf.cast(t, self._param_dtypes[n]) for n, t in params.items()
        }
        return params, dict(aux or {})

    def _canonical(self, noise, training=False, canonical=True, condition=None):
        params, _ = self._generate(noise, training=training, condition=condition)
        if canonical:
            for r in self.regularizers:
                params = r.canonical(self._target, params)
        return params

    def generate(self, noise, training=False, canonical=True, condition=None):
        """Params ``{name: [K, *shape]}`` for noise ``[K, noise_dim]``; with `canonical`, in the form the
        regularisers define (e.g. gauge-fixed for ``Entropy(gauge="transform")``; the same functions).
        `condition`: for a conditional generator, a task id (all K networks) or ids ``[K]``, or vectors
        ``[d]`` / ``[K, d]``. Differentiable in the generator's variables (task embeddings included)."""
        return self._canonical(noise, training=training, canonical=canonical, condition=condition)

    def sample(self, n, seed=0, canonical=True, condition=None):
        """`n` generated networks as params ``{name: [n, *shape]}`` (inference mode); the same (n, seed,
        condition) always gives the same networks. Works inside `tf.function` (n and seed may be tensors).
        `condition` as in `generate` (required for a conditional generator). For a target with BatchNorm
        trained on batch statistics, run them with their own statistics: `target_state` for
        ``sample(num_networks, seed)``, `TargetNetwork.calibrate_state` for others."""
        if isinstance(n, (int, np.integer)):
            positive_int("n", n)
        if tf.executing_eagerly():
            self._refresh()
        return self._canonical(self.sample_noise(n, seed), training=False, canonical=canonical, condition=condition)

    def sample_flat(self, n, seed=0, canonical=True, condition=None):
        """`n` generated networks as one matrix ``[n, target.num_params]`` (differentiable in the generator's
        variables: with a fixed seed, the outputs an output regulariser compares across tasks)."""
        return self._target.flatten(self.sample(n, seed, canonical, condition=condition))

    @property
    def _fixed_seed(self):
        return 0 if self.seed is None else self.seed

    @_plain_python
    def call(self, x, training=False):
        x, condition = self._split_inputs(x)
        if condition is not None:
            condition = self._batch_condition(condition)
        if tf.executing_eagerly():
            self._refresh()
        params = self._canonical(
            self.sample_noise(self.num_networks, self._fixed_seed), canonical=False, condition=condition
        )
        outputs = probabilities.full_precision(
            self._target.apply(params, x, training=training, state=self.target_state)
        )
        if self.task == "classification":
            return tf.reduce_mean(probabilities.softmax(outputs, self._target.output_kind), axis=0)
        return tf.reduce_mean(outputs, axis=0)

    # ------------------------------------------------------------------ losses
    def _step_seeds(self):
        """Stateless seed pairs of this step, for the noise and each regulariser: the next pair of
        `seed_generator` (so every replica of a `tf.distribute` run draws the same ones)."""
        noise = tf.cast(self.seed_generator.next(), tf.int32)
        return noise, [tf.random.experimental.stateless_fold_in(noise, i + 1) for i in range(len(self.regularizers))]

    def _check_inputs(self, x):
        x = tf.convert_to_tensor(x)
        want = tuple(self._target.input_shape)
        got = tuple(x.shape[1:]) if x.shape.rank is not None else None
        if got is None or len(got) != len(want) or any(d is not None and d != e for d, e in zip(got, want)):
            raise ValueError(
                f"{type(self).__name__}: inputs have example shape {got} (batch shape {tuple(x.shape)}); the target "
                f"expects examples of shape {want}."
            )
        return x

    def _labels(self, y, outputs_shape):
        """Labels as ``("sparse", int ids [B, *pos])``, ``("dense", [B, *pos, C])`` or, for regression,
        ``("values", [B, *out])``."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} needs labels to train or evaluate: call fit(x, y) / evaluate(x, y), or give a "
                "dataset of (x, y) pairs; got inputs only."
            )
        y = tf.convert_to_tensor(y)
        out = tuple(outputs_shape)
        if self.task == "regression":
            return "values", tf.reshape(tf.cast(y, tf.float32), [-1, *out])
        classes = out[-1]
        if y.shape.rank == 1 + len(out) and y.shape[-1] == classes and classes not in (None, 1):
            return "dense", tf.cast(y, tf.float32)
        if y.shape.rank == 1 + len(out) and y.shape[-1] == 1:
            y = tf.squeeze(y, -1)
        if y.shape.rank is not None and y.shape.rank != len(out):
            raise ValueError(
                f"{type(self).__name__}: labels have shape {tuple(y.shape)}; expected class ids of shape "
                f"[B{''.join(', ' + str(d) for d in out[:-1])}] or one-hot labels [B{''.join(', ' + str(d) for d in out)}]."
            )
        return "sparse", tf.cast(y, tf.int32)

    def _predictions(self, outputs):
        """What the networks predict, as function-space terms compare it: log-probabilities for
        classification (log-softmax of the logits: free of the logit-shift symmetry), outputs for regression;
        in float32 when a mixed precision policy computes the outputs in float16/bfloat16 (as Keras's losses)."""
        outputs = probabilities.full_precision(outputs)
        if self.task == "classification":
            return probabilities.log_softmax(outputs, self._target.output_kind)
        return outputs

    def _per_network_losses(self, predictions, kind, labels):
        """Loss ``[K, B]`` of every network on every example it sees (and correctness for accuracy), from
        `_predictions` (log-probabilities, which are their own logits; or regression outputs)."""
        if kind == "values":
            sq = tf.square(predictions - tf.cast(labels, predictions.dtype))
            losses = tf.reduce_mean(tf.reshape(sq, [tf.shape(sq)[0], tf.shape(sq)[1], -1]), axis=2)
            return losses, None
        logits = predictions
        if kind == "sparse":
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            ids = labels
        else:
            losses = tf.nn.softmax_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits)
            ids = tf.argmax(labels, axis=-1, output_type=tf.int32)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), ids), tf.float32)
        if losses.shape.rank > 2:  # positions (e.g. a sequence): one loss per example
            losses = tf.reduce_mean(tf.reshape(losses, [tf.shape(losses)[0], tf.shape(losses)[1], -1]), axis=2)
            correct = tf.reduce_mean(tf.reshape(correct, [tf.shape(correct)[0], tf.shape(correct)[1], -1]), axis=2)
        return losses, correct

    def _objective(self, x, y, sample_weight, training, noise=None, **regularizer_inputs):
        x, condition = self._split_inputs(x)
        if condition is not None:
            condition = self._batch_condition(condition)
        x = self._check_inputs(x)
        k = self.num_networks
        seeds_noise, seeds_regs = self._step_seeds()
        # A target with BatchNorm trained on batch statistics has no inference-mode statistics of its own for
        # fresh networks: evaluation runs the fixed networks of `call` with theirs (`target_state`).
        eval_state = self.target_state if not training and noise is None else None
        if noise is None:
            noise = self.sample_noise(k, self._fixed_seed if eval_state is not None else seeds_noise)
        params, aux = self._generate(noise, training=training, condition=condition)
        kind, labels = self._labels(y, self._target.output_shape)
        labels_ok = None
        if kind == "sparse" and self._target.output_shape[-1] is not None:
            # Checked here because XLA (jit_compile=True) computes a NaN loss for an out-of-range class id where
            # TensorFlow's kernel raises: `train_step` turns a False into a refusal (see `_StepGuard`).
            labels_ok = tf.reduce_all((labels >= 0) & (labels < int(self._target.output_shape[-1])))
        batch = tf.shape(x)[0]
        weights = (
            tf.ones([batch], tf.float32)
            if sample_weight is None
            else tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        )
        counts = None  # with shared_batch=False and K not dividing B: each network's number of real examples
        if self.shared_batch:
            labels = tf.broadcast_to(labels[None], tf.concat([[k], tf.shape(labels)], 0))
            slot_weights = tf.broadcast_to(weights[None], [k, batch])
            per_example_scale = 1.0 / k  # an example's loss is the mean over the K networks
        else:
            static = x.shape[0]
            if static is not None and static % k == 0:  # the blocks of a reshape: no gather needed
                split = lambda t: tf.reshape(t, [k, static // k, *t.shape[1:]])  # noqa: E731
                mask = None
            else:
                indices, mask = split_indices(batch, k)
                split = lambda t: tf.gather(t, indices)  # noqa: E731
                # Each network runs on its real examples only (padding never reaches batch statistics); one with
                # none (B < K) runs on its padding slot, masked, not on an empty batch (NaN batch statistics).
                counts = tf.maximum(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1), 1)
            x_net, labels, slot_weights = split(x), split(labels), split(weights)
            if mask is not None:
                slot_weights = slot_weights * tf.cast(mask, tf.float32)
            per_example_scale = 1.0  # each example is seen by one network
        rule = self._update_rule
        # An update rule (SVGD) needs the gradient of the per-network log-likelihood at its particles:
        # the weights, or the predictions (watched as they are made, so one forward pass serves both).
        with tf.GradientTape(watch_accessed_variables=False) if rule else contextlib.nullcontext() as inner:
            if rule is not None and rule.particle_space == "weight":
                inner.watch(params)
            outputs, layer_losses = self._target.apply(
                params,
                x if self.shared_batch else x_net,
                training=training and self.target_training,
                state=eval_state,
                return_losses=True,
                counts=counts,
            )
            predictions = self._predictions(outputs)
            if rule is not None and rule.particle_space == "function":
                inner.watch(predictions)
            losses, correct = self._per_network_losses(predictions, kind, labels)
            batch_f = tf.cast(batch, losses.dtype)
            task_loss = tf.reduce_sum(losses * tf.cast(slot_weights, losses.dtype)) * per_example_scale / batch_f
        result = {"task_loss": task_loss, "outputs": outputs, "_batch": batch_f, "_own": [], "_labels_ok": labels_ok}
        result.update(aux)
        step = StepInputs(
            self._target,
            params,
            aux,
            training=training,
            inputs=x,
            task=self.task,
            predictions=predictions if self.shared_batch else None,
            extra=regularizer_inputs,
        )
        rule_step = None
        if rule is not None:
            # ∂(task_weight · task_loss)/∂x_k is (1/K) of network k's own loss gradient (the task loss averages
            # the networks), so ∇ log p(x_k) = −K · task_weight · that.
            if rule.particle_space == "weight":
                particles = self._target.flatten(params)
                grads = self._target.flatten(inner.gradient(task_loss, params))
            else:
                particles = tf.reshape(predictions, [k, -1])
                grads = tf.reshape(inner.gradient(task_loss, predictions), [k, -1])
            rule_step = step._replace(
                particles=particles, particle_grads=tf.stop_gradient(-float(k) * self.task_weight * grads)
            )
            loss = tf.zeros([], task_loss.dtype)  # the rule's loss replaces the task loss in the gradient
        else:
            loss = self.task_weight * task_loss
        # The target's own layer losses (weight and activity regularisers), averaged over the networks: per network
        # like the regularisers' terms, not per example (train_step divides all of them by the replicas alike).
        target_losses = tf.reduce_mean(tf.cast(layer_losses, loss.dtype))
        loss = loss + target_losses
        if self._target.has_layer_losses:
            result["target_losses"] = target_losses
        for r, seed in zip(self.regularizers, seeds_regs):
            terms = r.compute((rule_step if r is rule else step)._replace(seed=seed))
            loss = loss + tf.cast(terms.loss, loss.dtype)  # float32 also when its layers compute in float16
            result.update({name: value for name, value in terms.metrics.items()})
            result[f"_metrics_{r.name}"] = terms.metrics
            if terms.own_loss is not None:
                result["_own"].append((r, tf.cast(terms.own_loss, loss.dtype)))
        result["loss"] = loss
        if correct is not None:
            result["_correct"] = (correct, slot_weights)
        return result

    def compute_losses(self, x, y, *, sample_weight=None, training=True, noise=None, **regularizer_inputs):
        """All terms of one step on a batch (used by `train_step`/`test_step`; handy for inspection).

        Returns a dict with ``loss`` (= task_weight · task_loss + the regularisers' terms + ``target_losses``,
        the mean over networks of the target layers' own losses, present when the target has any), ``task_loss``,
        each regulariser's metrics (e.g. ``entropy``, ``adversarial``, ``d_loss``), the generator's
        auxiliary outputs (e.g. ``codes``) and ``outputs`` (``[K, B, ...]``, or ``[K, ceil(B/K), ...]``
        with ``shared_batch=False``). `noise` fixes the networks; `regularizer_inputs` go to the
        regularisers (e.g. LatentGAN's ``prior``). For a conditional generator `x` is ``{"x": ..., "condition": ...}``.
        """
        out = self._objective(x, y, sample_weight, training, noise=noise, **regularizer_inputs)
        return {key: value for key, value in out.items() if not key.startswith("_")}

    def _update_metrics(self, result):
        batch = result["_batch"]
        self.loss_tracker.update_state(result["loss"], sample_weight=batch)
        self.task_loss_tracker.update_state(result["task_loss"], sample_weight=batch)
        for r, name, tracker in self.regularizer_trackers:
            tracker.update_state(result[f"_metrics_{r.name}"][name], sample_weight=batch)
        if self.target_losses_tracker is not None:
            self.target_losses_tracker.update_state(result["target_losses"], sample_weight=batch)
        if self.accuracy_tracker is not None and "_correct" in result:
            correct, weights = result["_correct"]
            # One value per (network, example) slot: a Mean over a [K, B] tensor would first average each
            # row, so that a partial last batch counted as much as a full one.
            self.accuracy_tracker.update_state(
                tf.reshape(correct, [-1]), sample_weight=tf.reshape(tf.cast(weights, correct.dtype), [-1])
            )

    def _logs(self):
        return {m.name: m.result() for m in self.metrics}

    # ------------------------------------------------------------------ Keras training API
    @_plain_python
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        own_optimized = any(r.has_optimizer for r in self.regularizers)
        with tf.GradientTape(persistent=own_optimized) as tape:
            result = self._objective(x, y, sample_weight, training=True)
            # The objective is a per-replica value (the task loss of the replica's share of the batch; the
            # regularisers of the same networks on every replica): divided by the replica count, the summed
            # gradients are those of the global objective.
            scaled = result["loss"] / tf.cast(replicas, result["loss"].dtype)
            own = [(r, own_loss / tf.cast(replicas, own_loss.dtype)) for r, own_loss in result["_own"]]
            # Loss scaling (a LossScaleOptimizer under mixed_float16; identity otherwise): the optimizer
            # unscales the gradients, and skips the step if they overflowed, as in Keras's own train_step.
            scaled = self.optimizer.scale_loss(scaled)
            own = [(r, r.optimizer.scale_loss(own_loss)) for r, own_loss in own]
        updates = [(self.optimizer, tape.gradient(scaled, self.generator_variables), self.generator_variables)]
        for r, own_loss in own:
            own_vars = list(r.trainable_variables)
            updates.append((r.optimizer, tape.gradient(own_loss, own_vars), own_vars))
        del tape
        if self._guard is not None and self._guard.enabled:
            self._guard.apply_if_good(updates, result)
        else:
            for optimizer, grads, variables in updates:
                optimizer.apply(grads, variables)
        self._update_metrics(result)
        return self._logs()

    @_plain_python
    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._update_metrics(self._objective(x, y, sample_weight, training=False))
        return self._logs()

    def compile(self, optimizer="adam", loss=None, metrics=None, regularizer_optimizers=None, **kwargs):
        """Configures training.

        Args:
            optimizer: optimizer of the generator (instance, name or config).
            loss, metrics: not taken: the task loss follows ``task`` and the target's output kind, and the
                metrics are built in (an error if given).
            regularizer_optimizers: ``{regulariser name: optimizer}`` for regularisers with their own
                optimizer (default: the one each was constructed with). Every optimizer is built here.
            **kwargs: passed to `keras.Model.compile` (``run_eagerly``, ``steps_per_execution``,
                ``jit_compile``).
        """
        for key, value in (
            ("loss", loss),
            ("metrics", metrics),
            ("loss_weights", kwargs.pop("loss_weights", None)),
            ("weighted_metrics", kwargs.pop("weighted_metrics", None)),
        ):
            if value is not None:
                raise ValueError(
                    f"{type(self).__name__}.compile does not take {key!r}: the task loss follows task={self.task!r} and "
                    "the target's output kind (logits or probabilities), and the metrics are built in."
                )
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.generator_variables)
        self._guard = _StepGuard()
        given = dict(regularizer_optimizers or {})
        unknown = set(given) - {r.name for r in self.regularizers if r.has_optimizer}
        if unknown:
            raise ValueError(
                f"regularizer_optimizers names {sorted(unknown)}, which are not regularisers with an "
                f"optimizer ({[r.name for r in self.regularizers if r.has_optimizer]})."
            )
        for r in self.regularizers:
            if not r.has_optimizer:
                continue
            spec = given.get(r.name)
            if self.dtype_policy.name == "mixed_float16" and kwargs.get("auto_scale_loss", True):
                # As Keras does for `optimizer`: float16 gradients need loss scaling.
                spec = keras.optimizers.get(spec if spec is not None else r._optimizer_spec)
                if not isinstance(spec, keras.optimizers.LossScaleOptimizer):
                    spec = keras.optimizers.LossScaleOptimizer(spec, name=f"{r.name}_loss_scale_optimizer")
            opt = r.build_optimizer(spec)
            if opt is self.optimizer:
                raise ValueError(
                    f"the optimizer of regulariser {r.name!r} must be a different object from `optimizer`."
                )
            setattr(self, f"{r.name}_optimizer", opt)  # a direct attribute: checkpoints find every optimizer
        self._compile_args = {
            k: v for k, v in kwargs.items() if k in ("steps_per_execution", "jit_compile", "run_eagerly")
        }

    def get_compile_config(self):
        if getattr(self, "optimizer", None) is None:
            return {}
        return {
            "optimizer": keras.optimizers.serialize(self.optimizer),
            "regularizer_optimizers": {
                r.name: keras.optimizers.serialize(r.optimizer)
                for r in self.regularizers
                if r.has_optimizer and r.optimizer is not None
            },
            **self._compile_args,
        }

    def compile_from_config(self, config):
        config = {k: v for k, v in dict(config).items() if v is not None or k == "optimizer"}
        for key in ("loss", "metrics", "loss_weights", "weighted_metrics", "auto_scale_loss"):
            config.pop(key, None)  # Keras's defaults in files of the 0.1 presets
        config["optimizer"] = keras.optimizers.deserialize(config["optimizer"]) if config.get("optimizer") else "adam"
        if "regularizer_optimizers" in config:
            config["regularizer_optimizers"] = {
                name: keras.optimizers.deserialize(spec) for name, spec in config["regularizer_optimizers"].items()
            }
        self.compile(**config)

    # ------------------------------------------------------------------ statistics derived from training
    def _make_target_state(self):
        """Variables ``{state name: [K, *shape]}`` of the fixed networks' own state, for a target with
        BatchNorm run on batch statistics in training (None otherwise: the wrapped model's state is right)."""
        if not self.target_training or not self._target.batch_statistics:
            return None
        initial = self._target.initial_state(self.num_networks)
        return {
            s.name: self.add_weight(
                shape=(self.num_networks, *s.shape),
                dtype=s.dtype,
                trainable=False,
                name="target_state_" + s.name.replace("/", "_"),
                initializer=keras.initializers.Constant(initial[s.name].numpy()),
            )
            for s in self._target.state_specs
        }

    @property
    def target_state(self):
        """The per-network state ``{name: [num_networks, *shape]}`` of the fixed networks of `call`
        (``sample(num_networks, seed)``, not gauge-fixed) — each network's own BatchNorm statistics,
        calibrated on training data (`calibrate_target_state`) — or None when the target needs none (no
        BatchNorm, or BatchNorm not trained on batch statistics: the wrapped model's state is theirs)."""
        if self._state_variables is None:
            return None
        return {name: v.value for name, v in self._state_variables.items()}

    def calibrate_target_state(self, data, batch_size: int = 32, max_batches: int | None = None) -> dict:
        """Computes `target_state` on `data` (`TargetNetwork.calibrate_state`: each fixed network run in
        training mode, batch statistics averaged); `data` is an array of inputs or a dataset of ``x`` or
        ``(x, ...)`` batches; `max_batches` defaults to ``state_calibration``. `fit` calls it on its own
        training data. Returns the state."""
        if self._state_variables is None:
            raise ValueError(
                f"{type(self).__name__}: the target needs no per-network state (no BatchNorm trained on "
                "batch statistics)."
            )
        params = self._canonical(self.sample_noise(self.num_networks, self._fixed_seed), canonical=False)
        state = self._target.calibrate_state(
            params, data, batch_size=batch_size, max_batches=max_batches or self.state_calibration
        )
        for name, v in self._state_variables.items():
            v.assign(tf.cast(state[name], v.dtype))
        return self.target_state

    def _refresh(self):
        """Brings what is derived from the generator up to date after training changed it: the generator's
        batch-norm statistics (``batchnorm_recalibration``) and `target_state` (``state_calibration``), so that
        evaluation, prediction, sampling, saving and callbacks see the model `fit` returns."""
        if not self._stale:
            return
        self._stale = False
        if self.batchnorm_recalibration:
            self.recalibrate_batchnorm(self.batchnorm_recalibration)
        if self._state_variables is not None and self._calibration_data is not None:
            data, batch_size = self._calibration_data
            self.calibrate_target_state(data, batch_size=batch_size)

    def _calibration_source(self, args, kwargs):
        """``(inputs, batch_size)`` of fit's training data for `calibrate_target_state`."""
        x = kwargs.get("x", args[0] if args else None)
        batch_size = kwargs.get("batch_size", args[2] if len(args) > 2 else None) or 32
        if isinstance(x, tf.data.Dataset):
            return x, batch_size
        if isinstance(x, (np.ndarray, tf.Tensor)):
            return x, batch_size
        raise ValueError(
            f"{type(self).__name__}: the target has BatchNorm trained on batch statistics, so each fixed network needs "
            f"its own statistics from training data; fit got x of type {type(x).__name__}, which cannot be read "
            "again for that. Pass fit(..., calibration_data=<array or tf.data.Dataset of training inputs>)."
        )

    def fit(self, *args, calibration_data=None, stop_on_nonfinite=True, **kwargs):
        """`keras.Model.fit`, with two additions.

        The statistics derived from the generator (`recalibrate_batchnorm`, `target_state`) are refreshed
        before validation, at every epoch end and at the end (see ``batchnorm_recalibration``,
        ``state_calibration``). `calibration_data`: inputs (array or dataset) for `target_state`, default:
        fit's own training inputs.

        `stop_on_nonfinite` (default True): a training step whose loss is NaN or Inf (NaN in the data, a
        diverging learning rate), or whose class ids lie outside ``[0, C)`` (which XLA does not check under
        ``jit_compile=True``), is not applied, and `fit` raises `TrainingDivergedError` naming the step,
        after that batch's callbacks: the model keeps the weights from before that step (the last good
        state). False: Keras's behaviour (the update is applied and training goes on, NaN weights included).
        Outside `fit` (`train_on_batch`) such a step is skipped as well and its loss returned.
        """
        if self._guard is not None and self._guard.enabled != bool(stop_on_nonfinite):
            self._guard.enabled = bool(stop_on_nonfinite)
            self.train_function = None  # traced with the other setting
        if self._state_variables is not None:
            self._calibration_data = (
                (calibration_data, 32) if calibration_data is not None else self._calibration_source(args, kwargs)
            )
        callbacks = [_Refresh(self), *list(kwargs.get("callbacks") or [])]
        if self._guard is not None and self._guard.enabled:
            callbacks.append(_GuardCallback(self))  # last: the batch's other callbacks (a checkpoint's) see it
        kwargs["callbacks"] = callbacks
        history = super().fit(*args, **kwargs)
        self._refresh()
        return history

    def train_on_batch(self, *args, **kwargs):
        self._stale = True
        return super().train_on_batch(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._refresh()
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self._refresh()
        return super().predict(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        self._refresh()
        return super().test_on_batch(*args, **kwargs)

    def predict_on_batch(self, *args, **kwargs):
        self._refresh()
        return super().predict_on_batch(*args, **kwargs)

    def save(self, *args, **kwargs):
        self._refresh()
        return super().save(*args, **kwargs)

    def save_weights(self, *args, **kwargs):
        self._refresh()
        return super().save_weights(*args, **kwargs)

    def load_own_variables(self, store):
        if self._state_variables is not None and len(store.keys()) == 0:
            # A file from before `target_state` existed: the wrapped model's statistics, until calibrated.
            warnings.warn(
                f"{type(self).__name__}: this file has no per-network BatchNorm statistics (saved by an "
                "older hyperkeras); call calibrate_target_state(training inputs) before predicting.",
                stacklevel=2,
            )
            return
        super().load_own_variables(store)

    def recalibrate_batchnorm(self, num_batches: int = 50, seed: int = 0) -> int:
        """Recomputes the generator's batch-normalisation statistics under its current weights: the
        average batch mean and variance over `num_batches` training-mode batches of `num_networks`
        networks (stateless noise from `seed`; the training noise is not touched). Traced once per model.
        Returns the number of batch-normalisation layers updated."""
        if self._recalibrator is None:

            def run_batch(i, seed):
                noise = self.sample_noise(
                    self.num_networks,
                    tf.random.experimental.stateless_fold_in(tf.stack([seed, tf.constant(1, tf.int32)]), i),
                )
                return self._generate(noise, training=True)[0]

            self._recalibrator = BatchNormRecalibrator(self.generator, run_batch)
        return self._recalibrator(num_batches, tf.constant(int(seed), tf.int32))

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """`keras.Model.export` of `call` (see Returns above); the input signature defaults to the target's
        ``[None, *input_shape]`` (so a model that was only trained, never called, exports too)."""
        self._refresh()
        if input_signature is None:
            input_signature = [tf.TensorSpec((None, *self._target.input_shape), self._target.input_dtype)]
            if self.conditional:  # one condition per call: a task id, or one vector
                from hyperkeras.export import _condition_spec

                input_signature = [{"x": input_signature[0], "condition": _condition_spec(self)}]
        return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)

    # ------------------------------------------------------------------ serialisation
    def get_config(self):
        config = super().get_config()
        config.update(
            target=keras.saving.serialize_keras_object(self._target.model),
            generator=keras.saving.serialize_keras_object(self.generator),
            regularizers=[keras.saving.serialize_keras_object(r) for r in self.regularizers],
            num_networks=self.num_networks,
            task=self.task,
            task_weight=self.task_weight,
            shared_batch=self.shared_batch,
            target_training=self.target_training,
            seed=self.seed,
            batchnorm_recalibration=self.batchnorm_recalibration,
            state_calibration=self.state_calibration,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["target"] = as_target(config["target"])
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        config["regularizers"] = [keras.saving.deserialize_keras_object(r) for r in config.get("regularizers", [])]
        return cls(**config)


class _Refresh(keras.callbacks.Callback):
    """The first callback of `Hypernetwork.fit`: marks the derived statistics stale as training proceeds
    and refreshes them at every epoch end, before the user's callbacks (checkpoints, early stopping) run."""

    def __init__(self, model):
        super().__init__()
        self._owner = model

    def on_train_batch_begin(self, batch, logs=None):
        self._owner._stale = True

    def on_epoch_end(self, epoch, logs=None):
        self._owner._refresh()


class _GuardCallback(keras.callbacks.Callback):
    """The last callback of `Hypernetwork.fit`: raises `TrainingDivergedError` after the first batch whose
    step was skipped by the model's `_StepGuard` (a non-finite loss, or class ids out of range)."""

    def __init__(self, model):
        super().__init__()
        self._owner = model

    def on_train_begin(self, logs=None):
        self._owner._guard.reset()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        guard = self._owner._guard
        status = int(guard.status.numpy())
        if status == 0:
            return
        step = int(guard.first_bad.numpy()) + 1  # counted from 1 in this fit
        name = type(self._owner).__name__
        if status == 2:
            classes = self._owner.target.output_shape[-1]
            what = (
                f"class labels outside [0, {classes}) in the batch of step {step} (under jit_compile=True XLA computes "
                "a NaN loss for them instead of raising)"
            )
        else:
            values = ", ".join(f"{k}={float(v):.4g}" for k, v in (logs or {}).items() if np.ndim(v) == 0)
            what = (
                f"a non-finite loss at step {step} (logged means now: {values}); look for NaN/Inf in that batch's "
                "inputs or labels, or lower the learning rate"
            )
        raise TrainingDivergedError(
            f"{name}.fit: {what}. Training stopped (epoch {self._epoch + 1}); that step's update was not applied, so "
            f"the model holds the weights from before it (the last good state). fit(..., stop_on_nonfinite=False) "
            "trains on as Keras does."
        )
