"""The zoo architectures (resnet20, gru_text, transformer_text) run by TargetNetwork against the plain
Keras model holding each network's weights: outputs (both input layouts, training and inference),
gradients, `.keras` save/load."""
import numpy as np
import pytest
import tensorflow as tf
import keras

import hyperkeras as hk

K, B = 3, 4
ZOO = ["resnet20", "gru_text", "transformer_text"]
# Small instances (same code paths as the defaults) so the file stays fast on 2 cores.
KWARGS = {
    "resnet20": dict(input_shape=(28, 28, 1), width=8, seed=1),
    "gru_text": dict(seq_len=12, vocab_size=20, num_classes=20, embed_dim=8, conv_filters=8, gru_units=8, seed=1),
    "transformer_text": dict(seq_len=12, vocab_size=20, num_classes=20, embed_dim=8, key_dim=4, ff_dim=16, seed=1),
}


def _target(name):
    return hk.TargetNetwork(hk.targets.build_model(name, **KWARGS[name]))


def _params(target, seed=0):
    """K networks: the model's own initial weights, each perturbed differently (keeps activations at a
    sensible scale through 20 layers, unlike raw noise)."""
    rng = np.random.RandomState(seed)
    base = target.get_params()
    out = {}
    for s in target.param_specs:
        w = base[s.name].numpy()
        scale = 0.3 * float(np.std(w)) + 0.1
        out[s.name] = tf.constant((w + scale * rng.randn(K, *s.shape)).astype("float32"))
    return out


def _inputs(target, shape, seed=1):
    rng = np.random.RandomState(seed)
    if target.input_dtype.startswith("int"):
        vocab = target.model.get_layer(target.param_specs[0].layer).input_dim
        return tf.constant(rng.randint(0, vocab, size=(*shape, *target.input_shape)).astype("int32"))
    return tf.constant(rng.randn(*shape, *target.input_shape).astype("float32"))


def _close(a, b, tol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("name", ZOO)
def test_build_model_by_name_with_defaults(name):
    assert name in hk.targets.available_targets()
    model = hk.targets.build_model(name)
    assert isinstance(model, keras.Model) and all(layer.built for layer in model.layers)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    target = hk.TargetNetwork(model)
    assert target.output_shape == ((10,) if name == "resnet20" else (100,))
    assert target.plain_specs  # BN / embeddings / GRU / attention weights outside the filter layout


def test_resnet20_default_size_and_mnist_shape():
    target = hk.TargetNetwork(hk.targets.build_model("resnet20", seed=0))
    assert target.num_params == 272474  # ResNet-20 with 1×1 projection shortcuts
    convs = [s for s in target.layers if s.kind == "conv2d"]
    assert len(convs) == 21 and sum("proj" not in s.name for s in convs) == 19  # + the dense: 20 layers
    small = hk.targets.build_model("resnet20", input_shape=(28, 28, 1))
    assert tuple(small.output.shape) == (None, 10)


@pytest.mark.parametrize("layout", ["shared", "per_network"])
@pytest.mark.parametrize("name", ZOO)
def test_apply_matches_keras_copies(name, layout):
    target = _target(name)
    params = _params(target)
    x = _inputs(target, (B,) if layout == "shared" else (K, B))
    out = target.apply(params, x, training=False)
    assert tuple(out.shape) == (K, B, *target.output_shape)
    for i in range(K):
        copy = target.to_keras_model(params, i)
        _close(out[i], copy(x if layout == "shared" else x[i], training=False))


@pytest.mark.parametrize("layout", ["shared", "per_network"])
def test_resnet20_training_mode_uses_each_networks_batch_statistics(layout):
    target = _target("resnet20")
    params = _params(target)
    x = _inputs(target, (B,) if layout == "shared" else (K, B))
    out = target.apply(params, x, training=True)
    for i in range(K):
        copy = target.to_keras_model(params, i)
        _close(out[i], copy(x if layout == "shared" else x[i], training=True))
    # Batch statistics differ from the moving statistics: training mode really changes the output.
    assert np.abs(out.numpy() - target.apply(params, x, training=False).numpy()).max() > 1e-3


@pytest.mark.parametrize("name", ZOO)
def test_gradients_match_keras_copies(name):
    target = _target(name)
    params = _params(target)
    x = _inputs(target, (B,))
    training = name == "resnet20"
    w = tf.constant(np.random.RandomState(2).randn(K, B, *target.output_shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = tf.reduce_sum(target.apply(params, x, training=training) * w)
    grads = tape.gradient(loss, params)
    for i in range(K):
        copy = target.to_keras_model(params, i)
        with tf.GradientTape() as tape:
            loss_i = tf.reduce_sum(copy(x, training=training) * w[i])
        expected = tape.gradient(loss_i, copy.trainable_variables)
        for spec, g in zip(target.param_specs, expected):
            assert g is not None, spec.name
            _close(tf.convert_to_tensor(grads[spec.name])[i], tf.convert_to_tensor(g), tol=2e-4)


@pytest.mark.parametrize("name", ZOO)
def test_keras_save_load_keeps_param_names(name, tmp_path):
    target = _target(name)
    path = str(tmp_path / f"{name}.keras")
    target.model.save(path)
    loaded = hk.TargetNetwork(keras.models.load_model(path))
    assert [(s.name, s.shape) for s in loaded.param_specs] == [(s.name, s.shape) for s in target.param_specs]
    assert [s.name for s in loaded.plain_specs] == [s.name for s in target.plain_specs]
    params = _params(target)
    x = _inputs(target, (B,))
    _close(loaded.apply(params, x), target.apply(params, x))


def test_position_embedding_config_round_trip():
    layer = hk.targets.PositionEmbedding(6, initializer="zeros", name="pos")
    clone = hk.targets.PositionEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = np.random.RandomState(0).randn(2, 4, 3).astype("float32")  # shorter than sequence_length
    np.testing.assert_allclose(clone(x), x)
    with pytest.raises(ValueError, match="positions"):
        hk.targets.PositionEmbedding(3)(np.zeros((1, 4, 2), "float32"))
