"""FusedAdam takes exactly the steps keras.optimizers.Adam takes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk


def _trajectory(opt, steps=6, seed=0):
    """Weights after each of `steps` updates of a fixed sequence of gradients."""
    rng = np.random.RandomState(seed)
    variables = [keras.Variable(rng.randn(7, 5).astype("float32")), keras.Variable(rng.randn(5).astype("float32"))]
    grads = [
        [rng.randn(*v.shape).astype("float32") * 10 ** rng.uniform(-3, 1) for v in variables] for _ in range(steps)
    ]
    opt.build(variables)
    step = tf.function(lambda g: opt.apply(g, variables))
    out = []
    for g in grads:
        step([tf.constant(x) for x in g])
        out.append([v.numpy().copy() for v in variables])
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=1e-2),
        dict(learning_rate=3e-3, beta_1=0.5, beta_2=0.99, epsilon=1e-4),
        dict(learning_rate=1e-2, weight_decay=0.1, global_clipnorm=1.0),
        dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.5)),
        dict(learning_rate=1e-2, amsgrad=True),  # falls back to the Keras implementation
    ],
)
def test_same_trajectory_as_keras_adam(kwargs):
    ours = _trajectory(hk.optimizers.FusedAdam(**kwargs))
    ref = _trajectory(keras.optimizers.Adam(**kwargs))
    start = _trajectory(keras.optimizers.SGD(0.0), steps=1)[0]
    assert not np.allclose(ref[-1][0], start[0])  # the weights did move
    for a, b in zip(ours, ref):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_keras_file(tmp_path):
    opt = hk.optimizers.FusedAdam(2e-3, beta_1=0.8)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(clone) is hk.optimizers.FusedAdam and clone.get_config() == opt.get_config()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is hk.optimizers.FusedAdam
    np.testing.assert_allclose(loaded.optimizer.learning_rate.numpy(), 2e-3, rtol=1e-6)
