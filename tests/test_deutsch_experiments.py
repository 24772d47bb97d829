"""The Deutsch toy experiment end to end at a tiny size (seconds); deutsch_mnist: test_quick_runs."""

import json
import subprocess
import sys


def _run(repo_root, args):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_deutsch_toy_end_to_end(repo_root, tmp_path):
    out = tmp_path / "toy"
    _run(repo_root, ["experiments.deutsch_toy", f"--output_dir={out}", "--steps=3", "--path_points=40"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 3 and m["num_peaks"] == 5
    assert (out / "toy.png").stat().st_size > 0 and (out / "report.md").exists()


# deutsch_mnist end to end: test_quick_runs (deutsch_mnist --quick checks its figures, ensembles, FGSM and baselines).
