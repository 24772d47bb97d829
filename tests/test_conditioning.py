"""Conditional generators (issue 21, item 1): task ids / condition vectors through the generator contract and
`Hypernetwork`'s fit / evaluate / predict / sample / .keras, checked against NumPy and the plain Keras model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras.generators import ChunkedGenerator, DeutschGenerator, HyperGANGenerator, MLPGenerator
from hyperkeras.models import Hypernetwork
from hyperkeras.testing import run_generator_test


def _target():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="d1"),
            keras.layers.Dense(3, name="out"),
        ],
        name="tiny",
    )
    return hk.TargetNetwork(model)


def _data(n=24, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 6).astype("float32"), rng.randint(0, 3, n).astype("int32")


def _np_mlp(gen, inputs):
    """θ of an MLPGenerator computed in NumPy from its weights."""
    h = inputs
    for layer in gen.hidden:
        w, b = (np.asarray(v) for v in layer.weights)
        h = np.maximum(h @ w + b, 0.0)
    w, b = (np.asarray(v) for v in gen.out.weights)
    return np.asarray(gen.offset) + gen._scale_vector * (h @ w + b)


def test_conditional_generator_equals_numpy_and_condition_changes_the_weights():
    target = _target()
    gen = MLPGenerator.from_target(target, noise_dim=3, num_conditions=4, condition_dim=5, hidden_units=(7,))
    noise = gen.sample_noise(2, seed=1).numpy()
    table = np.asarray(gen.condition_embedding.embeddings)
    for task in range(4):
        got = target.flatten(gen.generate(target, noise, condition=task)).numpy()
        want = _np_mlp(gen, np.concatenate([np.repeat(table[task][None], 2, 0), noise], 1))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    a = target.flatten(gen.generate(target, noise, condition=0)).numpy()
    b = target.flatten(gen.generate(target, noise, condition=1)).numpy()
    assert np.abs(a - b).max() > 1e-2  # another task, other weights
    # Per-network ids equal the rows of per-task calls.
    mixed = target.flatten(gen.generate(target, noise, condition=np.array([0, 1]))).numpy()
    np.testing.assert_allclose(mixed, np.stack([a[0], b[1]]), rtol=1e-6, atol=1e-7)


def test_predict_equals_the_plain_keras_networks_of_the_task():
    target = _target()
    gen = MLPGenerator.from_target(target, noise_dim=2, num_conditions=3, hidden_units=(8,))
    model = Hypernetwork(target, gen, num_networks=3, seed=5)
    x, _ = _data()
    for task in (0, 2):
        got = model.predict({"x": x, "condition": np.full(len(x), task)}, batch_size=8, verbose=0)
        params = model.sample(3, 5, canonical=False, condition=task)
        probs = np.stack([tf.nn.softmax(target.to_keras_model(params, i)(x)).numpy() for i in range(3)])
        np.testing.assert_allclose(got, probs.mean(0), atol=1e-5)
    # A pair (x, condition) is the same as the dict.
    pair = model((tf.constant(x), tf.constant(2)))
    np.testing.assert_allclose(pair, got, atol=1e-6)


def test_deterministic_conditional_generator_ignores_the_seed():
    target = _target()
    gen = ChunkedGenerator.from_target(target, chunk_size=16, noise_dim=0, num_conditions=3, hidden_units=(8,))
    model = Hypernetwork(target, gen, num_networks=1, seed=0)
    assert tuple(model.sample_noise(4, 0).shape) == (4, 0)
    a, b = model.sample_flat(2, 0, condition=1).numpy(), model.sample_flat(2, 9, condition=1).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], a[1])  # one network per task
    assert np.abs(a - model.sample_flat(1, 0, condition=2).numpy()).max() > 1e-3
    # The same code with noise: an ensemble per task.
    gen = ChunkedGenerator.from_target(target, chunk_size=16, noise_dim=4, num_conditions=3, hidden_units=(8,))
    flat = Hypernetwork(target, gen, num_networks=2, seed=0).sample_flat(2, 0, condition=1).numpy()
    assert np.abs(flat[0] - flat[1]).max() > 1e-3


def test_fit_trains_only_the_batch_tasks_embedding_and_evaluate_takes_the_condition():
    target = _target()
    gen = MLPGenerator.from_target(target, noise_dim=0, num_conditions=3, hidden_units=(8,))
    model = Hypernetwork(target, gen, num_networks=1, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = np.asarray(gen.condition_embedding.embeddings).copy()
    x, y = _data()
    model.fit({"x": x, "condition": np.full(len(x), 1)}, y, batch_size=8, epochs=1, verbose=0)
    after = np.asarray(gen.condition_embedding.embeddings)
    np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
    assert np.abs(after[1] - before[1]).max() > 0
    # evaluate's loss is the cross-entropy of the task's network, computed here with the plain Keras model.
    loss = model.evaluate({"x": x, "condition": np.full(len(x), 1)}, y, batch_size=len(x), verbose=0, return_dict=True)
    net = target.to_keras_model(model.sample(1, 0, canonical=False, condition=1), 0)
    want = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, net(x))
    np.testing.assert_allclose(loss["task_loss"], float(want), rtol=1e-5)


def test_dataset_batches_with_one_task_id_each():
    target = _target()
    gen = HyperGANGenerator.from_target(
        target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,), num_conditions=2
    )
    model = Hypernetwork(target, gen, num_networks=2, seed=0)
    model.compile(optimizer="adam")
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    ds = ds.enumerate().map(lambda i, b: ({"x": b[0], "condition": tf.cast(i % 2, tf.int32)}, b[1]))
    hist = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def test_condition_vectors_broadcast_and_keras_round_trip(tmp_path):
    target = _target()
    gen = ChunkedGenerator.from_target(target, chunk_size=10, noise_dim=2, condition_dim=4, hidden_units=(8,))
    model = Hypernetwork(target, gen, num_networks=2, seed=3)
    model.compile(optimizer="adam")
    x, y = _data()
    c = np.random.RandomState(1).randn(4).astype("float32")
    model.fit({"x": x, "condition": np.tile(c, (len(x), 1))}, y, batch_size=8, epochs=1, verbose=0)
    one = model.sample_flat(2, 0, condition=c).numpy()
    rows = model.sample_flat(2, 0, condition=np.stack([c, c])).numpy()
    np.testing.assert_array_equal(one, rows)
    assert np.abs(one - model.sample_flat(2, 0, condition=-c).numpy()).max() > 1e-3
    path = str(tmp_path / "vec.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.generator.get_config() == model.generator.get_config()
    np.testing.assert_array_equal(loaded.sample_flat(2, 0, condition=c).numpy(), one)
    inputs = {"x": x, "condition": np.tile(c, (len(x), 1))}
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-7)


@pytest.mark.parametrize("which", ["mlp", "hypergan"])
def test_keras_round_trip_of_task_id_models(tmp_path, which):
    target = _target()
    if which == "mlp":
        gen = MLPGenerator.from_target(target, noise_dim=0, num_conditions=3, hidden_units=(8,), residual=True)
    else:
        gen = HyperGANGenerator.from_target(
            target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,), num_conditions=3
        )
    model = Hypernetwork(target, gen, num_networks=2, seed=1)
    model.compile(optimizer="adam")
    x, y = _data()
    model.fit({"x": x, "condition": np.full(len(x), 2)}, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / f"{which}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config()["generator"]["config"] == model.get_config()["generator"]["config"]
    assert loaded.generator.num_conditions == 3
    for task in range(3):
        np.testing.assert_array_equal(
            loaded.sample_flat(2, 4, condition=task).numpy(), model.sample_flat(2, 4, condition=task).numpy()
        )


def test_unconditioned_configs_have_no_condition_keys():
    target = _target()
    gen = HyperGANGenerator.from_target(target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,))
    config = gen.get_config()
    assert not {"num_conditions", "condition_dim"} & set(config)
    assert not gen.conditional and not Hypernetwork(target, gen, num_networks=2).conditional
    # The same weights as before conditioning existed: no embedding, the mixer fed the noise alone.
    assert tuple(gen.mixer.hidden[0].kernel.shape) == (4, 8)


def test_clear_errors():
    target = _target()
    x, y = _data(8)
    plain = Hypernetwork(
        target, HyperGANGenerator.from_target(target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,))
    )
    with pytest.raises(ValueError, match="unconditioned"):
        plain.predict({"x": x, "condition": np.zeros(8, "int32")}, verbose=0)
    with pytest.raises(ValueError, match="unconditioned"):
        plain.sample(2, 0, condition=0)
    gen = MLPGenerator.from_target(target, noise_dim=2, num_conditions=3, hidden_units=(8,))
    model = Hypernetwork(target, gen, num_networks=2)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="conditional"):
        model.predict(x, verbose=0)
    with pytest.raises(ValueError, match="needs a condition"):
        model.sample(2, 0)
    with pytest.raises(ValueError, match=r"task id 3 is out of range \[0, 3\)"):
        model.sample(2, 0, condition=3)
    with pytest.raises(ValueError, match="out of range"):
        model.sample(2, 0, condition=-1)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"task ids must be in \[0, 3\)"):
        model.fit({"x": x, "condition": np.full(8, 7)}, y, batch_size=8, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="one condition"):
        model.fit({"x": x, "condition": np.arange(8) % 3}, y, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="integer task ids"):
        model.sample(2, 0, condition=np.zeros(3, "float32"))
    with pytest.raises(ValueError, match="2 conditions for 3 networks"):
        model.sample(3, 0, condition=np.array([0, 1]))
    with pytest.raises(ValueError, match="keys"):
        model.predict({"x": x, "task": np.zeros(8)}, verbose=0)
    vec = Hypernetwork(target, MLPGenerator.from_target(target, noise_dim=2, condition_dim=4, hidden_units=(8,)))
    with pytest.raises(ValueError, match=r"shape \[4\] or \[K, 4\]"):
        vec.sample(2, 0, condition=np.zeros(5, "float32"))
    with pytest.raises(ValueError, match="float condition vectors"):
        vec.sample(2, 0, condition=1)
    with pytest.raises(ValueError, match="noise_dim > 0\\) or a condition"):
        MLPGenerator.from_target(target, noise_dim=0)


def test_conditioning_refusals():
    target = _target()
    with pytest.raises(ValueError, match="DeutschGenerator cannot be conditioned"):
        DeutschGenerator.from_target(target, num_conditions=3)
    deutsch = DeutschGenerator.from_target(target)
    assert not deutsch.conditional
    with pytest.raises(ValueError, match="unconditioned"):
        Hypernetwork(target, deutsch, num_networks=2).sample(2, 0, condition=0)
    bn = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(4, name="d"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    bn_target = hk.TargetNetwork(bn)
    gen = MLPGenerator.from_target(bn_target, noise_dim=2, num_conditions=2, hidden_units=(8,))
    with pytest.raises(ValueError, match="BatchNorm"):
        Hypernetwork(bn_target, gen, num_networks=2)
    Hypernetwork(bn_target, gen, num_networks=2, target_training=False)  # the wrapped model's statistics: fine


def test_unconditioned_mlp_generator_conforms_on_a_recurrent_target():
    inp = keras.Input((5,), dtype="int32")
    h = keras.layers.GRU(6, name="gru")(keras.layers.Embedding(20, 4, name="emb")(inp))
    target = hk.TargetNetwork(keras.Model(inp, keras.layers.Dense(3, name="out")(h)))
    rng = np.random.RandomState(0)
    x, y = rng.randint(0, 20, (16, 5)).astype("int32"), rng.randint(0, 3, 16)
    gen = MLPGenerator.from_target(target, noise_dim=4, hidden_units=(16,))
    run_generator_test(gen, target, x, y, num_networks=16)  # the kit compares the mean of K networks with θ₀
