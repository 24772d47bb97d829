"""Baselines for the ensemble comparisons: directly trained networks, deep ensembles, MC dropout.

* `train_direct` trains one target Keras model per seed with ``keras.Model.fit`` (Adam, cross-entropy
  for classifiers, MSE for regression); `deep_ensemble` is `train_direct` with N consecutive seeds
  (Lakshminarayanan et al., 2017, without adversarial training).
* `mean_variance_ensemble` trains networks with a mean and a variance output on the Gaussian negative
  log-likelihood (Lakshminarayanan et al., 2017, "proper scoring rule" ensembles for regression), and
  `mean_variance_predict` gives the mean and standard deviation of their Gaussian mixture.
* `with_dropout` inserts Dropout before every weighted layer but the first (Gal & Ghahramani, 2016);
  registered targets also take ``dropout=`` directly (``targets.build_model(name, dropout=0.5)``).
  `mc_dropout_predict` runs N stochastic passes through `hyperkeras.ensembles`.

Every result plugs into `hyperkeras.ensembles.predict` like generated networks:

```python
from hyperkeras import baselines, ensembles

nets = baselines.deep_ensemble("deutsch_mnist", x, y, num_models=5, steps=2000)
pred = ensembles.predict(nets, x_test)                          # deep ensemble of 5
drop = baselines.train_direct(lambda seed: baselines.with_dropout(
    targets.build_model("deutsch_mnist", seed=seed), 0.5), x, y, steps=2000)[0]
mc = baselines.mc_dropout_predict(drop, x_test, n=100)          # MC dropout
```
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hyperkeras import ensembles, probabilities, targets

__all__ = [
    "train_direct",
    "deep_ensemble",
    "mean_variance_ensemble",
    "mean_variance_predict",
    "gaussian_nll",
    "with_dropout",
    "mc_dropout_predict",
    "OutlierExposure",
]

_WEIGHTED = ("Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D")


def _builder(build, build_kwargs):
    build_kwargs = dict(build_kwargs or {})
    if isinstance(build, str):
        if build not in targets.available_targets():
            raise ValueError(f"unknown target {build!r}; available: {targets.available_targets()}.")
        return lambda seed: targets.build_model(build, seed=seed, **build_kwargs)
    if callable(build):
        return lambda seed: build(seed, **build_kwargs) if build_kwargs else build(seed)
    raise TypeError(
        f"build must be a registered target name or a callable seed -> keras.Model, got {type(build).__name__}."
    )


def train_direct(
    build,
    x,
    y,
    *,
    seeds=(0,),
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    task: str = "classification",
    build_kwargs: dict | None = None,
    validation_data=None,
    callbacks=(),
    verbose: int = 0,
) -> list:
    """Trains one freshly initialised model per seed with ``fit``.

    Args:
        build: registered target name (`hyperkeras.targets.available_targets`) or callable
            ``seed -> keras.Model``.
        x, y: training arrays (integer labels for classification).
        seeds: one model per seed (initialisation and shuffling).
        steps: optimizer steps per model (exclusive with `epochs`; default 1 epoch).
        epochs: passes over the data.
        batch_size, learning_rate: Adam settings.
        task: ``"classification"`` (sparse cross-entropy; logits or softmax outputs detected) or
            ``"regression"`` (MSE).
        build_kwargs: extra keyword arguments for the builder (e.g. ``input_shape``, ``dropout``).
        validation_data, callbacks, verbose: passed to ``fit``.

    Returns:
        list of trained keras.Models, one per seed.
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}.")
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both.")
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y have different lengths: {len(x)} and {len(y)}.")
    if len(x) == 0:
        raise ValueError("x is empty.")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed.")
    make = _builder(build, build_kwargs)
    models = []
    for seed in seeds:
        keras.utils.set_random_seed(int(seed))
        model = make(int(seed))
        if task == "classification":
            from_logits = ensembles.output_kind(model) == "logits"
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
            metrics = ["accuracy"]
        else:
            loss, metrics = keras.losses.MeanSquaredError(), []
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=int(seed))
        if steps is not None:
            ds = ds.repeat().batch(batch_size, drop_remainder=len(x) >= batch_size).prefetch(tf.data.AUTOTUNE)
            model.fit(
                ds,
                epochs=1,
                steps_per_epoch=int(steps),
                validation_data=validation_data,
                shuffle=False,
                callbacks=list(callbacks),
                verbose=verbose,
            )
        else:
            ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
            model.fit(
                ds,
                epochs=int(epochs or 1),
                validation_data=validation_data,
                callbacks=list(callbacks),
                shuffle=False,
                verbose=verbose,
            )
        models.append(model)
    return models


def deep_ensemble(build, x, y, num_models: int = 5, seed: int = 0, **kwargs) -> list:
    """`num_models` networks trained with `train_direct` from seeds ``seed, seed + 1, ...``."""
    if int(num_models) != num_models or num_models < 1:
        raise ValueError(f"num_models must be a positive integer, got {num_models!r}.")
    return train_direct(build, x, y, seeds=range(int(seed), int(seed) + int(num_models)), **kwargs)


def _split_mean_variance(outputs, min_variance=1e-6):
    """``[B, 2·D]`` outputs -> mean ``[B, D]`` and variance ``softplus(raw) + min_variance`` ``[B, D]``."""
    d = outputs.shape[-1] // 2
    mean, raw = outputs[..., :d], outputs[..., d:]
    return mean, keras.ops.softplus(raw) + min_variance


def gaussian_nll(y_true, outputs):
    """Mean Gaussian negative log-likelihood of `y_true` ``[B, D]`` under the mean and variance a
    mean–variance network outputs (``[B, 2·D]``: means, then raw variances through softplus):
    ``½ log(2π σ²) + (y − μ)² / (2σ²)``, averaged over examples and outputs."""
    mean, var = _split_mean_variance(outputs)
    y_true = keras.ops.reshape(keras.ops.cast(y_true, mean.dtype), keras.ops.shape(mean))
    return keras.ops.mean(0.5 * keras.ops.log(2.0 * np.pi * var) + 0.5 * keras.ops.square(y_true - mean) / var)


def mean_variance_ensemble(
    build,
    x,
    y,
    num_models: int = 5,
    seed: int = 0,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    build_kwargs: dict | None = None,
    verbose: int = 0,
) -> list:
    """Deep ensemble for regression with uncertainty (Lakshminarayanan et al., 2017, without adversarial
    training): `num_models` networks from seeds ``seed, seed + 1, ...``, each with 2·D outputs (D means,
    then D raw variances, σ² = softplus + 1e-6) trained on `gaussian_nll`.

    Args:
        build: registered target name or callable ``seed -> keras.Model``; the model must have 2·D linear
            outputs for D targets (for ``"hypergan_regression"`` pass ``build_kwargs={"outputs": 2}``).
        x, y: training arrays; y ``[B, D]`` (or ``[B]`` for D = 1).
        steps, epochs, batch_size, learning_rate: Adam training of each network (default 1 epoch).

    Returns:
        list of trained keras.Models; evaluate them with `mean_variance_predict`.
    """
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both.")
    if int(num_models) != num_models or num_models < 1:
        raise ValueError(f"num_models must be a positive integer, got {num_models!r}.")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32).reshape(len(x), -1)
    make = _builder(build, build_kwargs)
    models = []
    for s in range(int(seed), int(seed) + int(num_models)):
        keras.utils.set_random_seed(s)
        model = make(s)
        if model.outputs[0].shape[-1] != 2 * y.shape[1]:
            raise ValueError(
                f"a mean–variance network needs 2·D = {2 * y.shape[1]} outputs for {y.shape[1]} target(s); "
                f"the model has {model.outputs[0].shape[-1]}."
            )
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=gaussian_nll)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=s)
        if steps is not None:
            ds = ds.repeat().batch(batch_size).prefetch(tf.data.AUTOTUNE)
            model.fit(ds, epochs=1, steps_per_epoch=int(steps), verbose=verbose, shuffle=False)  # shuffled above
        else:
            model.fit(ds.batch(batch_size), epochs=int(epochs or 1), verbose=verbose, shuffle=False)
        models.append(model)
    return models


def mean_variance_predict(models, x, batch_size: int = 1024):
    """Mean and standard deviation ``[B, D]`` of the uniform Gaussian mixture of mean–variance networks:
    ``μ* = mean_m μ_m``, ``σ*² = mean_m (σ_m² + μ_m²) − μ*²`` (Lakshminarayanan et al., 2017, §2.4)."""
    if isinstance(models, keras.Model):
        models = [models]
    # All networks in one computation (`ensembles.predict_regression` stacks models of one architecture),
    # traced once, rather than a `model.predict` per network, each tracing a predict function of its own.
    outputs = ensembles.predict_regression(
        list(models), np.asarray(x, np.float32), batch_size=batch_size, keep_member_outputs=True, verbose=0
    ).member_outputs
    means, second = [], []
    for out in outputs:
        mean, var = _split_mean_variance(tf.convert_to_tensor(out))
        means.append(np.asarray(mean, np.float64))
        second.append(np.asarray(var, np.float64) + np.square(means[-1]))
    mu = np.mean(means, axis=0)
    return mu, np.sqrt(np.maximum(np.mean(second, axis=0) - np.square(mu), 0.0))


def with_dropout(model: keras.Model, rate: float = 0.5, copy_weights: bool = True) -> keras.Model:
    """A copy of a chain model with ``Dropout(rate)`` before every weighted layer except the first.

    Args:
        model: Sequential or single-chain functional keras.Model.
        rate: dropout probability in [0, 1).
        copy_weights: copy `model`'s weights into the new model (else fresh initialisation).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"with_dropout expects a keras.Model, got {type(model).__name__}.")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate!r}.")
    if not model.inputs:
        raise ValueError("with_dropout needs a model with a known input (give it a keras.Input).")
    if isinstance(model, keras.Sequential):
        chain = [l for l in model.layers if type(l).__name__ != "InputLayer"]
    else:
        try:
            chain = targets.TargetNetwork(model)._chain(model)
        except ValueError as e:
            raise ValueError(f"with_dropout supports Sequential or single-chain functional models: {e}") from None
    layers = [keras.Input(tuple(model.inputs[0].shape[1:]))]
    seen_weighted = False
    for i, layer in enumerate(chain):
        if type(layer).__name__ in _WEIGHTED:
            if seen_weighted and rate > 0:
                layers.append(keras.layers.Dropout(rate, name=f"mc_dropout{i}"))
            seen_weighted = True
        layers.append(type(layer).from_config(layer.get_config()))
    new = keras.Sequential(layers, name=f"{model.name}_dropout")
    if copy_weights:
        for old in chain:
            if old.weights:
                new.get_layer(old.name).set_weights(old.get_weights())
    return new


def mc_dropout_predict(model: keras.Model, x, n: int = 100, **kwargs) -> ensembles.EnsemblePrediction:
    """`n` stochastic passes of `model` (dropout active) evaluated with `hyperkeras.ensembles.predict`."""
    return ensembles.predict(ensembles.MCDropout(model), x, n=n, **kwargs)


@keras.saving.register_keras_serializable(package="hyperkeras")
class OutlierExposure(keras.Model):
    """Trains a Keras classifier on its loss plus `hyperkeras.objectives.OutlierEntropy`'s term.

    The same term a generated ensemble gets (``−weight · H``, with H the entropy of the network's predictive
    distribution on ``probe_size`` synthetic outliers per step from `hyperkeras.probes.make_probes`, run in
    inference mode), applied to one independently trained network: so a deep ensemble of such members is the
    fair baseline for a generated ensemble trained with the term. For one network the two modes of
    `OutlierEntropy` coincide. Probe seeds: ``[seed, optimizer step]``.

    Compile and fit it like the wrapped model (its ``compile`` loss is the task loss); predict with
    ``.model`` (the wrapped classifier, an ordinary Keras model).

    Args:
        model: a Keras classifier (softmax or logit outputs).
        weight: factor of −H (>= 0).
        probe: a kind of `hyperkeras.probes.make_probes`.
        probe_size: probes per step.
        seed: first element of the probes' stateless seed.
    """

    def __init__(self, model, weight=0.1, probe="smooth_noise", probe_size=8, seed=0, **kwargs):
        super().__init__(**kwargs)
        from hyperkeras.probes import PROBE_KINDS

        if not isinstance(model, keras.Model):
            raise TypeError(f"OutlierExposure wraps a keras.Model, got {type(model).__name__}.")
        if not float(weight) >= 0:
            raise ValueError(f"OutlierExposure: weight must be >= 0, got {weight!r}.")
        if probe not in PROBE_KINDS:
            raise ValueError(f"OutlierExposure: probe must be one of {PROBE_KINDS}, got {probe!r}.")
        if isinstance(probe_size, bool) or int(probe_size) != probe_size or probe_size < 1:
            raise ValueError(f"OutlierExposure: probe_size must be a positive int, got {probe_size!r}.")
        self.model = model
        self.weight, self.probe, self.probe_size, self.seed = float(weight), probe, int(probe_size), int(seed)
        self.kind = ensembles.output_kind(model)
        self.entropy_tracker = keras.metrics.Mean(name="outlier_entropy")

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def call(self, x, training=False):
        return self.model(x, training=training)

    def outlier_entropy(self, x, step):
        """H of the network's prediction on ``probe_size`` probes made from the batch `x` at `step`."""
        from hyperkeras.objectives.outlier import outlier_entropy
        from hyperkeras.probes import make_probes

        seed = tf.stack([tf.constant(self.seed, tf.int32), tf.cast(step, tf.int32)])
        probes = tf.stop_gradient(make_probes(self.probe, x, self.probe_size, seed))
        outputs = tf.cast(self.model(probes, training=False), tf.float32)
        return outlier_entropy(probabilities.log_softmax(outputs, self.kind)[None], "mean")

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            entropy = self.outlier_entropy(x, self.optimizer.iterations)
            total = loss - self.weight * entropy
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.entropy_tracker.update_state(entropy)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        logs["outlier_entropy"] = self.entropy_tracker.result()
        return logs

    @property
    def metrics(self):
        return [*super().metrics, self.entropy_tracker]

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "weight": self.weight,
            "probe": self.probe,
            "probe_size": self.probe_size,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)
