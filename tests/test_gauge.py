"""Gauge transform S (eq. 11) and penalty G (eq. 8): invariance, exact constraints, NumPy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

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


def _regression_model(output_activation=None):
    inp = keras.Input((4,))
    h = keras.layers.Dense(6, activation="relu", name="hidden")(inp)
    h = keras.layers.Dense(5, name="linear")(h)
    h = keras.layers.LeakyReLU(0.1, name="lrelu")(h)
    out = keras.layers.Dense(2, activation=output_activation, name="out")(h)
    return keras.Model(inp, out)


@pytest.mark.parametrize("output_activation", [None, "sigmoid"])
def test_regression_gauge_is_scale_only_and_keeps_outputs_exactly(output_activation):
    """Issue 19: the logit-bias shift is a symmetry of logits fed into a softmax only (Deutsch §2.2); for
    regression the gauge keeps the scale conditions and leaves the output (and its bias) as it was."""
    model = _regression_model(output_activation)
    target = hk.TargetNetwork(model)
    params = _params(target, 3, seed=4)
    for name in ("out/bias",):
        params[name] = params[name] + 2.0  # far from summing to zero
    x = np.random.RandomState(5).rand(16, 4).astype("float32")
    fixed = gauge_transform(target, params, task="regression")
    # The plain Keras models with the same weights give the same outputs (not up to a constant).
    for i in range(3):
        want = target.to_keras_model(params, i).predict(x, verbose=0)
        got = target.to_keras_model(fixed, i).predict(x, verbose=0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(fixed["out/bias"].numpy(), params["out/bias"].numpy())
    for spec in target.layers[:-1]:  # the scale gauge still holds
        kern = fixed[spec.kernel.name].numpy().reshape(3, -1, spec.num_filters)
        np.testing.assert_allclose((kern**2).sum(1) + fixed[spec.bias.name].numpy() ** 2, spec.filter_size, rtol=1e-5)
    # Eq. 8 without the logit-bias term, from the raw arrays.
    bias_term = params["out/bias"].numpy().astype(np.float64).sum(1) ** 2
    np.testing.assert_allclose(
        gauge_penalty(target, params, task="regression").numpy(), _numpy_penalty(target, params) - bias_term, rtol=1e-4
    )
    assert np.all(gauge_penalty(target, fixed, task="regression").numpy() < 1e-3)
    # For classification the same target is only accepted with logits, and then the shift applies.
    if output_activation == "sigmoid":
        for fn in (gauge_transform, gauge_penalty):
            with pytest.raises(ValueError, match="'out' .*sigmoid.*not logits. Use gauge='none'"):
                fn(target, params)
    else:
        shifted = gauge_transform(target, params)
        np.testing.assert_allclose(shifted["out/bias"].numpy().sum(1), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="task must be one of"):
        gauge_transform(target, params, task="logits")


def test_regression_hypernetwork_samples_the_networks_it_trained():
    """Issue 19: with Entropy() on a regression task, sample() / predict_regression subtracted the output
    bias (predictions 2.18, 3.03, 3.88 where the trained networks gave 4.31, 5.16, 6.01)."""
    from hyperkeras import ensembles

    keras.utils.set_random_seed(0)
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(1,), hidden=(16,), num_classes=1))
    gen = hk.generators.DeutschGenerator.from_target(target)
    model = hk.models.Hypernetwork(
        target, gen, [hk.objectives.Entropy()], task="regression", num_networks=4, task_weight=100.0, seed=0
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = np.random.RandomState(0).uniform(-1, 1, (128, 1)).astype("float32")
    model.fit(x, x + 5, batch_size=64, epochs=3, verbose=0)
    xt = np.array([[-1.0], [0.0], [1.0]], "float32")
    trained = model.sample(4, seed=1, canonical=False)  # the networks the task loss saw
    sampled = model.sample(4, seed=1)
    assert np.all(np.abs(trained["logits/bias"].numpy()) > 1e-3)
    want = np.stack([target.to_keras_model(trained, i).predict(xt, verbose=0) for i in range(4)])
    got = np.stack([target.to_keras_model(sampled, i).predict(xt, verbose=0) for i in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    pred = ensembles.predict_regression(model, xt, n=4, seed=1, verbose=0)
    np.testing.assert_allclose(pred.mean, want.mean(0), rtol=1e-4, atol=1e-5)
    kern = sampled["dense1/kernel"].numpy()  # still gauge-fixed: each hidden filter has Σθ² = n = 2
    np.testing.assert_allclose(kern[:, 0] ** 2 + sampled["dense1/bias"].numpy() ** 2, 2.0, rtol=1e-5)


def test_classification_hypernetwork_refuses_an_output_that_is_not_logits():
    inp = keras.Input((4,))
    h = keras.layers.Dense(6, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(3, activation="sigmoid", name="out")(h)
    target = hk.TargetNetwork(keras.Model(inp, out))
    gen = hk.generators.DeutschGenerator.from_target(target)
    for gauge in ("transform", "penalty"):
        with pytest.raises(ValueError, match="last layer 'out' must output logits.*Use gauge='none'"):
            hk.models.Hypernetwork(target, gen, [hk.objectives.Entropy(gauge=gauge)], num_networks=4)
    hk.models.Hypernetwork(target, gen, [hk.objectives.Entropy(gauge="none")], num_networks=4)
    hk.models.Hypernetwork(target, gen, [hk.objectives.Entropy()], task="regression", num_networks=4)


def test_regularizer_setup_gets_the_task_when_it_takes_it():
    seen = {}

    class Old(hk.objectives.Regularizer):  # the 0.1 signature: still works, gets no task
        def setup(self, target, generator, num_networks):
            seen["old"] = num_networks
            self.built = True

    class New(hk.objectives.Regularizer):
        def setup(self, target, generator, num_networks, task="classification"):
            seen["new"] = task
            self.built = True

    class Kwargs(hk.objectives.Regularizer):
        def setup(self, target, generator, num_networks, **kwargs):
            seen["kwargs"] = kwargs
            self.built = True

    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(3,), hidden=(4,), num_classes=1))
    gen = hk.generators.DeutschGenerator.from_target(target)
    hk.models.Hypernetwork(target, gen, [Old(), New(), Kwargs()], task="regression", num_networks=3)
    assert seen == {"old": 3, "new": "regression", "kwargs": {"task": "regression"}}
