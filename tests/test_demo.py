"""The README's main job end to end at a tiny size: report, figures, metrics and a working SavedModel."""
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf


def test_demo_runs_end_to_end(tmp_path, repo_root):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "experiments.demo", f"--output_dir={out}", "--dataset=digits", "--steps=2",
           "--batch_size=32", "--networks_per_step=4", "--ensemble_size=4", "--histogram_networks=6", "--checkpoint_every=1"]
    res = subprocess.run(cmd, cwd=repo_root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for row in ("generated ensemble (n=4)", "direct network"):
        r = metrics["results"][row]
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["ood_auroc"] <= 1.0 and np.isfinite(r["nll"])
    assert metrics["results"]["generated single networks"]["networks"] == 6
    assert (out / "demo.png").stat().st_size > 10_000
    assert "generated ensemble" in (out / "report.md").read_text()
    served = tf.saved_model.load(str(out / "saved_model"))
    x = tf.random.uniform([3, 28, 28, 1])
    probs = served.predict(x=x, n=tf.constant(5), seed=tf.constant(1, tf.int64))["mean_probs"].numpy()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    w = served.sample_weights(seed=tf.constant(1, tf.int64), n=tf.constant(5))["weights"]
    assert w.shape == (5, 20018)
