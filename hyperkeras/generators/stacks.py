"""Building and running a plain list of Keras layers as one MLP (shared by the generators)."""

from __future__ import annotations

import keras
import tensorflow as tf


def build_stack(layers, input_shape) -> tuple:
    """Builds `layers` in order from `input_shape`; returns the output shape."""
    shape = tuple(input_shape)
    for layer in layers:
        layer.build(shape)
        shape = tuple(layer.compute_output_shape(shape))
    return shape


def run_stack(layers, h, training=None):
    """Applies `layers` in order; batch normalisation layers get `training`."""
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            h = layer(h, training=training)
        else:
            h = layer(h)
    return h


def recalibrate_batchnorm(layer, run_batch, num_batches: int) -> int:
    """Sets the moving mean and variance of every batch-normalisation layer in `layer` to the average
    of its batch statistics over `num_batches` training-mode forward passes, without changing any
    trainable weight ("precise batch norm").

    The moving averages that batch normalisation keeps during training lag behind a generator whose
    weights change quickly, and inference-mode samples then differ from the training-mode ones the
    loss saw. This replaces them by exact averages under the current weights. (`BatchNormRecalibrator`
    does the same with one traced step kept for repeated use.)

    Args:
        layer: the layer (or model) holding the batch-normalisation layers.
        run_batch: ``run_batch(i)`` runs one forward pass with ``training=True`` on batch i (``i`` a
            scalar int32 tensor; it is traced once as a `tf.function`).
        num_batches: number of batches to average over (>= 1).

    Returns:
        The number of batch-normalisation layers recalibrated (0: nothing to do, `run_batch` not called).
    """
    return BatchNormRecalibrator(layer, run_batch)(num_batches)


class BatchNormRecalibrator:
    """`recalibrate_batchnorm` for repeated use: the forward pass is traced once (on the first call) and
    the momentum variable the layers read while recalibrating is kept, so calling it after every `fit`
    does not trace a new `tf.function` each time.

    Args:
        layer: the layer (or model) holding the batch-normalisation layers.
        run_batch: ``run_batch(i, *args)``: one training-mode forward pass on batch ``i`` (a scalar int32
            tensor); ``args`` are the extra tensors given to each call.
    """

    def __init__(self, layer, run_batch):
        self.layers = [
            l
            for l in layer._flatten_layers(include_self=True, recursive=True)
            if isinstance(l, keras.layers.BatchNormalization)
        ]
        if any(getattr(l, "renorm", False) for l in self.layers):
            raise ValueError("recalibrate_batchnorm does not support batch renormalisation (renorm=True).")
        # The layers read `momentum` when they update; a variable makes one traced step serve every batch.
        self.momentum = (
            tf.Variable(0.0, trainable=False, dtype=self.layers[0].moving_mean.dtype) if self.layers else None
        )
        self._step = tf.function(run_batch)

    def __call__(self, num_batches: int, *args) -> int:
        """Recalibrates from `num_batches` batches; returns the number of batch-normalisation layers."""
        if int(num_batches) < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches!r}.")
        if not self.layers:
            return 0
        momenta = [l.momentum for l in self.layers]
        try:
            for l in self.layers:
                l.momentum = self.momentum
            for i in range(int(num_batches)):
                self.momentum.assign(i / (i + 1.0))  # moving <- moving·i/(i+1) + batch/(i+1): the running mean
                self._step(tf.constant(i, tf.int32), *args)
        finally:
            for l, m in zip(self.layers, momenta):
                l.momentum = m
        return len(self.layers)


def check_units(name, units) -> tuple:
    """Hidden widths as a tuple of positive ints (ValueError naming `name` otherwise)."""
    units = tuple(int(u) for u in (units or ()))
    if any(u <= 0 for u in units):
        raise ValueError(f"{name} must be a sequence of positive ints, got {units}.")
    return units


def dense_layers(owner, prefix, units, activation) -> list:
    """Dense layers ``{prefix}_{i}`` of the given widths, in the dtype policy of the layer that owns them."""
    return [
        keras.layers.Dense(u, activation=activation, name=f"{prefix}_{i}", dtype=owner.dtype_policy)
        for i, u in enumerate(units)
    ]
