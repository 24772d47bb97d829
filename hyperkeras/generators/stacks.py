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
    loss saw. This replaces them by exact averages under the current weights.

    Args:
        layer: the layer (or model) holding the batch-normalisation layers.
        run_batch: ``run_batch(i)`` runs one forward pass with ``training=True`` on batch i (``i`` a
            scalar int32 tensor; it is traced once as a `tf.function`).
        num_batches: number of batches to average over (>= 1).

    Returns:
        The number of batch-normalisation layers recalibrated (0: nothing to do, `run_batch` not called).
    """
    if int(num_batches) < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches!r}.")
    layers = [l for l in layer._flatten_layers(include_self=True, recursive=True)
              if isinstance(l, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    if any(getattr(l, "renorm", False) for l in layers):
        raise ValueError("recalibrate_batchnorm does not support batch renormalisation (renorm=True).")
    momenta = [l.momentum for l in layers]
    # The layers read `momentum` when they update; a variable makes one traced step serve every batch.
    momentum = tf.Variable(0.0, trainable=False, dtype=layers[0].moving_mean.dtype)
    step = tf.function(run_batch)
    try:
        for l in layers:
            l.momentum = momentum
        for i in range(int(num_batches)):
            momentum.assign(i / (i + 1.0))  # moving <- moving·i/(i+1) + batch/(i+1): the running mean
            step(tf.constant(i, tf.int32))
    finally:
        for l, m in zip(layers, momenta):
            l.momentum = m
    return len(layers)
