"""The demo binary's own checks. Its end-to-end run (report, figures, metrics and a working SavedModel)
is `demo --quick` in test_quick_runs."""
import os
import subprocess
import sys


def test_demo_refuses_a_batch_that_networks_per_step_does_not_divide(tmp_path, repo_root):
    cmd = [sys.executable, "-m", "experiments.demo", f"--output_dir={tmp_path / 'demo'}", "--dataset=digits",
           "--steps=2", "--batch_size=30", "--networks_per_step=4"]
    res = subprocess.run(cmd, cwd=repo_root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    assert "--batch_size (30) must be a multiple of --networks_per_step (4)" in res.stderr
