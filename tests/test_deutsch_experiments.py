"""Deutsch experiments end to end at tiny sizes."""
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


def test_deutsch_mnist_end_to_end(repo_root, tmp_path):
    out = tmp_path / "mnist"
    _run(repo_root, [
        "experiments.deutsch_mnist", f"--output_dir={out}", "--dataset=digits", "--steps=2", "--networks_per_step=4",
        "--batch_size=8", "--lams=1e3", "--eval_networks=6", "--num_ensembles=2", "--ensemble_size=3",
        "--num_paths=1", "--path_points=2", "--fgsm_examples=100", "--fgsm_ensemble_size=3", "--fgsm_eps_points=2",
        "--baseline_seeds=1", "--baseline_steps=2", "--eval_subset=100",
    ])
    m = json.loads((out / "metrics.json").read_text())
    h = m["hypernetworks"]["lam1000"]
    assert 0.0 <= h["accuracy"]["min"] <= h["accuracy"]["max"] <= 1.0 and h["eval_networks"] == 6
    assert m["ensembles"]["num_ensembles"] == 2 and len(m["fgsm"]["curve"]) == 2
    assert len(m["direct_baseline"]["accuracy"]) == 1
    for fig in ("accuracy_histogram", "paths", "pca_network", "pca_conv1", "filters", "fgsm"):
        assert (out / f"{fig}.png").stat().st_size > 0
    assert (out / "checkpoints" / "lam1000").is_dir()
