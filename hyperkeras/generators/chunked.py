"""`ChunkedGenerator`: one shared head emits the target's flat parameter vector chunk by chunk (hypnettorch's
``ChunkedHMLP``, von Oswald et al. §3), so the generator can be far smaller than its target.

    chunk embedding e_c (learned, one per chunk) ─┐
    condition vector (task embedding / vector) ───┼─► [e_c, cond, z] ─► shared MLP head ─► chunk c (chunk_size values)
    noise z (optional) ───────────────────────────┘
    u = [chunk_0 | chunk_1 | ... | chunk_{C-1}][:num_params]  ─►  θ = offset + scale ⊙ u  ─►  target.unflatten(θ)
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from hyperkeras.generators.base import _positive_int
from hyperkeras.generators.mlp import FlatGenerator
from hyperkeras.generators.stacks import build_stack, check_units, dense_layers, run_stack

__all__ = ["ChunkedGenerator"]


@keras.saving.register_keras_serializable(package="hyperkeras")
class ChunkedGenerator(FlatGenerator):
    """Generates the target's flat parameter vector in chunks of ``chunk_size`` values from one shared head.

    Chunk c of every network is ``head([e_c, c_k, z_k])``: e_c the c-th learned chunk embedding
    (``[num_chunks, chunk_dim]``, N(0, 1) at start), c_k the condition vector of network k (task
    embedding or given vector; none for an unconditioned generator), z_k its noise (none with
    ``noise_dim=0``). The C = ceil(num_params / chunk_size) chunks are concatenated and the last one cut to
    length, then ``θ = offset + scale ⊙ u`` as in every `FlatGenerator` (hyperfan scales per target tensor;
    θ₀ offset with ``residual``). Works for any target (`TargetNetwork.unflatten`); its size against the
    target's is `compression_ratio`.

    At initialisation (``init`` hyperfan-in / -out) the head's output layer is calibrated as in
    `MLPGenerator`, then each chunk, whose mean and spread otherwise depend on its random embedding, is
    measured on typical inputs: a fixed factor per chunk (``chunk_scale``, a non-trainable weight) brings its
    variance to 1 and its mean is subtracted through the non-trainable offset (which `from_target` sets to
    θ₀ minus those means; both are saved with the generator). So each kernel of the generated networks has the variance of its
    hyperfan rule; the target's zero-initialised biases start with their layer's spread (not zero), since
    an output column of the head serves every tensor.

    Args:
        param_shapes, noise_dim, scales, init, residual, num_conditions, condition_dim: see `FlatGenerator`.
        chunk_size: values emitted per chunk (the head's output width).
        chunk_dim: size of each chunk embedding.
        hidden_units: widths of the head's hidden layers.
        activation: hidden activation.

    Call arguments (`generate`):
        target: the `hyperkeras.TargetNetwork`.
        noise: ``[K, noise_dim]``.
        training: unused.
        condition: a task id or ids ``[K]``, or vectors ``[condition_dim]`` / ``[K, condition_dim]``
            (conditional generators only).

    Example:

    ```python
    gen = ChunkedGenerator.from_target(target, chunk_size=500, noise_dim=0, num_conditions=5)
    gen.compression_ratio(target)                              # generator params / target params
    params = gen.generate(target, gen.sample_noise(1), condition=2)
    ```

    Reference:
        von Oswald, Henning, Grewe, Sacramento, "Continual learning with hypernetworks", ICLR 2020 (chunked
        hypernetworks); Ha, Dai, Le, "HyperNetworks", 2016 (weight sharing across generated pieces).
    """

    def __init__(
        self,
        param_shapes,
        chunk_size=1000,
        chunk_dim=8,
        noise_dim=8,
        hidden_units=(100, 100),
        activation="relu",
        scales=None,
        init="hyperfan_in",
        residual=False,
        num_conditions=None,
        condition_dim=None,
        **kwargs,
    ):
        super().__init__(
            param_shapes,
            noise_dim=noise_dim,
            scales=scales,
            init=init,
            residual=residual,
            num_conditions=num_conditions,
            condition_dim=condition_dim,
            **kwargs,
        )
        self.chunk_size = _positive_int("chunk_size", chunk_size)
        self.chunk_dim = _positive_int("chunk_dim", chunk_dim)
        self.num_chunks = math.ceil(self.num_params / self.chunk_size)
        self.hidden_units = check_units("hidden_units", hidden_units)
        self.activation = activation
        self.hidden = dense_layers(self, "hidden", self.hidden_units, activation)
        self.out = keras.layers.Dense(self.chunk_size, name="chunk", dtype=self.dtype_policy)

    @classmethod
    def from_target(
        cls,
        target,
        chunk_size=1000,
        chunk_dim=8,
        noise_dim=8,
        hidden_units=(100, 100),
        activation="relu",
        init="hyperfan_in",
        residual=False,
        num_conditions=None,
        condition_dim=None,
        **kwargs,
    ):
        """A built generator for `target`: scales from `init`, offsets (θ₀) from the wrapped model."""
        gen = cls(
            **cls._target_config(target, init),
            chunk_size=chunk_size,
            chunk_dim=chunk_dim,
            noise_dim=noise_dim,
            hidden_units=hidden_units,
            activation=activation,
            init=init,
            residual=residual,
            num_conditions=num_conditions,
            condition_dim=condition_dim,
            **kwargs,
        )
        return gen._setup_from_target(target)

    def build(self, input_shape=None):
        if self.built:
            return
        self._build_flat()
        self.chunk_embeddings = self.add_weight(
            shape=(self.num_chunks, self.chunk_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="chunk_embeddings",
        )
        head_in = self.chunk_dim + self.input_dim
        build_stack([*self.hidden, self.out], (None, head_in))
        self.chunk_scale = self.add_weight(
            shape=(self.num_chunks,), initializer="ones", trainable=False, name="chunk_scale"
        )
        m = self.num_chunks * max(64, -(-4096 // self.num_chunks))  # every chunk equally often
        chunk_of_row = tf.range(m) % self.num_chunks
        rows = tf.concat([tf.gather(self.chunk_embeddings, chunk_of_row), self._init_inputs(m)], 1)
        self._init_output(self.out, self.hidden, rows)
        if not self.residual and self.init != "default":
            self._calibrate_chunks(rows, chunk_of_row)
        self.built = True

    def _calibrate_chunks(self, rows, chunk_of_row):
        """Per chunk, on the typical `rows`: its mean output goes into the offset (`_centre`, applied by
        `from_target`) and ``chunk_scale`` brings its variance to 1. A chunk's output otherwise has a mean and
        spread of its own, set by its random embedding. Inputs that do not vary (one task, no noise): the
        second moment is brought to 1, nothing is centred."""
        with tf.init_scope():
            u = tf.cast(self.out(run_stack(self.hidden, rows)), tf.float32).numpy()
            ids = chunk_of_row.numpy()
            counts = np.bincount(ids, minlength=self.num_chunks)[:, None]
            mean = np.zeros((self.num_chunks, self.chunk_size))
            np.add.at(mean, ids, u)
            mean /= counts
            square = np.zeros(self.num_chunks)
            np.add.at(square, ids, np.mean(np.square(u), axis=1))
            square /= counts[:, 0]
            variance = square - np.mean(np.square(mean), axis=1)
            centred = bool(np.all(variance > 1e-6 * np.maximum(square, 1e-30)))
            spread = variance if centred else np.maximum(square, 1e-12)
            scale = 1.0 / np.sqrt(spread)
            self.chunk_scale.assign(scale.astype("float32"))
            if centred:
                centre = (mean * scale[:, None]).reshape(-1)[: self.num_params]
                self._centre = (centre * self._scale_vector).astype("float32")

    def _outputs(self, inputs, training=False):
        k = tf.shape(inputs)[0]
        c = self.num_chunks
        emb = ops.cast(self.chunk_embeddings, inputs.dtype)
        # Rows (network k, chunk c), k-major: [e_c, inputs_k].
        rows = tf.concat(
            [
                tf.tile(emb[None], tf.stack([k, 1, 1])),
                tf.tile(inputs[:, None, :], tf.stack([1, c, 1])),
            ],
            axis=2,
        )
        rows = tf.reshape(rows, [-1, self.chunk_dim + self.input_dim])
        chunks = self.out(run_stack(self.hidden, rows, training=training))  # [K·C, chunk_size]
        chunks = tf.reshape(chunks, [k, c, self.chunk_size]) * ops.cast(self.chunk_scale, chunks.dtype)[None, :, None]
        return tf.reshape(chunks, [k, c * self.chunk_size])[:, : self.num_params]

    def get_config(self):
        config = super().get_config()
        config.update(
            chunk_size=self.chunk_size,
            chunk_dim=self.chunk_dim,
            hidden_units=list(self.hidden_units),
            activation=self.activation,
        )
        return config
