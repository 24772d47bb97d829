"""The zoo architectures (resnet20, gru_text, transformer_text) run by TargetNetwork against the plain
Keras model holding each network's weights: outputs (both input layouts, training and inference),
gradients, `.keras` save/load."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk

K, B = 3, 4
ZOO = ["resnet20", "gru_text", "transformer_text"]
# Small instances (same code paths as the defaults) so the file stays fast on 2 cores.
KWARGS = {
    "resnet20": dict(input_shape=(12, 12, 1), width=8, seed=1),  # 28×28×1: see the next test
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
    mnist = hk.TargetNetwork(hk.targets.build_model("resnet20", input_shape=(28, 28, 1), seed=0))
    x = np.random.RandomState(0).rand(2, 28, 28, 1).astype("float32")
    out = mnist.apply(mnist.get_params(), x)  # the model's own weights, K = 1
    assert tuple(out.shape) == (1, 2, 10)
    _close(out[0], mnist.model(x, training=False))


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


# ---------------------------------------------------------------------- experiments/zoo_run.py
def _run(repo_root, *args, check=True):
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, *args], cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def test_next_token_windows(repo_root):
    code = (
        "import numpy as np\n"
        "from experiments.zoo_run import next_token_windows as w\n"
        "x, y = w(np.arange(10), 4)\n"
        "assert x.shape == (6, 4) and x.dtype == np.int32 and y.dtype == np.int32\n"
        "assert x[0].tolist() == [0, 1, 2, 3] and y.tolist() == [4, 5, 6, 7, 8, 9]\n"
        "x, y = w(np.arange(10), 4, stride=3)\n"
        "assert x[:, 0].tolist() == [0, 3] and y.tolist() == [4, 7]\n"
        "for bad in [(np.arange(4), 4), (np.zeros(9, 'float32'), 2), (np.arange(9), 0)]:\n"
        "    try:\n"
        "        w(*bad)\n"
        "    except ValueError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(bad)\n"
    )
    _run(repo_root, "-c", code)


def test_zoo_run_on_text_writes_results_and_refuses_other_flags(repo_root, tmp_path):
    import json

    out = tmp_path / "run"
    args = [
        "-m",
        "experiments.zoo_run",
        "--target=gru_text",
        "--methods=direct,hypergan",
        "--steps=3",
        "--batch_size=8",
        "--max_chars=3000",
        "--seq_len=8",
        "--eval_subset=0",
        '--model_kwargs={"gru_units": 4}',
        "--networks_per_step=2",
        "--units=8",
        "--noise_dim=4",
        "--code_dim=4",
        "--pretrain_steps=1",
        "--eval_networks=3",
        f"--output_dir={out}",
    ]
    _run(repo_root, *args)
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 3 and m["test_examples"] == 150 - 8  # 5% of 3,000 characters, minus one context
    assert 0.0 <= m["results"]["direct"]["accuracy"] <= 1.0
    generated = m["results"]["hypergan"]
    assert len(generated["member_accuracies"]) == 3 and 0.0 <= generated["ensemble_accuracy"] <= 1.0
    assert "3 steps" in (out / "report.md").read_text() and (out / "accuracy.png").exists()
    proc = _run(repo_root, *args[:-2], "--steps=5", f"--output_dir={out}", check=False)
    assert proc.returncode != 0 and "holds a run with other flags" in proc.stderr
