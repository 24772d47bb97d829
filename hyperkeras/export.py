"""SavedModel export for serving: generators, frozen ensembles and single networks.

Three kinds of SavedModel, all loadable with `tf.saved_model.load` in a process that has TensorFlow but
not hyperkeras, or with `keras.layers.TFSMLayer`:

* `export_generator(sampler, path)` — a trained weight generator (`EntropyHypernetwork`, `HyperGAN`, or
  anything with ``.target`` and ``.sample(n, seed)``). Endpoints:
  ``sample_weights(seed: int64[], n: int32[]) -> {"weights": [n, P]}`` and
  ``predict(x: float32[B, *input_shape], n: int32[], seed: int64[]) ->
  {"mean_probs": [B, C], "predictive_entropy": [B], "probs": [n, B, C]}``.
* `export_ensemble(target, params, path)` — N networks frozen at export time; endpoint
  ``serve(x) -> {"mean_probs", "predictive_entropy", "probs"}``.
* `export_model(model, path)` — any keras.Model (a network from `TargetNetwork.to_keras_model`, or a
  model using HyperConv2D / HyperDense / HyperLSTMCell) with the standard ``serve`` endpoint.

Every export is written to a temporary folder first and moved into place when complete, so a crash never
leaves a half-written SavedModel at `path`.

Serving (TensorFlow only)::

    m = tf.saved_model.load("exported/generator")
    out = m.predict(x=images, n=tf.constant(100), seed=tf.constant(0, tf.int64))
    out["mean_probs"], out["predictive_entropy"]
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging as absl_logging

from hyperkeras.targets import TargetNetwork


def _probabilities(target: TargetNetwork, outputs):
    """Target outputs -> class probabilities (softmax unless the target already ends in one)."""
    if target.output_activation == "softmax":
        return outputs
    return tf.nn.softmax(outputs, axis=-1)


def ensemble_summary(target: TargetNetwork, outputs) -> dict:
    """``outputs`` [n, B, C] from `target.apply` -> mean probabilities, predictive entropy, per-network probs."""
    probs = _probabilities(target, outputs)
    mean = tf.reduce_mean(probs, axis=0)
    entropy = -tf.reduce_sum(tf.math.xlogy(mean, mean), axis=-1)  # metrics.entropy in-graph: 0 log 0 = 0
    return {"mean_probs": mean, "predictive_entropy": entropy, "probs": probs}


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


def _check_sampler(sampler):
    if not isinstance(getattr(sampler, "target", None), TargetNetwork) or not callable(getattr(sampler, "sample", None)):
        raise TypeError(
            "sampler must have a `.target` (hyperkeras.TargetNetwork) and a `.sample(n, seed)` method, "
            f"got {type(sampler).__name__}."
        )
    if not isinstance(sampler, (keras.layers.Layer, tf.Module)):
        raise TypeError(f"sampler must be a keras Layer/Model or tf.Module to be saved, got {type(sampler).__name__}.")


def export_generator(sampler, path: str) -> str:
    """Exports a weight generator with ``sample_weights`` and ``predict`` endpoints (see module doc)."""
    _check_sampler(sampler)
    target = sampler.target
    if isinstance(sampler, keras.layers.Layer) and not sampler.built:
        sampler.sample(1, 0)  # creates any weights not yet created
        sampler.built = True
    archive = keras.export.ExportArchive()
    archive.track(sampler)

    def sample_weights(seed, n):
        params = sampler.sample(n, seed)
        return {"weights": target.flatten(params)}

    def predict(x, n, seed):
        params = sampler.sample(n, seed)
        return ensemble_summary(target, target.apply(params, x))

    seed_spec = tf.TensorSpec([], tf.int64, name="seed")
    n_spec = tf.TensorSpec([], tf.int32, name="n")
    x_spec = tf.TensorSpec([None, *target.input_shape], tf.float32, name="x")
    archive.add_endpoint("sample_weights", sample_weights, input_signature=[seed_spec, n_spec])
    archive.add_endpoint("predict", predict, input_signature=[x_spec, n_spec, seed_spec])
    return _write_atomically(path, lambda out: archive.write_out(out, verbose=False))


class FrozenEnsemble(keras.layers.Layer):
    """Holds N networks' flat weights ``[N, P]`` and evaluates them as one ensemble.

    Args:
        target: the `TargetNetwork` the weights belong to.
        weights: ``[N, P]`` flat weights (`target.flatten(params)`).

    Call arguments:
        x: ``[B, *target.input_shape]``.

    Returns a dict ``mean_probs`` [B, C], ``predictive_entropy`` [B], ``probs`` [N, B, C].
    """

    def __init__(self, target: TargetNetwork, weights, **kwargs):
        super().__init__(**kwargs)
        self.target = target
        weights = tf.convert_to_tensor(weights, tf.float32)
        if weights.shape.rank != 2 or weights.shape[1] != target.num_params:
            raise ValueError(f"weights must be [N, {target.num_params}], got {weights.shape}.")
        self.flat = self.add_weight(
            name="flat_weights", shape=tuple(weights.shape), initializer="zeros", trainable=False
        )
        self.flat.assign(weights)
        self.built = True

    def call(self, x):
        return ensemble_summary(self.target, self.target.apply(self.target.unflatten(self.flat), x))


def export_ensemble(target: TargetNetwork, params, path: str) -> str:
    """Exports the networks in `params` (dict or flat ``[N, P]``) frozen, with a ``serve(x)`` endpoint."""
    flat = params if not isinstance(params, dict) else target.flatten(params)
    layer = FrozenEnsemble(target, flat)
    archive = keras.export.ExportArchive()
    archive.track(layer)
    x_spec = tf.TensorSpec([None, *target.input_shape], tf.float32, name="x")
    archive.add_endpoint("serve", layer.call, input_signature=[x_spec])
    return _write_atomically(path, lambda out: archive.write_out(out, verbose=False))


def export_model(model: keras.Model, path: str) -> str:
    """Exports any keras.Model with the standard ``serve`` endpoint (`model.export`)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
    return _write_atomically(path, lambda out: model.export(out, format="tf_saved_model", verbose=False))
