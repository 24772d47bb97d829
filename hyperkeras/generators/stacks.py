"""Building and running a plain list of Keras layers as one MLP (shared by the generators)."""

from __future__ import annotations

import keras


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
