"""The demo binary's own checks. Its end-to-end run (report, figures, metrics and a working SavedModel)
is `demo --quick` in test_quick_runs."""

import os
import subprocess
import sys


def test_demo_refuses_steps_and_a_budget_below_one_member_step(tmp_path, repo_root):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for flag, message in (
        ("--steps=2", "do not pass --steps"),
        ("--budget_images=100", "less than one step of each of the 5 ensemble members"),
    ):
        cmd = [
            sys.executable,
            "-m",
            "experiments.demo",
            f"--output_dir={tmp_path / flag[2:7]}",
            "--dataset=digits",
            flag,
        ]
        res = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode != 0
        assert message in res.stderr, res.stderr[-2000:]
