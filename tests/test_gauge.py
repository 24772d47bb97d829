"""Gauge transform S (eq. 11) and penalty G (eq. 8): invariance, exact constraints, NumPy reference."""
import numpy as np
import pytest
import tensorflow as tf
import keras

import hyperkeras as hk
from hyperkeras.objectives import gauge_penalty, gauge_transform


def _params(target, k, seed=0):
    rng = np.random.RandomState(seed)
    out = {}
    for s in target.param_specs:
        v = rng.randn(k, *s.shape) * 0.1
        # Spread the filter scales over two orders of magnitude so the transform does real work.
        v = v * np.exp(rng.uniform(-2.3, 2.3, size=(k,) + (1,) * (len(s.shape) - 1) + (s.shape[-1],)))
        out[s.name] = tf.constant(v.astype("float32"))
    return out


def _leaky_model():
    inp = keras.Input((10, 10, 2))
    h = keras.layers.Conv2D(5, 3, padding="valid", name="c1")(inp)
    h = keras.layers.LeakyReLU(0.2, name="lrelu")(h)
    h = keras.layers.AveragePooling2D(2, name="avg")(h)
    h = keras.layers.Conv2D(4, 2, padding="same", activation="relu", name="c2")(h)
    h = keras.layers.MaxPooling2D(2, name="max")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(6, activation="relu", name="d1")(h)
    out = keras.layers.Dense(3, name="out")(h)
    return keras.Model(inp, out)


def _log_softmax(t):
    return tf.nn.log_softmax(tf.cast(t, tf.float64), axis=-1).numpy()


@pytest.mark.parametrize("which", ["deutsch_mnist", "leaky"])
def test_transform_keeps_outputs_and_satisfies_constraints(which):
    model = hk.targets.build_model("deutsch_mnist") if which == "deutsch_mnist" else _leaky_model()
    target = hk.TargetNetwork(model)
    params = _params(target, 3)
    x = np.random.RandomState(1).rand(16, *target.input_shape).astype("float32")
    fixed = gauge_transform(target, params)
    before, after = target.apply(params, x), target.apply(fixed, x)
    # Logits change by a per-example constant only (logit-bias gauge); probabilities are unchanged.
    b, a = _log_softmax(before), _log_softmax(after)
    assert np.max(np.abs(a - b)) <= 1e-4 * max(1.0, np.max(np.abs(b)))
    centred_b = before.numpy() - before.numpy().mean(-1, keepdims=True)
    centred_a = after.numpy() - after.numpy().mean(-1, keepdims=True)
    np.testing.assert_allclose(centred_a, centred_b, rtol=1e-4, atol=1e-4 * np.abs(centred_b).max())
    # Constraints, checked on the raw arrays: each filter of layers 1..m-1 has sum of squares = n.
    for spec in target.layers[:-1]:
        kern = fixed[spec.kernel.name].numpy().reshape(3, -1, spec.num_filters)
        ss = (kern**2).sum(1) + fixed[spec.bias.name].numpy() ** 2
        np.testing.assert_allclose(ss, spec.filter_size, rtol=1e-5)
    last = target.layers[-1]
    np.testing.assert_allclose(fixed[last.bias.name].numpy().sum(1), 0.0, atol=1e-5)
    # ... so the penalty vanishes, and S is idempotent.
    assert np.all(gauge_penalty(target, fixed).numpy() < 1e-3)
    again = gauge_transform(target, fixed)
    for name in fixed:
        np.testing.assert_allclose(again[name].numpy(), fixed[name].numpy(), rtol=1e-5, atol=1e-6)


def _numpy_penalty(target, params):
    """Eq. 8 from the raw kernels: filters along the last kernel axis."""
    k = next(iter(params.values())).shape[0]
    total = np.zeros(k)
    for spec in target.layers[:-1]:
        kern = params[spec.kernel.name].numpy().astype(np.float64)
        bias = params[spec.bias.name].numpy().astype(np.float64)
        for i in range(spec.num_filters):
            ss = (kern[..., i] ** 2).reshape(k, -1).sum(1) + bias[:, i] ** 2
            total += (ss - spec.filter_size) ** 2
    total += params[target.layers[-1].bias.name].numpy().astype(np.float64).sum(1) ** 2
    return total


def test_penalty_matches_equation_8():
    target = hk.TargetNetwork(_leaky_model())
    params = _params(target, 4, seed=2)
    np.testing.assert_allclose(gauge_penalty(target, params).numpy(), _numpy_penalty(target, params), rtol=1e-4)
    assert gauge_penalty(target, params).shape == (4,)


def test_transform_is_differentiable():
    target = hk.TargetNetwork(_leaky_model())
    params = {k: tf.Variable(v) for k, v in _params(target, 2).items()}
    with tf.GradientTape() as tape:
        flat = target.flatten(gauge_transform(target, params))
        loss = tf.reduce_sum(tf.sin(flat))
    grads = tape.gradient(loss, list(params.values()))
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def test_non_homogeneous_op_raises():
    inp = keras.Input((6,))
    h = keras.layers.Dense(4, activation="tanh", name="hidden")(inp)
    out = keras.layers.Dense(3, name="out")(h)
    target = hk.TargetNetwork(keras.Model(inp, out))
    params = _params(target, 2)
    for fn in (gauge_transform, gauge_penalty):
        with pytest.raises(ValueError, match="positively homogeneous.*'hidden'.*'out'"):
            fn(target, params)


def test_non_logit_output_raises():
    inp = keras.Input((6,))
    h = keras.layers.Dense(4, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(3, activation="sigmoid", name="out")(h)
    target = hk.TargetNetwork(keras.Model(inp, out))
    with pytest.raises(ValueError, match="logits"):
        gauge_transform(target, _params(target, 2))
