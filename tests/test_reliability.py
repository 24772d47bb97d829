"""Checkpoints that survive kill -9, NaN guards, corrupted checkpoints and flag errors."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import common
from hyperkeras import checkpoints, models

ARGS = ["--dataset=digits", "--target=mlp", "--batch_size=16", "--checkpoint_every=10", "--deterministic", "--seed=3"]


def _cmd(out, steps):
    return [sys.executable, "-m", "experiments.train_direct", f"--output_dir={out}", f"--steps={steps}", *ARGS]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _weights(path):
    return [w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in keras.models.load_model(path).weights]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, repo_root):
    steps = 120
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd(full, steps), cwd=repo_root, env=_env(), check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(
        _cmd(killed, steps), cwd=repo_root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt_dir = killed / "checkpoints" / "train"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt_dir / "ckpt-20.index").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt_dir / "ckpt-20.index").exists(), "the run never wrote its second checkpoint"
    assert not (killed / "model.keras").exists(), "the run finished before it could be killed"

    res = subprocess.run(_cmd(killed, steps), cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr and "resuming the run in" in res.stderr
    for a, b in zip(_weights(full / "model.keras"), _weights(killed / "model.keras")):
        np.testing.assert_array_equal(a, b)
    # Both reports state the same run: 120 steps trained, the same flags, no change of flags.
    full_run, killed_run = (json.loads((d / "metrics.json").read_text())["run"] for d in (full, killed))
    assert full_run["steps_trained"] == killed_run["steps_trained"] == {"train": steps}
    assert full_run["flags"] == killed_run["flags"] and "flag_changes" not in killed_run


def _ctx(tmp_path, steps=20, every=5):
    return common.Context(
        output_dir=str(tmp_path),
        strategy=tf.distribute.get_strategy(),
        seed=0,
        steps=steps,
        batch_size=4,
        checkpoint_every=every,
    )


def _model():
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return m


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    x = np.ones((4 * 40, 3), "float32")
    y = np.zeros((4 * 40, 1), "float32")
    x[4 * 12 + 1, 0] = np.nan  # the 13th batch (step 13) poisons the loss

    def make(start):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat().skip(start)

    model = _model()
    with pytest.raises(models.TrainingDivergedError, match=r"loss became nan at step 13.*ckpt-10"):
        common.train(model, make, _ctx(tmp_path), verbose=0)
    # The last good checkpoint is intact and restorable, and holds finite weights.
    fresh = _model()
    ckpt = checkpoints.model_checkpoint(fresh, step=tf.Variable(0, dtype=tf.int64))
    checkpoints.restore(ckpt, str(tmp_path / "checkpoints" / "train" / "ckpt-10"))
    assert int(ckpt.step.numpy()) == 10
    assert all(np.isfinite(w.numpy()).all() for w in fresh.weights)


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    def make(start):
        return (
            tf.data.Dataset.from_tensor_slices((np.ones((8, 3), "float32"), np.ones((8, 1), "float32")))
            .batch(4)
            .repeat()
        )

    common.train(_model(), make, _ctx(tmp_path, steps=10), verbose=0)
    data = [p for p in os.listdir(tmp_path / "checkpoints" / "train") if p.startswith("ckpt-10.data")][0]
    with open(tmp_path / "checkpoints" / "train" / data, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(RuntimeError, match="could not be restored"):
        common.train(_model(), make, _ctx(tmp_path, steps=20), verbose=0)


@pytest.mark.parametrize(
    "flag, message", [("--steps=-5", "steps"), ("--no_such_flag=1", "no_such_flag"), ("--strategy=gpu9", "strategy")]
)
def test_bad_flags_give_usage_errors(flag, message, tmp_path, repo_root):
    res = subprocess.run(
        [sys.executable, "-m", "experiments.train_direct", f"--output_dir={tmp_path}", flag],
        cwd=repo_root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert message in res.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_resume_restores_hypernetwork_generators_and_optimizers(tmp_path):
    """Layers kept in lists (per-layer generators) and both HyperGAN optimizers are checkpointed."""
    import hyperkeras as hk

    x, y = hk.data.load_arrays("digits", "train")
    x, y = x[:64], y[:64]

    def make(start):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat().skip(start)

    def build():
        target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(8,), seed=0))
        m = hk.models.HyperGAN(
            target,
            noise_dim=4,
            code_dim=3,
            mixer_units=(8,),
            generator_units=(8,),
            discriminator_units=(8,),
            num_networks=2,
        )
        m.compile(optimizer=keras.optimizers.Adam(1e-3), discriminator_optimizer=keras.optimizers.Adam(1e-3))
        return m

    trained = build()
    common.train(trained, make, _ctx(tmp_path, steps=6, every=3), verbose=0)
    resumed = build()
    assert common.train(resumed, make, _ctx(tmp_path, steps=6, every=3), verbose=0) is None  # nothing left to do
    pairs = list(zip(trained.variables, resumed.variables))
    for opt in ("optimizer", "discriminator_optimizer"):
        pairs += list(zip(getattr(trained, opt).variables, getattr(resumed, opt).variables))
    assert any("generator" in a.path for a, _ in pairs)
    for a, b in pairs:
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
