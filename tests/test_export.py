"""SavedModel exports, reloaded in a fresh process that cannot import hyperkeras."""

import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras import export


class ToySampler(keras.Model):
    """A minimal weight generator: stateless Gaussian noise -> Dense -> flat target weights."""

    def __init__(self, target, **kwargs):
        super().__init__(**kwargs)
        self.target = target
        self.proj = keras.layers.Dense(
            target.num_params, kernel_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=1)
        )
        self.proj.build((None, 6))

    def sample(self, n, seed):
        seed = tf.cast(seed, tf.int64)
        z = tf.random.stateless_normal(
            tf.stack([tf.cast(n, tf.int32), 6]), seed=tf.stack([seed, tf.constant(0, tf.int64)])
        )
        return self.target.unflatten(self.proj(z))


@pytest.fixture(scope="module")
def target():
    return hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(12,), seed=0))


def _run_fresh(code: str, tmp_path):
    """Runs `code` in a new Python process where `import hyperkeras` fails."""
    script = "import sys\nsys.modules['hyperkeras'] = None  # any use of hyperkeras would fail\n" + textwrap.dedent(
        code
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_generator_export_matches_in_process(target, tmp_path):
    sampler = ToySampler(target)
    path = export.export_generator(sampler, str(tmp_path / "gen"))
    x = np.random.RandomState(0).rand(5, 8, 8, 1).astype("float32")
    np.save(tmp_path / "x.npy", x)
    _run_fresh(
        f"""
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load({path!r})
        x = np.load("x.npy")
        out = m.predict(x=tf.constant(x), n=tf.constant(7), seed=tf.constant(3, tf.int64))
        w = m.sample_weights(seed=tf.constant(3, tf.int64), n=tf.constant(7))["weights"]
        np.savez("out.npz", mean=out["mean_probs"].numpy(), ent=out["predictive_entropy"].numpy(),
                 probs=out["probs"].numpy(), w=w.numpy())
        assert sys.modules.get("hyperkeras") is None
        """,
        tmp_path,
    )
    got = np.load(tmp_path / "out.npz")
    params = sampler.sample(7, 3)
    np.testing.assert_allclose(got["w"], target.flatten(params).numpy(), atol=1e-6)
    # Independent reference: each network as a plain Keras model, softmax-averaged in NumPy.
    probs = np.stack([tf.nn.softmax(target.to_keras_model(params, i)(x)).numpy() for i in range(7)])
    mean = probs.mean(0)
    np.testing.assert_allclose(got["probs"], probs, atol=1e-5)
    np.testing.assert_allclose(got["mean"], mean, atol=1e-5)
    np.testing.assert_allclose(got["ent"], -(mean * np.log(mean)).sum(-1), atol=1e-5)


def test_generator_export_rejects_bad_inputs(target, tmp_path):
    path = export.export_generator(ToySampler(target), str(tmp_path / "gen"))
    m = tf.saved_model.load(path)
    with pytest.raises((TypeError, ValueError)):
        m.predict(x=tf.zeros([2, 9, 9, 1]), n=tf.constant(2), seed=tf.constant(0, tf.int64))
    with pytest.raises((TypeError, ValueError)):
        m.predict(x=tf.zeros([2, 8, 8, 1], tf.int32), n=tf.constant(2), seed=tf.constant(0, tf.int64))
    with pytest.raises(TypeError, match="sample"):
        export.export_generator(keras.layers.Dense(2), str(tmp_path / "bad"))


def test_frozen_ensemble_and_single_network(target, tmp_path):
    params = ToySampler(target).sample(4, 11)
    x = np.random.RandomState(1).rand(3, 8, 8, 1).astype("float32")
    ens_path = export.export_ensemble(target, params, str(tmp_path / "ens"))
    net = target.to_keras_model(params, 2)
    net_path = export.export_model(net, str(tmp_path / "net"))
    np.save(tmp_path / "x.npy", x)
    _run_fresh(
        f"""
        import numpy as np, tensorflow as tf
        x = tf.constant(np.load("x.npy"))
        ens, single = tf.saved_model.load({ens_path!r}), tf.saved_model.load({net_path!r})
        e, n = ens.serve(x), single.serve(x)
        np.savez("out.npz", mean=e["mean_probs"].numpy(), net=n.numpy())
        """,
        tmp_path,
    )
    got = np.load(tmp_path / "out.npz")
    probs = np.stack([tf.nn.softmax(target.to_keras_model(params, i)(x)).numpy() for i in range(4)])
    np.testing.assert_allclose(got["mean"], probs.mean(0), atol=1e-5)
    np.testing.assert_allclose(got["net"], net(x).numpy(), atol=1e-5)
    # keras.layers.TFSMLayer serves the same SavedModel inside a Keras model.
    layer = keras.layers.TFSMLayer(ens_path, call_endpoint="serve")
    np.testing.assert_allclose(layer(x)["mean_probs"].numpy(), probs.mean(0), atol=1e-5)


def test_export_is_atomic_on_failure(target, tmp_path):
    path = export.export_ensemble(target, ToySampler(target).sample(2, 0), str(tmp_path / "ens"))
    before = sorted(os.listdir(path))

    def boom(out):
        os.makedirs(out)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        export._write_atomically(path, boom)
    assert sorted(os.listdir(path)) == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_export_binary_turns_keras_file_and_checkpoint_into_saved_model(tmp_path, repo_root):
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(12,), seed=0))
    gen = hk.generators.DeutschGenerator.from_target(
        target, noise_dim=6, code_size=3, extractor_units=(8,), generator_units=(8,)
    )
    model = hk.models.EntropyHypernetwork(target, gen, num_samples=4)
    model.save(str(tmp_path / "h.keras"))
    # Later training moves the weights; the checkpoint holds the newer ones.
    for v in model.trainable_variables:
        v.assign(v + 0.01)
    model.compile(optimizer="adam")
    hk.checkpoints.model_checkpoint(model).save(str(tmp_path / "ckpt" / "ckpt"))
    x = np.random.RandomState(2).rand(3, 8, 8, 1).astype("float32")
    expected = tf.nn.softmax(target.apply(model.sample(5, 4), x)).numpy().mean(0)
    cmd = [
        sys.executable,
        "-m",
        "experiments.export",
        f"--model={tmp_path / 'h.keras'}",
        f"--checkpoint={tmp_path / 'ckpt'}",
        f"--export_dir={tmp_path / 'served'}",
    ]
    res = subprocess.run(
        cmd, cwd=repo_root, capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    )
    assert res.returncode == 0, res.stderr[-3000:]
    served = tf.saved_model.load(str(tmp_path / "served"))
    got = served.predict(x=tf.constant(x), n=tf.constant(5), seed=tf.constant(4, tf.int64))["mean_probs"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.export",
            f"--model={tmp_path / 'missing.keras'}",
            f"--export_dir={tmp_path / 'x'}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "no such file" in bad.stderr


def test_export_binary_refuses_another_models_checkpoint_quietly(tmp_path, repo_root, noise_lines):
    """A checkpoint of another model once printed about 20 "Value in checkpoint could not be found" lines (a
    restore left half done) before the error; now its variables are checked first and only the error shows."""

    def hypernetwork(hidden):
        target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(hidden,), seed=0))
        gen = hk.generators.DeutschGenerator.from_target(
            target, noise_dim=6, code_size=3, extractor_units=(8,), generator_units=(8,)
        )
        return hk.models.EntropyHypernetwork(target, gen, num_samples=4)

    hypernetwork(12).save(str(tmp_path / "h.keras"))
    other = hypernetwork(20)  # another target width: the generator's output layers have other shapes
    other.compile(optimizer="adam")
    hk.checkpoints.model_checkpoint(other, step=tf.Variable(7, dtype=tf.int64)).save(str(tmp_path / "ckpt" / "ckpt"))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.export",
            f"--model={tmp_path / 'h.keras'}",
            f"--checkpoint={tmp_path / 'ckpt'}",
            f"--export_dir={tmp_path / 'served'}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert res.returncode != 0
    assert "could not be restored" in res.stderr and "does not fit" in res.stderr, res.stderr[-3000:]
    assert re.search(r"extractor_out/kernel\) has shape \(8, \d+\) there, \(8, 39\) here", res.stderr), res.stderr[
        -3000:
    ]
    assert noise_lines(res.stdout, res.stderr) == []
    assert not (tmp_path / "served").exists()


# ---------------------------------------------------------------------- regression exports
def _regression_model():
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(3,), hidden=(8,), num_classes=2, seed=0))
    gen = hk.generators.HyperGANGenerator.from_target(
        target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,)
    )
    return hk.models.Hypernetwork(target, gen, num_networks=3, task="regression", seed=0)


def test_regression_exports_return_the_ensemble_mean(tmp_path):
    """A regression export once returned mean_probs (a softmax of the outputs: 1.0 for one output)."""
    model = _regression_model()
    target = model.target
    x = np.random.RandomState(3).randn(6, 3).astype("float32")
    gen = tf.saved_model.load(export.export_generator(model, str(tmp_path / "gen")))
    out = gen.predict(x=tf.constant(x), n=tf.constant(5), seed=tf.constant(2, tf.int64))
    assert set(out) == {"mean", "std", "outputs"}
    params = model.sample(5, 2)
    keras_out = np.stack([target.to_keras_model(params, i).predict(x, verbose=0) for i in range(5)])
    np.testing.assert_allclose(out["outputs"].numpy(), keras_out, atol=1e-5)
    np.testing.assert_allclose(out["mean"].numpy(), keras_out.mean(0), atol=1e-5)
    np.testing.assert_allclose(out["std"].numpy(), keras_out.std(0), atol=1e-5)
    ens = tf.saved_model.load(export.export_ensemble(target, params, str(tmp_path / "ens"), task="regression"))
    served = ens.serve(tf.constant(x))
    np.testing.assert_allclose(served["mean"].numpy(), keras_out.mean(0), atol=1e-5)
    np.testing.assert_allclose(served["std"].numpy(), keras_out.std(0), atol=1e-5)
    # The model's task decides; a contradicting one is refused, and so is ensembles.predict.
    with pytest.raises(ValueError, match="task='regression'"):
        export.export_generator(model, str(tmp_path / "bad"), task="classification")
    with pytest.raises(ValueError, match="predict_regression"):
        hk.ensembles.predict(model, x, n=2, seed=0, verbose=0)


def test_one_output_classifier_export_is_refused(tmp_path):
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(3,), hidden=(4,), num_classes=1, seed=0))
    with pytest.raises(ValueError, match="one output unit.*task='regression'"):
        export.export_generator(ToySampler(target), str(tmp_path / "gen"))
    params = ToySampler(target).sample(2, 0)
    with pytest.raises(ValueError, match="one output unit.*task='regression'"):
        export.export_ensemble(target, params, str(tmp_path / "ens"))
    with pytest.raises(ValueError, match="one output unit"):
        hk.ensembles.predict(params, np.zeros((2, 3), "float32"), target=target, verbose=0)
    path = export.export_ensemble(target, params, str(tmp_path / "reg"), task="regression")
    x = np.random.RandomState(0).randn(4, 3).astype("float32")
    want = np.mean([target.to_keras_model(params, i)(x).numpy() for i in range(2)], axis=0)
    served = tf.saved_model.load(path)
    np.testing.assert_allclose(served.serve(tf.constant(x))["mean"].numpy(), want, atol=1e-5)


def test_integer_input_generator_export(tmp_path):
    """Token-id targets: the x spec once was float32, so export_generator failed."""
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(20, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    target = hk.TargetNetwork(model)
    sampler = ToySampler(target)
    served = tf.saved_model.load(export.export_generator(sampler, str(tmp_path / "gen")))
    ens = tf.saved_model.load(export.export_ensemble(target, sampler.sample(3, 1), str(tmp_path / "ens")))
    x = np.random.RandomState(0).randint(0, 20, size=(5, 6)).astype("int32")
    got = served.predict(x=tf.constant(x), n=tf.constant(4), seed=tf.constant(1, tf.int64))["mean_probs"].numpy()
    params = sampler.sample(4, 1)
    probs = np.stack([tf.nn.softmax(target.to_keras_model(params, i).predict(x, verbose=0)).numpy() for i in range(4)])
    np.testing.assert_allclose(got, probs.mean(0), atol=1e-5)
    params = sampler.sample(3, 1)
    probs = np.stack([tf.nn.softmax(target.to_keras_model(params, i)(x)).numpy() for i in range(3)])
    np.testing.assert_allclose(ens.serve(tf.constant(x))["mean_probs"].numpy(), probs.mean(0), atol=1e-5)


@pytest.mark.parametrize("n", [0, -1])
def test_generator_endpoints_refuse_fewer_than_one_network(target, tmp_path, n):
    """n = 0 once said 'Tried to stack elements of an empty list', n = -1 'Dimension -64 must be >= 0'."""
    served = tf.saved_model.load(export.export_generator(ToySampler(target), str(tmp_path / "gen")))
    seed = tf.constant(0, tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="n, the number of networks to sample, must be >= 1"):
        served.predict(x=tf.zeros([2, 8, 8, 1]), n=tf.constant(n), seed=seed)
    with pytest.raises(tf.errors.InvalidArgumentError, match="n, the number of networks to sample, must be >= 1"):
        served.sample_weights(seed=seed, n=tf.constant(n))
    assert served.predict(x=tf.zeros([2, 8, 8, 1]), n=tf.constant(1), seed=seed)["probs"].shape[0] == 1


# ---------------------------------------------------------------------- BatchNorm targets
def _bn_target():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    return hk.TargetNetwork(model)


def _keras_mean_probs(target, params, x, state=None):
    k = params[target.param_specs[0].name].shape[0]
    return np.mean(
        [tf.nn.softmax(target.to_keras_model(params, i, state=state).predict(x, verbose=0)).numpy() for i in range(k)],
        axis=0,
    )


def test_batchnorm_ensemble_export_serves_each_networks_own_statistics(tmp_path):
    """export_ensemble once served every network on the wrapped model's untrained statistics."""
    target = _bn_target()
    sampler = ToySampler(target)
    params = {k: v * 6.0 for k, v in sampler.sample(4, 2).items()}
    rng = np.random.RandomState(4)
    data, x = rng.rand(64, 6, 6, 1).astype("float32") * 4, rng.rand(5, 6, 6, 1).astype("float32") * 4
    with pytest.raises(
        ValueError,
        match=r"export_ensemble: .*BatchNormalization layers \(bn\).*calibrate_state.*"
        r"state='shared'",
    ):
        export.export_ensemble(target, params, str(tmp_path / "ens"))
    state = target.calibrate_state(params, data)
    want = _keras_mean_probs(target, params, x, state)
    for name, kwargs in (("state", {"state": state}), ("data", {"calibration_data": data})):
        served = tf.saved_model.load(export.export_ensemble(target, params, str(tmp_path / name), **kwargs))
        np.testing.assert_allclose(served.serve(tf.constant(x))["mean_probs"].numpy(), want, atol=1e-5)
    shared = tf.saved_model.load(export.export_ensemble(target, params, str(tmp_path / "shared"), state="shared"))
    got_shared = shared.serve(tf.constant(x))["mean_probs"].numpy()
    np.testing.assert_allclose(got_shared, _keras_mean_probs(target, params, x), atol=1e-5)
    assert np.abs(got_shared - want).max() > 0.05


def test_batchnorm_generator_export_needs_shared_statistics(tmp_path):
    target = _bn_target()
    sampler = ToySampler(target)
    with pytest.raises(
        ValueError,
        match=r"cannot be calibrated.*export_ensemble\(target, params, path, "
        r"state=target.calibrate_state.*state='shared'",
    ):
        export.export_generator(sampler, str(tmp_path / "gen"))
    with pytest.raises(ValueError, match="None or 'shared'"):
        export.export_generator(sampler, str(tmp_path / "gen"), state={})
    served = tf.saved_model.load(export.export_generator(sampler, str(tmp_path / "gen"), state="shared"))
    x = np.random.RandomState(5).rand(3, 6, 6, 1).astype("float32")
    got = served.predict(x=tf.constant(x), n=tf.constant(3), seed=tf.constant(7, tf.int64))["mean_probs"].numpy()
    np.testing.assert_allclose(got, _keras_mean_probs(target, sampler.sample(3, 7), x), atol=1e-5)
