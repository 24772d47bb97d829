"""CKAEnergy and TargetNetwork.features against independent references: per-network Keras models, NumPy CKA
with an explicit centring matrix, NumPy hyperspherical energy; the conformance kit. float32 throughout."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hyperkeras import TargetNetwork, probes, targets
from hyperkeras.objectives import CKAEnergy, StepInputs, cka_matrix, hyperspherical_energy
from hyperkeras.testing import run_regularizer_test


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(6, activation="tanh", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def random_params(target, k, seed=0):
    rng = np.random.default_rng(seed)
    return {s.name: tf.constant(0.4 * rng.normal(size=(k, *s.shape)), tf.float32) for s in target.param_specs}


def numpy_cka(features):
    f = np.asarray(features, np.float64)
    p = f.shape[1]
    h = np.eye(p) - np.ones((p, p)) / p
    grams = [h @ fk @ fk.T @ h for fk in f]
    out = np.empty((len(f), len(f)))
    for i, a in enumerate(grams):
        for j, b in enumerate(grams):
            out[i, j] = np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))
    return out


def test_features_match_per_network_keras_models():
    target = TargetNetwork(small_cnn())
    assert target.feature_layers() == ("conv", "hidden")
    params = random_params(target, 3)
    x = np.random.default_rng(1).uniform(size=(5, 8, 8, 1)).astype("float32")
    conv, hidden = target.features(params, x)
    assert conv.shape == (3, 5, 6 * 6 * 4) and hidden.shape == (3, 5, 6)
    for k in range(3):
        net = target.to_keras_model(params, k)
        view = keras.Model(net.inputs, [net.get_layer("conv").output, net.get_layer("hidden").output])
        want_conv, want_hidden = view(x)
        np.testing.assert_allclose(conv[k], np.reshape(want_conv, (5, -1)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(hidden[k], want_hidden, rtol=1e-5, atol=1e-6)
    # One layer alone runs a shorter model, whose Dense layer may take another (equally exact) float32
    # kernel than the two-layer request: agreement to float32 round-off, as with Keras above.
    (only,) = target.features(params, x, layers=["hidden"])
    np.testing.assert_allclose(only, hidden, rtol=1e-5, atol=1e-6)


def test_features_refuse_unknown_layers():
    target = TargetNetwork(small_cnn())
    with pytest.raises(ValueError, match="nope"):
        target.features(random_params(target, 2), np.zeros((2, 8, 8, 1), "float32"), layers=["nope"])


def test_cka_matrix_against_numpy_and_invariances():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(4, 10, 7)).astype("float32")
    got = cka_matrix(tf.constant(f)).numpy()
    np.testing.assert_allclose(got, numpy_cka(f), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.diag(got), 1.0, rtol=1e-5)
    # invariant to an orthogonal rotation, an isotropic scaling and a shift of one network's features
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    g = np.stack([f[0], 3.0 * f[0] @ q.astype("float32") + 5.0])
    np.testing.assert_allclose(cka_matrix(tf.constant(g)).numpy(), 1.0, rtol=1e-4)


def test_hyperspherical_energy_against_numpy():
    rng = np.random.default_rng(3)
    cka = numpy_cka(rng.normal(size=(5, 9, 4)))
    for s in (1.0, 2.0):
        want = np.mean([(2 - 2 * cka[i, j] + 1e-6) ** (-s / 2) for i in range(5) for j in range(5) if i != j])
        got = float(hyperspherical_energy(tf.constant(cka, tf.float32), s))
        np.testing.assert_allclose(got, want, rtol=1e-4)


def test_cka_energy_term_against_numpy_pipeline():
    """compute(): probes from the batch or make_probes, features per layer, energies averaged over layers."""
    target = TargetNetwork(small_cnn())
    params = random_params(target, 4, seed=5)
    x = tf.constant(np.random.default_rng(4).uniform(size=(12, 8, 8, 1)), tf.float32)
    seed = tf.constant([3, 9], tf.int32)
    for probe, energy in (("batch", "hyperspherical"), ("smooth_noise", "cka")):
        reg = CKAEnergy(weight=0.5, probe=probe, probe_size=6, energy=energy)
        reg.run_setup(target, None, 4)
        terms = reg.compute(StepInputs(target=target, params=params, aux={}, seed=seed, inputs=x))
        px = x[:6] if probe == "batch" else probes.make_probes("smooth_noise", x, 6, seed)
        energies, sims = [], []
        for name in ("conv", "hidden"):
            feats = np.stack(
                [
                    np.reshape(keras.Model(n.inputs, n.get_layer(name).output)(px), (6, -1))
                    for n in (target.to_keras_model(params, k) for k in range(4))
                ]
            )
            c = numpy_cka(feats)
            off = c[~np.eye(4, dtype=bool)]
            sims.append(off.mean())
            energies.append(np.mean((2 - 2 * off + 1e-6) ** -1.0) if energy == "hyperspherical" else off.mean())
        np.testing.assert_allclose(float(terms.loss), 0.5 * np.mean(energies), rtol=2e-4)
        np.testing.assert_allclose(float(terms.metrics["feature_cka"]), np.mean(sims), rtol=2e-4)


def test_cka_energy_gradient_pushes_kernels_apart():
    """A small step along the term's gradient lowers the term (its gradient flows to the hidden layers' params
    through the reference path)."""
    target = TargetNetwork(small_cnn())
    params = {k: tf.Variable(v) for k, v in random_params(target, 3, seed=8).items()}
    x = tf.constant(np.random.default_rng(5).uniform(size=(8, 8, 8, 1)), tf.float32)
    reg = CKAEnergy(weight=1.0, probe="batch", probe_size=8)
    reg.run_setup(target, None, 3)
    with tf.GradientTape() as tape:
        terms = reg.compute(StepInputs(target=target, params=params, aux={}, inputs=x))
    grads = tape.gradient(terms.loss, list(params.values()))
    before = float(terms.loss)
    assert grads[-1] is None and grads[-2] is None  # the output layer computes no hidden feature
    for v, g in zip(params.values(), grads):
        if g is not None:
            v.assign_sub(1e-3 * g)
    after = float(reg.compute(StepInputs(target=target, params=params, aux={}, inputs=x)).loss)
    assert after < before


def test_cka_energy_conformance_and_refusals():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:256, :, :, None] / 16.0).astype("float32")
    y = digits.target[:256].astype("int32")
    target = TargetNetwork(targets.build_model("mlp", input_shape=x.shape[1:], hidden=(16, 8), seed=0))
    model = run_regularizer_test(CKAEnergy(weight=0.1, probe="smooth_noise", probe_size=8), x, y, target=target)
    assert any(key.endswith("feature_cka") for key in model.history.history)
    with pytest.raises(ValueError, match="probe_size"):
        CKAEnergy(probe_size=1)
    with pytest.raises(ValueError, match="energy"):
        CKAEnergy(energy="rbf")
    with pytest.raises(ValueError, match="num_networks >= 2"):
        CKAEnergy().run_setup(target, None, 1)
