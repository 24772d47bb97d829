"""HyperLSTMCell: the dynamic hypernetwork of Ha, Dai & Le as a Keras 3 RNN cell."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

GATES = ("input", "candidate", "forget", "output")  # order of the four gate blocks (reference order i, j, f, o)


def _per_gate_orthogonal(gain=1.0, seed=None):
    """Initializer for an `[n, 4 * n]` recurrent kernel: one orthogonal `[n, n]` block per gate."""

    def init(shape, dtype=None):
        rows, cols = shape
        if cols % 4:
            raise ValueError(f"per-gate orthogonal init needs a last dimension divisible by 4, got shape {shape}.")
        block = cols // 4
        rng = np.random.default_rng(seed)
        blocks = []
        for _ in range(4):
            a = rng.standard_normal((max(rows, block), min(rows, block)))
            q, r = np.linalg.qr(a)
            q = q * np.sign(np.diag(r))  # uniform over the orthogonal group
            if rows < block:
                q = q.T
            blocks.append(gain * q[:rows, :block])
        return ops.convert_to_tensor(np.concatenate(blocks, axis=1), dtype=dtype or "float32")

    return init


def _layer_norm(x, gamma, beta, epsilon):
    """Layer norm over the last axis with a hand-written backward pass; any (dynamic) batch size.

    `gamma` and `beta` broadcast against the trailing axes of `x`. The closed-form gradient
    (dx = inv·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·γ) needs about half the ops of automatic
    differentiation, which matters inside a recurrent loop (see benchmarks/hyperlstm_step.py).
    """
    gamma = tf.convert_to_tensor(gamma, dtype=x.dtype)
    beta = tf.convert_to_tensor(beta, dtype=x.dtype)
    batch_axes = list(range(len(x.shape) - len(gamma.shape)))

    @tf.custom_gradient
    def forward(x, gamma, beta):
        centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
        inv = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True) + epsilon)
        xhat = centred * inv

        def grad(dy):
            g = dy * gamma
            dx = inv * (
                g - tf.reduce_mean(g, axis=-1, keepdims=True) - xhat * tf.reduce_mean(g * xhat, axis=-1, keepdims=True)
            )
            return dx, tf.reduce_sum(dy * xhat, axis=batch_axes), tf.reduce_sum(dy, axis=batch_axes)

        return xhat * gamma + beta, grad

    return forward(x, gamma, beta)


@keras.saving.register_keras_serializable(package="hyperkeras")
class HyperLSTMCell(keras.layers.Layer):
    """LSTM cell whose weights are rescaled at every step by a small "hyper" LSTM (HyperLSTM).

    A small LSTM (the hyper cell, `hyper_num_units` units) reads `[x_t, h_{t-1}]` and emits ĥ_t. For each
    of the four gates (input i, candidate j, forget f, output o — in this order in every kernel) it
    produces three embeddings of size N_z = `hyper_embedding_size`:

        z_x = W_ĥx ĥ_t + b_x,   z_h = W_ĥh ĥ_t + b_h,   z_b = W_ĥb ĥ_t      (no bias)

    which are projected linearly to weight-scaling vectors d_x(z_x), d_h(z_h) and a dynamic bias
    b(z_b) of size `num_units`. The gate pre-activation is

        gate = LN(d_h(z_h) ⊙ (W_h h_{t-1}) + d_x(z_x) ⊙ (W_x x_t) + b(z_b) + b)

    ("weight-scaling" form of the paper, eq. 12–13 of arXiv:1609.09106: scaling the rows of W_h/W_x is
    the same as a per-step, per-example weight matrix). Then, with the reference code's choices,
    c_t = σ(f + forget_bias) ⊙ c_{t-1} + σ(i) ⊙ tanh(j) and h_t = σ(o) ⊙ tanh(LN(c_t)); without layer
    norm the two LN are the identity. Layer norm normalises each gate block separately (epsilon 1e-3)
    and works with a dynamic batch size. The hyper cell is itself a (layer-normalised) LSTM.

    Initialisation (paper appendix / reference code): z_x, z_h projections weight 0 and bias 1;
    d_x, d_h projections constant 0.1 / N_z (so every scale starts at 0.1); z_b projection N(0, 0.01²),
    no bias; b(z_b) projection 0; W_h and the hyper cell's recurrent kernel orthogonal per gate; input
    kernels Glorot-uniform; static biases 0; layer-norm gains 1 and offsets 0. The forget bias is added
    after layer norm, inside the sigmoid.

    Weights (`input_dim` = d, `num_units` = n, `hyper_num_units` = m, `hyper_embedding_size` = N_z): the
    main and the hyper LSTM's kernels that read the same vector share one variable, so a step needs one
    matrix product per input — `kernel` `[d, 4n + 4m]` = [W_x | hyper W_x] and `recurrent_kernel`
    `[n, 4n + 4m]` = [W_h | hyper W_h] (columns gate by gate, i, j, f, o, within each part);
    `hyper_recurrent_kernel` `[m, 4m]`; `bias` `[4n]`, `hyper_bias` `[4m]`; `z_kernel` `[m, 3, 4 N_z]`
    and `z_bias` `[2, 4 N_z]` (x, h, b embeddings, gate-major); `d_kernel` `[3, 4, N_z, n]`; layer-norm
    gains and offsets `ln_*` / `hyper_ln_*`.

    Dropout: the reference's recurrent dropout (Semeniuta et al. 2016) — dropout with keep probability
    `dropout_keep_prob` on the candidate tanh(j), a fresh mask at every step, which never erases the
    memory. Unlike the reference it is applied only when `training=True` (the reference also dropped
    at evaluation). Input and output dropout belong to the surrounding model (`keras.layers.Dropout`).

    State: `[h, c, hyper_h, hyper_c]` with sizes `[num_units, num_units, hyper_num_units,
    hyper_num_units]`; output h (`num_units`).

    Args:
        num_units: size of the main LSTM.
        forget_bias: added to the forget-gate pre-activation (after layer norm).
        use_recurrent_dropout: drop the main cell's candidate tanh(j) when training.
        dropout_keep_prob: keep probability of the recurrent dropout (paper PTB value 0.9).
        use_layer_norm: layer-normalise gates and cell of both the main and the hyper LSTM.
        hyper_num_units: size of the hyper LSTM (paper: 128).
        hyper_embedding_size: N_z, size of each z (reference default 16; the PTB paper model uses 4).
        hyper_use_recurrent_dropout: recurrent dropout in the hyper LSTM as well.
        seed: integer seed of the dropout masks.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Call arguments:
        inputs: `[batch, input_dim]`, one time step.
        states: list `[h, c, hyper_h, hyper_c]`.
        training: Python bool; dropout only when True.

    Example:

    ```python
    cell = hyperkeras.layers.HyperLSTMCell(256, hyper_num_units=64, hyper_embedding_size=4)
    rnn = keras.layers.RNN(cell, return_sequences=True)
    y = rnn(keras.random.normal([8, 20, 32]))                           # [8, 20, 256]
    ```

    Reference:
        Ha, Dai & Le, "HyperNetworks", ICLR 2017 (arXiv:1609.09106), section 3.2 and appendix;
        reference TF1 implementation github.com/hardmaru/supercell.
    """

    def __init__(
        self,
        num_units,
        forget_bias=1.0,
        use_recurrent_dropout=False,
        dropout_keep_prob=0.9,
        use_layer_norm=True,
        hyper_num_units=128,
        hyper_embedding_size=16,
        hyper_use_recurrent_dropout=False,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("num_units", num_units),
            ("hyper_num_units", hyper_num_units),
            ("hyper_embedding_size", hyper_embedding_size),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"HyperLSTMCell: `{name}` must be a positive integer, got {value!r}.")
        if not 0.0 < float(dropout_keep_prob) <= 1.0:
            raise ValueError(f"HyperLSTMCell: `dropout_keep_prob` must be in (0, 1], got {dropout_keep_prob!r}.")
        self.num_units = int(num_units)
        self.forget_bias = float(forget_bias)
        self.use_recurrent_dropout = bool(use_recurrent_dropout)
        self.dropout_keep_prob = float(dropout_keep_prob)
        self.use_layer_norm = bool(use_layer_norm)
        self.hyper_num_units = int(hyper_num_units)
        self.hyper_embedding_size = int(hyper_embedding_size)
        self.hyper_use_recurrent_dropout = bool(hyper_use_recurrent_dropout)
        self.seed = seed
        self.epsilon = 1e-3
        self.state_size = [self.num_units, self.num_units, self.hyper_num_units, self.hyper_num_units]
        self.output_size = self.num_units
        if self.use_recurrent_dropout or self.hyper_use_recurrent_dropout:
            self.seed_generator = keras.random.SeedGenerator(seed)

    # ------------------------------------------------------------------ weights
    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"HyperLSTMCell: the last input dimension must be known, got input shape {input_shape}.")
        n, m, nz = self.num_units, self.hyper_num_units, self.hyper_embedding_size
        seed = self.seed

        def const(value):
            return lambda shape, dtype=None: ops.full(shape, value, dtype=dtype)

        def z_kernel_init(shape, dtype=None):  # [m, 3, 4 * nz]: x and h parts 0, b part N(0, 0.01^2)
            rng = np.random.default_rng(None if seed is None else seed + 7)
            w = np.zeros(shape, dtype="float32")
            w[:, 2] = rng.normal(0.0, 0.01, size=(shape[0], shape[2]))
            return ops.convert_to_tensor(w, dtype=dtype)

        def d_kernel_init(shape, dtype=None):  # [3, 4, nz, n]: x and h parts 0.1 / nz, b part 0
            w = np.zeros(shape, dtype="float32")
            w[:2] = 0.1 / shape[2]
            return ops.convert_to_tensor(w, dtype=dtype)

        seeded = lambda s: None if seed is None else seed + s  # noqa: E731
        # The hyper LSTM's input kernel is Glorot-uniform over its whole input [x, h] (fan-in d + n).
        hyper_limit = float(np.sqrt(6.0 / (input_dim + n + 4 * m)))
        hyper_input = lambda s: keras.initializers.RandomUniform(-hyper_limit, hyper_limit, seed=seeded(s))  # noqa: E731

        # Kernels of the main and the hyper LSTM that read the same vector are stored side by side, so one
        # step needs one matrix product per input: columns [main gates (4n) | hyper gates (4m)].
        #   x_t     @ kernel            -> [W_x x_t,     W_hyper_x x_t]
        #   h_{t-1} @ recurrent_kernel  -> [W_h h_{t-1}, W_hyper_h h_{t-1}]
        def blocks(*inits):
            def init(shape, dtype=None):
                return ops.concatenate([f((shape[0], cols), dtype=dtype) for cols, f in inits], axis=1)

            return init

        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, 4 * n + 4 * m),
            initializer=blocks((4 * n, keras.initializers.GlorotUniform(seeded(1))), (4 * m, hyper_input(3))),
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel",
            shape=(n, 4 * n + 4 * m),
            initializer=blocks((4 * n, _per_gate_orthogonal(1.0, seeded(2))), (4 * m, hyper_input(5))),
        )
        self.bias = self.add_weight(name="bias", shape=(4 * n,), initializer="zeros")
        self.hyper_recurrent_kernel = self.add_weight(
            name="hyper_recurrent_kernel", shape=(m, 4 * m), initializer=_per_gate_orthogonal(1.0, seeded(4))
        )
        self.hyper_bias = self.add_weight(name="hyper_bias", shape=(4 * m,), initializer="zeros")
        # Embeddings z = [z_x, z_h, z_b] (per gate) from the hyper output, and their projections d(z).
        self.z_kernel = self.add_weight(name="z_kernel", shape=(m, 3, 4 * nz), initializer=z_kernel_init)
        self.z_bias = self.add_weight(name="z_bias", shape=(2, 4 * nz), initializer=const(1.0))
        self.d_kernel = self.add_weight(name="d_kernel", shape=(3, 4, nz, n), initializer=d_kernel_init)
        if self.use_layer_norm:
            self.ln_gamma = self.add_weight(name="ln_gamma", shape=(4, n), initializer="ones")
            self.ln_beta = self.add_weight(name="ln_beta", shape=(4, n), initializer="zeros")
            self.ln_c_gamma = self.add_weight(name="ln_c_gamma", shape=(n,), initializer="ones")
            self.ln_c_beta = self.add_weight(name="ln_c_beta", shape=(n,), initializer="zeros")
            self.hyper_ln_gamma = self.add_weight(name="hyper_ln_gamma", shape=(4, m), initializer="ones")
            self.hyper_ln_beta = self.add_weight(name="hyper_ln_beta", shape=(4, m), initializer="zeros")
            self.hyper_ln_c_gamma = self.add_weight(name="hyper_ln_c_gamma", shape=(m,), initializer="ones")
            self.hyper_ln_c_beta = self.add_weight(name="hyper_ln_c_beta", shape=(m,), initializer="zeros")
        self.built = True

    # ------------------------------------------------------------------ maths
    def _lstm_update(self, gates, c, units, ln, dropout, training):
        """gates [B, 4*units] (i, j, f, o) -> (h, c)."""
        if self.use_layer_norm:
            gamma, beta, c_gamma, c_beta = ln
            g4 = ops.reshape(gates, (-1, 4, units))
            gates = ops.reshape(_layer_norm(g4, gamma, beta, self.epsilon), (-1, 4 * units))
        i, j, f, o = ops.split(gates, 4, axis=-1)
        g = ops.tanh(j)
        if dropout and training:
            g = keras.random.dropout(g, 1.0 - self.dropout_keep_prob, seed=self.seed_generator)
        new_c = c * ops.sigmoid(f + self.forget_bias) + ops.sigmoid(i) * g
        cc = _layer_norm(new_c, c_gamma, c_beta, self.epsilon) if self.use_layer_norm else new_c
        return ops.tanh(cc) * ops.sigmoid(o), new_c

    def _step(self, inputs, states, training=False):
        h, c, hyper_h, hyper_c = states
        n, m, nz = self.num_units, self.hyper_num_units, self.hyper_embedding_size
        ln = hyper_ln = None
        if self.use_layer_norm:
            ln = (self.ln_gamma, self.ln_beta, self.ln_c_gamma, self.ln_c_beta)
            hyper_ln = (self.hyper_ln_gamma, self.hyper_ln_beta, self.hyper_ln_c_gamma, self.hyper_ln_c_beta)
        # One product per input vector, then split into the main and the hyper LSTM's parts (split, not
        # slicing: the gradient of a slice materialises a full zero tensor at every step).
        x_main, x_hyper = ops.split(ops.matmul(inputs, self.kernel), [4 * n], axis=-1)
        h_main, h_hyper = ops.split(ops.matmul(h, self.recurrent_kernel), [4 * n], axis=-1)
        # Hyper LSTM on [x_t, h_{t-1}].
        hyper_gates = x_hyper + h_hyper + ops.matmul(hyper_h, self.hyper_recurrent_kernel) + self.hyper_bias
        new_hyper_h, new_hyper_c = self._lstm_update(
            hyper_gates, hyper_c, m, hyper_ln, self.hyper_use_recurrent_dropout, training
        )
        # z = [z_x, z_h, z_b] per gate (12 vectors of N_z), then d(z) as one batched product over the 12:
        # [12, B, N_z] @ [12, N_z, n] -> scales d_x, d_h and the dynamic bias, each [B, 4n].
        z = ops.matmul(new_hyper_h, ops.reshape(self.z_kernel, (m, 12 * nz)))
        z = z + ops.concatenate([ops.reshape(self.z_bias, (8 * nz,)), ops.zeros((4 * nz,), dtype=z.dtype)], axis=0)
        z = ops.transpose(ops.reshape(z, (-1, 12, nz)), (1, 0, 2))
        d = ops.matmul(z, ops.reshape(self.d_kernel, (12, nz, n)))
        d = ops.reshape(ops.transpose(ops.reshape(d, (3, 4, -1, n)), (0, 2, 1, 3)), (3, -1, 4 * n))
        d_x, d_h, d_b = ops.unstack(d, 3, axis=0)
        gates = d_x * x_main + d_h * h_main + d_b + self.bias
        new_h, new_c = self._lstm_update(gates, c, n, ln, self.use_recurrent_dropout, training)
        return new_h, [new_h, new_c, new_hyper_h, new_hyper_c], d_h

    def call(self, inputs, states, training=None):
        new_h, new_states, _ = self._step(inputs, states, training=bool(training))
        return new_h, new_states

    def call_with_scales(self, inputs, states, training=False):
        """One step that also returns the hidden-to-gate scaling vectors d_h(z_h).

        Returns `(h, new_states, scales)` with `scales` of shape `[batch, 4, num_units]`, gates in the order
        `GATES` (input, candidate, forget, output): W_h's rows for gate g are multiplied by `scales[:, g]`
        at this step. Used to draw how strongly the hyper cell changes the main LSTM's weights.
        """
        if not self.built:
            self.build(tuple(inputs.shape))
        new_h, new_states, d = self._step(inputs, states, training=training)
        return new_h, new_states, ops.reshape(d, (-1, 4, self.num_units))

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in self.state_size]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_units=self.num_units,
            forget_bias=self.forget_bias,
            use_recurrent_dropout=self.use_recurrent_dropout,
            dropout_keep_prob=self.dropout_keep_prob,
            use_layer_norm=self.use_layer_norm,
            hyper_num_units=self.hyper_num_units,
            hyper_embedding_size=self.hyper_embedding_size,
            hyper_use_recurrent_dropout=self.hyper_use_recurrent_dropout,
            seed=self.seed,
        )
        return config


def count_params(num_units, input_dim, hyper_num_units=128, hyper_embedding_size=16, use_layer_norm=True):
    """Number of trainable weights of a `HyperLSTMCell` (closed form; checked against the layer in the tests)."""
    n, m, nz, d = num_units, hyper_num_units, hyper_embedding_size, input_dim
    total = d * 4 * n + n * 4 * n + 4 * n  # main kernels and bias
    total += (d + n) * 4 * m + m * 4 * m + 4 * m  # hyper LSTM
    total += m * 12 * nz + 8 * nz + 12 * nz * n  # z and d projections
    if use_layer_norm:
        total += 2 * (4 * n + n) + 2 * (4 * m + m)
    return total


def weight_change_intensity(scales, percentile=99.0):
    """How strongly the hyper cell changes the main LSTM's weights at each step, per gate, in [0, 1].

    Args:
        scales: `[T, 4, num_units]` hidden-to-gate scaling vectors d_h(z_h) of consecutive steps (from
            `HyperLSTMCell.call_with_scales`).
        percentile: each gate's series is divided by this percentile over the T steps, then clipped to 1.

    Returns:
        `[T, 4]`: mean absolute change of d_h from the previous step relative to its mean magnitude (0 at
        the first step), normalised per gate.
    """
    scales = np.asarray(scales, dtype="float64")
    prev = np.concatenate([scales[:1], scales[:-1]], axis=0)
    change = np.abs(scales - prev).mean(-1) / (np.abs(prev).mean(-1) + 1e-8)
    top = np.percentile(change, percentile, axis=0, keepdims=True) + 1e-12
    return np.clip(change / top, 0.0, 1.0)
