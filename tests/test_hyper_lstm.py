"""HyperLSTMCell against a NumPy implementation of the paper's equations, in every keras.layers.RNN setting."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hyperkeras.layers import HyperLSTMCell
from hyperkeras.layers.hyper_lstm_cell import count_params

N, M, NZ, D, B = 6, 5, 3, 4, 3


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_ln(x, gamma, beta, eps=1e-3):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def np_step(w, x, h, c, hh, hc, use_ln=True, forget_bias=1.0):
    """The paper's HyperLSTM step, gate by gate (i, j, f, o), from the named weights."""
    n, m = h.shape[-1], hh.shape[-1]
    nz = w["z_bias"].shape[-1] // 4
    # Hyper LSTM on [x, h].
    hyper_kernel = np.concatenate([w["kernel"][:, 4 * n :], w["recurrent_kernel"][:, 4 * n :]], 0)  # [x, h] -> 4m
    hg = np.concatenate([x, h], -1) @ hyper_kernel + hh @ w["hyper_recurrent_kernel"] + w["hyper_bias"]
    hg = hg.reshape(-1, 4, m)
    if use_ln:
        hg = np_ln(hg, w["hyper_ln_gamma"], w["hyper_ln_beta"])
    hi, hj, hf, ho = (hg[:, k] for k in range(4))
    hc_new = hc * sigmoid(hf + forget_bias) + sigmoid(hi) * np.tanh(hj)
    hh_new = np.tanh(np_ln(hc_new, w["hyper_ln_c_gamma"], w["hyper_ln_c_beta"]) if use_ln else hc_new) * sigmoid(ho)
    pre = []
    for g in range(4):
        sl = slice(g * nz, (g + 1) * nz)
        z_x = hh_new @ w["z_kernel"][:, 0, sl] + w["z_bias"][0, sl]
        z_h = hh_new @ w["z_kernel"][:, 1, sl] + w["z_bias"][1, sl]
        z_b = hh_new @ w["z_kernel"][:, 2, sl]
        d_x, d_h, b_z = z_x @ w["d_kernel"][0, g], z_h @ w["d_kernel"][1, g], z_b @ w["d_kernel"][2, g]
        cols = slice(g * n, (g + 1) * n)
        wx_x = x @ w["kernel"][:, cols]
        wh_h = h @ w["recurrent_kernel"][:, cols]
        a = d_h * wh_h + d_x * wx_x + b_z + w["bias"][cols]
        if use_ln:
            a = np_ln(a, w["ln_gamma"][g], w["ln_beta"][g])
        pre.append(a)
    i, j, f, o = pre
    c_new = c * sigmoid(f + forget_bias) + sigmoid(i) * np.tanh(j)
    h_new = np.tanh(np_ln(c_new, w["ln_c_gamma"], w["ln_c_beta"]) if use_ln else c_new) * sigmoid(o)
    return h_new, c_new, hh_new, hc_new


def randomise(cell, seed=0):
    """Random values in every weight (so the paper's constant initialisation cannot hide a bug)."""
    rng = np.random.RandomState(seed)
    for v in cell.weights:
        v.assign(rng.uniform(-0.6, 0.6, size=v.shape).astype("float32") + (1.0 if "gamma" in v.path else 0.0))
    return {v.path.split("/")[-1]: v.numpy() for v in cell.weights}


def make_cell(**kw):
    args = dict(hyper_num_units=M, hyper_embedding_size=NZ)
    args.update(kw)
    cell = HyperLSTMCell(N, **args)
    cell.build((None, D))
    return cell


@pytest.mark.parametrize("use_ln", [True, False])
def test_one_step_matches_numpy(use_ln):
    cell = make_cell(use_layer_norm=use_ln)
    w = randomise(cell)
    rng = np.random.RandomState(1)
    x = rng.randn(B, D).astype("float32")
    states = [rng.randn(B, s).astype("float32") for s in cell.state_size]
    out, new = cell(x, states)
    ref = np_step(w, x, *states, use_ln=use_ln)
    np.testing.assert_allclose(out.numpy(), ref[0], atol=2e-5)
    for got, want in zip(new, ref):
        np.testing.assert_allclose(got.numpy(), want, atol=2e-5)


def test_sequence_equals_stepping_and_masking():
    cell = make_cell()
    rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    rng = np.random.RandomState(2)
    x = rng.randn(B, 5, D).astype("float32")
    rnn(x)
    w = randomise(cell)
    seq, *final = rnn(x)
    states = [np.zeros((B, s), "float32") for s in cell.state_size]
    for t in range(5):
        states = list(np_step(w, x[:, t], *states))
        np.testing.assert_allclose(seq[:, t].numpy(), states[0], atol=3e-5)
    for got, want in zip(final, states):
        np.testing.assert_allclose(got.numpy(), want, atol=3e-5)
    # Masking: masked steps carry the state over unchanged.
    mask = np.ones((B, 5), bool)
    mask[0, 3:] = False
    seq_m, *final_m = rnn(x, mask=mask)
    np.testing.assert_allclose(final_m[0][0].numpy(), seq[0, 2].numpy(), atol=3e-5)
    np.testing.assert_allclose(final_m[0][1:].numpy(), final[0][1:].numpy(), atol=3e-5)


def test_stacked_bidirectional_dynamic_batch_and_gradients():
    inp = keras.Input((None, D))
    y = keras.layers.Masking()(inp)
    y = keras.layers.Bidirectional(
        keras.layers.RNN(HyperLSTMCell(N, hyper_num_units=M, hyper_embedding_size=NZ), return_sequences=True)
    )(y)
    y = keras.layers.RNN(
        [
            HyperLSTMCell(N, hyper_num_units=M, hyper_embedding_size=NZ),
            HyperLSTMCell(N, hyper_num_units=M, hyper_embedding_size=2),
        ]
    )(y)
    model = keras.Model(inp, keras.layers.Dense(1)(y))
    f = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([None, None, D])])
    for batch, steps in ((2, 3), (5, 7)):
        assert f(tf.random.normal([batch, steps, D])).shape == (batch, 1)
    x = tf.random.normal([4, 6, D])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads)
    names = [v.path for v in model.trainable_variables]
    nonzero = {n for n, g in zip(names, grads) if float(tf.reduce_sum(tf.abs(g))) > 0}
    # With the paper's initialisation z_x = z_h = 1 and b(z_b) = 0 do not depend on the hyper output, so at
    # the first step only the z and d projections (and the main LSTM) receive gradients.
    assert any("z_kernel" in n for n in nonzero) and any("d_kernel" in n for n in nonzero)
    assert not any("hyper_recurrent_kernel" in n or "hyper_bias" in n for n in nonzero)
    fused = [
        (v.path, g)
        for v, g in zip(model.trainable_variables, grads)
        if v.path.endswith(("/kernel", "/recurrent_kernel")) and v.shape[-1] == 4 * N + 4 * M
    ]
    assert len(fused) == 8  # kernel and recurrent_kernel of the four cells
    for path, g in fused:  # the main LSTM's columns get gradients, the hyper LSTM's input columns none
        assert float(tf.reduce_sum(tf.abs(g[:, : 4 * N]))) > 0, path
        assert float(tf.reduce_sum(tf.abs(g[:, 4 * N :]))) == 0, path


@pytest.mark.parametrize("gamma_shape", [(7,), (4, 7)])
def test_layer_norm_hand_written_gradient_matches_finite_differences(gamma_shape):
    from hyperkeras.layers.hyper_lstm_cell import _layer_norm

    rng = np.random.RandomState(3)
    x = tf.constant(rng.randn(3, *gamma_shape), tf.float64)
    gamma = tf.constant(rng.uniform(0.5, 1.5, gamma_shape), tf.float64)
    beta = tf.constant(rng.randn(*gamma_shape), tf.float64)
    np.testing.assert_allclose(
        _layer_norm(x, gamma, beta, 1e-3).numpy(), np_ln(x.numpy(), gamma.numpy(), beta.numpy()), atol=1e-12
    )
    weights = tf.constant(rng.randn(3, *gamma_shape), tf.float64)  # a non-trivial scalar loss
    theoretical, numerical = tf.test.compute_gradient(
        lambda x, g, b: tf.reduce_sum(tf.sin(_layer_norm(x, g, b, 1e-3)) * weights), [x, gamma, beta]
    )
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, atol=1e-5)

    def composed(x, g, b):  # the same formula left to automatic differentiation
        mu = tf.reduce_mean(x, -1, keepdims=True)
        var = tf.reduce_mean(tf.square(x - mu), -1, keepdims=True)
        return tf.reduce_sum(tf.sin((x - mu) / tf.sqrt(var + 1e-3) * g + b) * weights)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, gamma, beta])
        ours, auto = tf.reduce_sum(tf.sin(_layer_norm(x, gamma, beta, 1e-3)) * weights), composed(x, gamma, beta)
    for a, b in zip(tape.gradient(ours, [x, gamma, beta]), tape.gradient(auto, [x, gamma, beta])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


def test_initialisation_matches_paper():
    cell = HyperLSTMCell(8, hyper_num_units=6, hyper_embedding_size=4)
    cell.build((None, 5))
    z = cell.z_kernel.numpy()
    np.testing.assert_array_equal(z[:, :2], 0.0)  # z_x, z_h projections: weight 0
    np.testing.assert_array_equal(cell.z_bias.numpy(), 1.0)  # ... and bias 1
    assert 0.003 < z[:, 2].std() < 0.02 and abs(z[:, 2].mean()) < 0.01  # z_b ~ N(0, 0.01^2)
    d = cell.d_kernel.numpy()
    np.testing.assert_allclose(d[:2], 0.1 / 4)  # d_x, d_h: constant 0.1 / N_z
    np.testing.assert_array_equal(d[2], 0.0)  # b(z_b): 0
    for kernel, n in ((cell.recurrent_kernel, 8), (cell.hyper_recurrent_kernel, 6)):
        k = kernel.numpy()
        for g in range(4):
            block = k[:, g * n : (g + 1) * n]
            np.testing.assert_allclose(block.T @ block, np.eye(n), atol=1e-5)  # orthogonal per gate
        assert not np.allclose(k[:, :n], k[:, n : 2 * n])
    np.testing.assert_array_equal(cell.bias.numpy(), 0.0)
    # At initialisation every scale is 0.1·(sum of N_z ones) = 0.1 and the dynamic bias is 0.
    x = np.random.RandomState(0).randn(3, 5).astype("float32")
    _, _, scales = cell.call_with_scales(x, cell.get_initial_state(3))
    np.testing.assert_allclose(scales.numpy(), 0.1, rtol=1e-5)
    # Forget bias 1.0 goes after layer norm, inside the sigmoid: with zero input, c = σ(0 + 1)·c_prev + σ(0)·tanh(0).
    cell0 = HyperLSTMCell(4, hyper_num_units=3, hyper_embedding_size=2)
    cell0.build((None, 2))
    c_prev = np.full((1, 4), 2.0, "float32")
    _, (h, c, _, _) = cell0(
        np.zeros((1, 2), "float32"),
        [np.zeros((1, 4), "float32"), c_prev, np.zeros((1, 3), "float32"), np.zeros((1, 3), "float32")],
    )
    np.testing.assert_allclose(c.numpy(), 2.0 * sigmoid(1.0), rtol=1e-5)


def test_count_params_and_bad_arguments():
    cell = make_cell()
    assert sum(int(np.prod(v.shape)) for v in cell.trainable_weights) == count_params(N, D, M, NZ)
    cell = HyperLSTMCell(N, hyper_num_units=M, hyper_embedding_size=NZ, use_layer_norm=False)
    cell.build((None, D))
    assert sum(int(np.prod(v.shape)) for v in cell.trainable_weights) == count_params(N, D, M, NZ, use_layer_norm=False)
    with pytest.raises(ValueError, match="num_units"):
        HyperLSTMCell(0)
    with pytest.raises(ValueError, match="hyper_embedding_size"):
        HyperLSTMCell(4, hyper_embedding_size=2.5)
    with pytest.raises(ValueError, match="dropout_keep_prob"):
        HyperLSTMCell(4, dropout_keep_prob=0.0)


def test_dropout_only_when_training():
    cell = make_cell(use_recurrent_dropout=True, hyper_use_recurrent_dropout=True, dropout_keep_prob=0.5, seed=3)
    plain = make_cell()
    rnn, rnn_plain = keras.layers.RNN(cell), keras.layers.RNN(plain)
    x = np.random.RandomState(0).randn(B, 4, D).astype("float32")
    rnn(x), rnn_plain(x)
    for a, b in zip(cell.weights, plain.weights):
        b.assign(a)
    np.testing.assert_allclose(rnn(x).numpy(), rnn_plain(x).numpy(), atol=1e-6)  # inference: no dropout
    np.testing.assert_allclose(rnn(x, training=False).numpy(), rnn_plain(x).numpy(), atol=1e-6)
    a, b = rnn(x, training=True).numpy(), rnn(x, training=True).numpy()
    assert np.abs(a - rnn_plain(x).numpy()).max() > 1e-3 and np.abs(a - b).max() > 1e-3


def _model():
    inp = keras.Input((None, D))
    y = keras.layers.RNN(
        HyperLSTMCell(N, hyper_num_units=M, hyper_embedding_size=NZ, use_recurrent_dropout=True, seed=1),
        return_sequences=True,
    )(inp)
    return keras.Model(inp, keras.layers.Dense(2)(y))


def test_config_and_keras_save_load(tmp_path):
    cell = HyperLSTMCell(
        7,
        forget_bias=0.5,
        use_recurrent_dropout=True,
        dropout_keep_prob=0.8,
        use_layer_norm=False,
        hyper_num_units=9,
        hyper_embedding_size=2,
        hyper_use_recurrent_dropout=True,
        seed=4,
    )
    clone = HyperLSTMCell.from_config(cell.get_config())
    assert clone.get_config() == cell.get_config()
    model = _model()
    randomise(model.layers[1].cell)
    x = np.random.RandomState(0).randn(2, 5, D).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[1].cell, HyperLSTMCell)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def test_savedmodel_export(tmp_path):
    model = _model()
    x = np.random.RandomState(0).randn(3, 4, D).astype("float32")
    model(x)
    randomise(model.layers[1].cell)
    path = str(tmp_path / "sm")
    model.export(path, format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(path)
    np.testing.assert_allclose(reloaded.serve(x).numpy(), model(x).numpy(), atol=1e-5)
    x2 = np.random.RandomState(1).randn(5, 7, D).astype("float32")  # other batch size and length
    np.testing.assert_allclose(reloaded.serve(x2).numpy(), model(x2).numpy(), atol=1e-5)
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
