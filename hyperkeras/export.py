"""SavedModel export for serving: generators, frozen ensembles and single networks.

Three kinds of SavedModel, all loadable with `tf.saved_model.load` in a process that has TensorFlow but
not hyperkeras, or with `keras.layers.TFSMLayer`:

* `export_generator(sampler, path)` — a trained weight generator (`EntropyHypernetwork`, `HyperGAN`, or
  anything with ``.target`` and ``.sample(n, seed)``). Endpoints:
  ``sample_weights(seed: int64[], n: int32[]) -> {"weights": [n, P]}`` and
  ``predict(x: float32[B, *input_shape], n: int32[], seed: int64[]) ->
  {"mean_probs": [B, C], "predictive_entropy": [B], "probs": [n, B, C]}``; for a regression model
  (``task="regression"``) ``{"mean": [B, ...], "std": [B, ...], "outputs": [n, B, ...]}``. ``x`` has the
  target's integer dtype for token-id inputs; both endpoints refuse ``n < 1`` (InvalidArgumentError).
  A conditional sampler (``sampler.conditional``: a `Hypernetwork` whose generator takes task ids or
  condition vectors) gets a ``condition`` first argument instead:
  ``sample_weights(condition, seed, n)`` and ``predict(x, condition, n, seed)``, where ``condition`` is one
  task id (``int32[]``; ids outside ``[0, num_conditions)`` raise InvalidArgumentError) or one condition
  vector (``float32[condition_dim]``) for all n networks.
* `export_ensemble(target, params, path)` — N networks frozen at export time; endpoint
  ``serve(x) -> {"mean_probs", "predictive_entropy", "probs"}`` (regression: ``{"mean", "std", "outputs"}``).

BatchNorm targets: each network needs BatchNorm statistics of its own. `export_ensemble` stores them
(``state=target.calibrate_state(params, training_images)`` or ``calibration_data=training_images``);
`export_generator` cannot (networks sampled at serving time are never calibrated) and is refused unless
``state="shared"`` asks for the wrapped model's statistics in every network.
* `export_model(model, path)` — any keras.Model (a network from `TargetNetwork.to_keras_model`, or a
  model using HyperConv2D / HyperDense / HyperLSTMCell) with the standard ``serve`` endpoint.

Every export is written to a temporary folder first and moved into place when complete, so a crash never
leaves a half-written SavedModel at `path`.

Serving (TensorFlow only)::

    m = tf.saved_model.load("exported/generator")
    out = m.predict(x=images, n=tf.constant(100), seed=tf.constant(0, tf.int64))
    out["mean_probs"], out["predictive_entropy"]
    # a conditional model: the networks of task 3
    out = m.predict(x=images, condition=tf.constant(3), n=tf.constant(100), seed=tf.constant(0, tf.int64))
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging as absl_logging

from hyperkeras import probabilities
from hyperkeras.ensembles.sources import has_batchnorm_statistics, resolve_state, task_of
from hyperkeras.targets import TargetNetwork


def ensemble_summary(target: TargetNetwork, outputs, task: str = "classification") -> dict:
    """``outputs`` [n, B, ...] of `target.apply` -> the ensemble's fused outputs.

    Classification: mean probabilities ``mean_probs`` [B, C], ``predictive_entropy`` [B] and the
    per-network ``probs`` [n, B, C] (a softmax of the outputs, unless the target ends in a softmax:
    `TargetNetwork.output_kind`). Regression: ``mean`` [B, ...] and ``std`` [B, ...] (population,
    as `ensembles.predict_regression`) over networks, and the per-network ``outputs`` [n, B, ...].
    """
    if task == "regression":
        mean = tf.reduce_mean(outputs, axis=0)
        std = tf.sqrt(tf.reduce_mean(tf.square(outputs - mean), axis=0))
        return {"mean": mean, "std": std, "outputs": outputs}
    probs = probabilities.as_probs(outputs, target.output_kind)
    mean = tf.reduce_mean(probs, axis=0)
    return {"mean_probs": mean, "predictive_entropy": probabilities.tf_entropy(mean), "probs": probs}


def _task(source, target: TargetNetwork, task) -> str:
    """The task of an export (`ensembles.task_of`); refuses a classifier with one output unit."""
    task = task_of(source, task)
    if task == "classification" and target.output_shape[-1:] == (1,):
        raise ValueError(
            f"the target {target.model.name!r} has one output unit, and a softmax over one class is always 1: "
            "pass task='regression' for a regression model (a binary classifier needs two class scores)."
        )
    return task


def _write_atomically(path: str, write_fn):
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
    # Writing a SavedModel logs a dozen INFO lines per endpoint (through absl): keep them off the console.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(min(verbosity, absl_logging.WARNING))  # absl: lower = quieter
    try:
        out = os.path.join(tmp, "model")
        write_fn(out)
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=".old-export-")
            os.replace(path, os.path.join(old, "model"))
            os.replace(out, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(out, path)
    finally:
        absl_logging.set_verbosity(verbosity)
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _positive(n):
    """`n` once the graph has checked that it is at least 1 (n = 0 or n < 0 would fail deep inside sampling
    with a message about empty lists or negative dimensions)."""
    check = tf.debugging.assert_positive(n, message="n, the number of networks to sample, must be >= 1")
    with tf.control_dependencies([check]):
        return tf.identity(n)


def _x_spec(target: TargetNetwork) -> tf.TensorSpec:
    """The examples' spec: the target's integer input dtype (token ids), float32 for every float input."""
    dtype = tf.as_dtype(target.input_dtype)
    return tf.TensorSpec([None, *target.input_shape], dtype if dtype.is_integer else tf.float32, name="x")


def _check_sampler(sampler):
    if not isinstance(getattr(sampler, "target", None), TargetNetwork) or not callable(
        getattr(sampler, "sample", None)
    ):
        raise TypeError(
            "sampler must have a `.target` (hyperkeras.TargetNetwork) and a `.sample(n, seed)` method, "
            f"got {type(sampler).__name__}."
        )
    if not isinstance(sampler, (keras.layers.Layer, tf.Module)):
        raise TypeError(f"sampler must be a keras Layer/Model or tf.Module to be saved, got {type(sampler).__name__}.")


def _condition_spec(sampler) -> tf.TensorSpec:
    """One condition of a conditional sampler: an int32 task id, or a float32 vector ``[condition_dim]``."""
    generator = getattr(sampler, "generator", None)
    if generator is None or not getattr(generator, "conditional", False):
        raise TypeError(
            f"{type(sampler).__name__} is conditional but has no conditional `.generator` to read the condition's "
            "kind from (num_conditions: task ids; condition_dim: vectors)."
        )
    if generator.num_conditions is not None:
        return tf.TensorSpec([], tf.int32, name="condition")
    return tf.TensorSpec([int(generator.condition_dim)], tf.float32, name="condition")


def export_generator(sampler, path: str, *, task: str | None = None, state: str | None = None) -> str:
    """Exports a weight generator with ``sample_weights`` and ``predict`` endpoints (see module doc).

    Args:
        sampler: a generator with ``.target`` and ``.sample(n, seed)`` (a keras Layer/Model or tf.Module); a
            conditional one (``.conditional`` True, ``.sample(n, seed, condition=...)``, e.g. a `Hypernetwork`
            with a conditional generator) gets the conditional endpoints (module doc).
        path: folder of the SavedModel (replaced atomically).
        task: ``"classification"`` (``predict`` returns ``mean_probs``, ``predictive_entropy``, ``probs``)
            or ``"regression"`` (``mean``, ``std``, ``outputs``); default the sampler's own ``.task``
            (`hyperkeras.models.Hypernetwork`), else classification.
        state: ``"shared"`` runs every sampled network on the wrapped model's BatchNorm statistics; required
            for a target with BatchNorm moving statistics (networks sampled at serving time have no
            statistics of their own: export networks calibrated in advance with `export_ensemble` instead).
            None for other targets.

    Returns:
        the absolute path written.

    Raises:
        TypeError: `sampler` cannot sample networks or cannot be saved.
        ValueError: `task` contradicts ``sampler.task``, a classification export of a target with one
            output unit, or a BatchNorm target without ``state="shared"``.
    """
    _check_sampler(sampler)
    target = sampler.target
    task = _task(sampler, target, task)
    if state not in (None, "shared"):
        raise ValueError(
            f"export_generator: state must be None or 'shared', got {state!r} (networks sampled at serving "
            "time cannot carry per-network state: use export_ensemble(target, params, path, state=...))."
        )
    if state is None and has_batchnorm_statistics(target):
        layers = sorted({s.layer for s in target.batch_statistics})
        raise ValueError(
            f"export_generator: the target {target.model.name!r} has BatchNormalization layers ({', '.join(layers)}), "
            "and networks sampled at serving time cannot be calibrated: the served networks would all use the "
            "wrapped model's statistics. Export a fixed ensemble with each network's own statistics instead, "
            "export_ensemble(target, params, path, state=target.calibrate_state(params, training_images)) (or "
            "calibration_data=training_images), or pass state='shared' to serve the wrapped model's statistics."
        )
    if isinstance(sampler, keras.layers.Layer) and not sampler.built:
        sampler.sample(1, 0)  # creates any weights not yet created (a conditional sampler is built at construction)
        sampler.built = True
    archive = keras.export.ExportArchive()
    archive.track(sampler)

    def sample_weights(seed, n):
        params = sampler.sample(_positive(n), seed)
        return {"weights": target.flatten(params)}

    def predict(x, n, seed):
        params = sampler.sample(_positive(n), seed)
        return ensemble_summary(target, target.apply(params, x), task)

    def sample_weights_given(condition, seed, n):
        params = sampler.sample(_positive(n), seed, condition=condition)
        return {"weights": target.flatten(params)}

    def predict_given(x, condition, n, seed):
        params = sampler.sample(_positive(n), seed, condition=condition)
        return ensemble_summary(target, target.apply(params, x), task)

    seed_spec = tf.TensorSpec([], tf.int64, name="seed")
    n_spec = tf.TensorSpec([], tf.int32, name="n")
    x_spec = _x_spec(target)
    if getattr(sampler, "conditional", False):
        c_spec = _condition_spec(sampler)
        archive.add_endpoint("sample_weights", sample_weights_given, input_signature=[c_spec, seed_spec, n_spec])
        archive.add_endpoint("predict", predict_given, input_signature=[x_spec, c_spec, n_spec, seed_spec])
    else:
        archive.add_endpoint("sample_weights", sample_weights, input_signature=[seed_spec, n_spec])
        archive.add_endpoint("predict", predict, input_signature=[x_spec, n_spec, seed_spec])
    return _write_atomically(path, lambda out: archive.write_out(out, verbose=False))


class FrozenEnsemble(keras.layers.Layer):
    """Holds N networks' flat weights ``[N, P]`` and evaluates them as one ensemble.

    Args:
        target: the `TargetNetwork` the weights belong to.
        weights: ``[N, P]`` flat weights (`target.flatten(params)`).
        task: ``"classification"`` or ``"regression"`` (see `ensemble_summary`).
        state: the networks' own state ``{name: [N, *shape]}`` (BatchNorm statistics, e.g. from
            `TargetNetwork.calibrate_state`), stored with the weights; None runs them on the wrapped model's.

    Call arguments:
        x: ``[B, *target.input_shape]``.

    Returns the dict of `ensemble_summary`: ``mean_probs`` [B, C], ``predictive_entropy`` [B], ``probs``
    [N, B, C] for classification; ``mean``, ``std`` [B, ...] and ``outputs`` [N, B, ...] for regression.
    """

    def __init__(
        self, target: TargetNetwork, weights, task: str = "classification", state: dict | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        self.target = target
        self.task = _task(None, target, task)
        weights = tf.convert_to_tensor(weights, tf.float32)
        if weights.shape.rank != 2 or weights.shape[1] != target.num_params:
            raise ValueError(f"weights must be [N, {target.num_params}], got {weights.shape}.")
        self.flat = self.add_weight(
            name="flat_weights", shape=tuple(weights.shape), initializer="zeros", trainable=False
        )
        self.flat.assign(weights)
        self.state = None
        if state is not None:
            state = target.check_state(state, int(weights.shape[0]))
            self.state = {}
            for i, s in enumerate(target.state_specs):
                v = self.add_weight(
                    name=f"state_{i}",
                    shape=(int(weights.shape[0]), *s.shape),
                    dtype=s.dtype,
                    initializer="zeros",
                    trainable=False,
                )
                v.assign(tf.cast(state[s.name], s.dtype))
                self.state[s.name] = v
        self.built = True

    def call(self, x):
        state = None if self.state is None else {name: v.value for name, v in self.state.items()}
        outputs = self.target.apply(self.target.unflatten(self.flat), x, state=state)
        return ensemble_summary(self.target, outputs, self.task)


def export_ensemble(
    target: TargetNetwork,
    params,
    path: str,
    *,
    task: str = "classification",
    state: dict | str | None = None,
    calibration_data=None,
) -> str:
    """Exports the networks in `params` frozen, with a ``serve(x)`` endpoint.

    Args:
        target: the `TargetNetwork` of the networks.
        params: params dict ``{name: [N, *shape]}`` or flat weights ``[N, P]``.
        path: folder of the SavedModel (replaced atomically).
        task: ``"classification"`` (``serve`` returns ``mean_probs``, ``predictive_entropy``, ``probs``) or
            ``"regression"`` (``mean``, ``std``, ``outputs``); for a `Hypernetwork`'s networks, its ``.task``.
        state: for a target with BatchNorm moving statistics, each network's own ``{name: [N, *shape]}``
            (``target.calibrate_state(params, training_images)``), stored in the SavedModel, or
            ``"shared"`` for the wrapped model's; not needed for other targets.
        calibration_data: instead of `state`, training inputs on which each network's own BatchNorm
            statistics are computed (`TargetNetwork.calibrate_state`) and stored.

    Returns:
        the absolute path written.

    Raises:
        ValueError: wrong weight or state shapes, an unknown task, a classification export of a target with
            one output unit, or a BatchNorm target without `state` / `calibration_data`.
    """
    flat = params if not isinstance(params, dict) else target.flatten(params)
    state = resolve_state(target, target.unflatten(flat), state, calibration_data, "export_ensemble")
    layer = FrozenEnsemble(target, flat, task, state)
    archive = keras.export.ExportArchive()
    archive.track(layer)
    archive.add_endpoint("serve", layer.call, input_signature=[_x_spec(target)])
    return _write_atomically(path, lambda out: archive.write_out(out, verbose=False))


def export_model(model: keras.Model, path: str) -> str:
    """Exports any keras.Model with the standard ``serve`` endpoint (`model.export`)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
    return _write_atomically(path, lambda out: model.export(out, format="tf_saved_model", verbose=False))
