"""Image augmentation in the graph, stateless and seeded (the Wide ResNet experiments' CIFAR augmentation)."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["augment"]


def augment(images, step, seed):
    """Pad 4 (zeros), random 32×32 crop, random horizontal flip; stateless, seeded by (seed, step)."""
    b = tf.shape(images)[0]
    size = images.shape[1]
    padded = tf.pad(images, [[0, 0], [4, 4], [4, 4], [0, 0]])
    s = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    offsets = tf.random.stateless_uniform([b, 2], seed=s, minval=0, maxval=9, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(size)[None]
    cols = offsets[:, 1:] + tf.range(size)[None]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform([b], seed=s + [0, 1 << 40], minval=0.0, maxval=1.0) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)
