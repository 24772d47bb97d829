"""Conditional SavedModel endpoints (issue 21, item 6), reloaded in a fresh process that cannot import
hyperkeras, against the Python model and the plain Keras networks."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras import export
from hyperkeras.generators import ChunkedGenerator, MLPGenerator
from hyperkeras.models import Hypernetwork


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


def _target():
    return hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(12,), seed=0))


def _trained(gen, target):
    model = Hypernetwork(target, gen, num_networks=2, seed=0)
    model.compile(optimizer="adam")
    rng = np.random.RandomState(0)
    x, y = rng.rand(16, 8, 8, 1).astype("float32"), rng.randint(0, 10, 16)
    cond = (
        {"x": x, "condition": np.full(16, 1)}
        if gen.num_conditions
        else {"x": x, "condition": np.ones((16, 4), "float32")}
    )
    model.fit(cond, y, batch_size=8, verbose=0)
    return model


def test_task_id_endpoints_match_python(tmp_path):
    target = _target()
    model = _trained(MLPGenerator.from_target(target, noise_dim=3, num_conditions=3, hidden_units=(8,)), target)
    path = export.export_generator(model, str(tmp_path / "gen"))
    x = np.random.RandomState(1).rand(5, 8, 8, 1).astype("float32")
    np.save(tmp_path / "x.npy", x)
    _run_fresh(
        f"""
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load({path!r})
        x = np.load("x.npy")
        out = {{}}
        for task in (0, 2):
            o = m.predict(x=tf.constant(x), condition=tf.constant(task), n=tf.constant(4), seed=tf.constant(7, tf.int64))
            w = m.sample_weights(condition=tf.constant(task), seed=tf.constant(7, tf.int64), n=tf.constant(4))
            out[f"probs{{task}}"], out[f"w{{task}}"] = o["probs"].numpy(), w["weights"].numpy()
            out[f"mean{{task}}"] = o["mean_probs"].numpy()
        try:
            m.sample_weights(condition=tf.constant(3), seed=tf.constant(0, tf.int64), n=tf.constant(1))
            raise SystemExit("task id 3 was accepted")
        except tf.errors.InvalidArgumentError as e:
            assert "task ids must be in [0, 3)" in str(e), str(e)
        np.savez("out.npz", **out)
        assert sys.modules.get("hyperkeras") is None
        """,
        tmp_path,
    )
    got = np.load(tmp_path / "out.npz")
    assert np.abs(got["w0"] - got["w2"]).max() > 1e-3  # the condition reaches the served weights
    for task in (0, 2):
        np.testing.assert_allclose(got[f"w{task}"], model.sample_flat(4, 7, condition=task).numpy(), atol=1e-6)
        params = model.sample(4, 7, condition=task)
        probs = np.stack([tf.nn.softmax(target.to_keras_model(params, i)(x)).numpy() for i in range(4)])
        np.testing.assert_allclose(got[f"probs{task}"], probs, atol=1e-5)
        np.testing.assert_allclose(got[f"mean{task}"], probs.mean(0), atol=1e-5)


def test_condition_vector_endpoints_match_python(tmp_path):
    target = _target()
    gen = ChunkedGenerator.from_target(target, chunk_size=64, noise_dim=0, condition_dim=4, hidden_units=(8,))
    model = _trained(gen, target)
    served = tf.saved_model.load(export.export_generator(model, str(tmp_path / "vec")))
    c = np.random.RandomState(2).randn(4).astype("float32")
    w = served.sample_weights(condition=tf.constant(c), seed=tf.constant(0, tf.int64), n=tf.constant(2))["weights"]
    np.testing.assert_allclose(w.numpy(), model.sample_flat(2, 0, condition=c).numpy(), atol=1e-6)
    with pytest.raises((ValueError, TypeError)):
        served.sample_weights(
            condition=tf.constant(np.zeros(5, "float32")), seed=tf.constant(0, tf.int64), n=tf.constant(1)
        )


def test_keras_export_of_a_conditional_hypernetwork_serves_the_task(tmp_path):
    target = _target()
    model = _trained(MLPGenerator.from_target(target, noise_dim=0, num_conditions=3, hidden_units=(8,)), target)
    path = str(tmp_path / "serve")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    x = np.random.RandomState(3).rand(4, 8, 8, 1).astype("float32")
    got = served.serve({"x": tf.constant(x), "condition": tf.constant(2)})
    np.testing.assert_allclose(got.numpy(), model.predict({"x": x, "condition": np.full(4, 2)}, verbose=0), atol=1e-6)
