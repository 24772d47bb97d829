"""The four HyperGAN experiment binaries end to end at tiny sizes (digits, a few steps, small N).

One classification run trains the generator and the baselines; the OOD and adversarial runs reuse its
saved models through --load_from (the OOD 'classes' setting trains its own tiny models)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

TINY = [
    "--noise_dim=8",
    "--code_dim=4",
    "--mixer_units=16",
    "--generator_units=16",
    "--discriminator_units=16",
    "--networks_per_step=2",
    "--pretrain_steps=2",
    "--deep_ensemble_size=2",
    "--baseline_steps=2",
    "--mc_samples=3",
    "--checkpoint_every=2",
    "--eval_batch_size=64",
]
DIGITS = ["--dataset=digits", "--target=mlp"]


def _run(repo_root, module, out, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", f"experiments.{module}", f"--output_dir={out}", *args]
    res = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert os.path.getsize(os.path.join(out, "report.md")) > 0
    return metrics


def _png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("classify"))
    metrics = _run(
        REPO_ROOT,
        "hypergan_classify",
        out,
        *DIGITS,
        *TINY,
        "--steps=4",
        "--train_subset=300",
        "--test_subset=60",
        "--ensemble_sizes=1,2,4",
    )
    return out, metrics


def test_classify_reports_table2_rows_and_diversity(classify_run):
    out, metrics = classify_run
    methods = [r["method"] for r in metrics["table"]]
    for m in (
        "HyperGAN 1 network",
        "HyperGAN 2 networks",
        "HyperGAN 4 networks",
        "single net",
        "deep ensemble 2",
        "MC dropout",
    ):
        assert m in methods
    for r in metrics["table"]:
        assert 0.0 <= r["accuracy"] <= 1.0
    by = {r["method"]: r for r in metrics["table"]}
    assert by["HyperGAN 1 network"]["trials"] == 4 and by["HyperGAN 2 networks"]["trials"] == 2
    assert set(metrics["diversity"]) == {"hypergan", "direct"}
    assert set(metrics["diversity"]["hypergan"]) == {"dense1", "dense2", "logits"}
    for name in ("accuracy_vs_ensemble.png", "member_accuracy.png", "weight_norms.png"):
        assert _png(os.path.join(out, name))
    assert os.path.exists(os.path.join(out, "generator.keras"))
    assert os.path.exists(os.path.join(out, "baselines", "direct_1.keras"))
    assert os.path.isdir(os.path.join(out, "checkpoints", "generator"))


def test_ood_both_settings(classify_run, repo_root, tmp_path):
    src, _ = classify_run
    out = str(tmp_path / "ood")
    metrics = _run(
        repo_root,
        "ood",
        out,
        *DIGITS,
        *TINY,
        "--steps=2",
        "--load_from=" + src,
        "--ood_dataset=uniform_noise",
        "--ood_subset=40",
        "--test_subset=40",
        "--ensemble_sizes=2,3",
    )
    rows = metrics["table"]
    assert {r["setting"] for r in rows} == {"classes", "dataset"}
    assert {"HyperGAN 2", "HyperGAN 3", "single net", "deep ensemble 2", "MC dropout"} <= {r["method"] for r in rows}
    for r in rows:
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["fpr_at_95_tpr"] <= 1.0
    # the 'classes' setting trained on classes 0-4 only: its models see 5 classes
    assert os.path.exists(os.path.join(out, "in_classes", "generator.keras"))
    assert _png(os.path.join(out, "entropy_cdf_classes.png")) and _png(os.path.join(out, "entropy_cdf_dataset.png"))


def test_adversarial_with_deutsch_protocol(classify_run, repo_root, tmp_path):
    src, _ = classify_run
    out = str(tmp_path / "adv")
    metrics = _run(
        repo_root,
        "adversarial",
        out,
        *DIGITS,
        *TINY,
        "--load_from=" + src,
        "--num_examples=60",
        "--epsilons=0.1",
        "--pgd_steps=2",
        "--attack_sizes=2",
        "--test_sizes=2,3",
        "--deutsch_points=3",
        "--deutsch_ensemble=3",
        "--mc_attack_samples=2",
    )
    assert {(r["attack"], r["test_networks"]) for r in metrics["transfer"]} == {
        ("fgsm", 2),
        ("fgsm", 3),
        ("pgd", 2),
        ("pgd", 3),
    }
    methods = {r["method"] for r in metrics["direct"]}
    assert {"HyperGAN 2 (fresh)", "single net", "deep ensemble 2", "MC dropout"} <= methods
    for r in metrics["direct"]:
        assert 0.0 <= r["detect_at_fpr5"] <= 1.0
    rows = metrics["deutsch_protocol"]
    assert [r["eps"] for r in rows] == pytest.approx([0.0, 0.12, 0.24])
    # ε = 0 leaves the correctly classified inputs unchanged: the single network cannot be fooled
    assert rows[0]["single_success"] == 0.0 and rows[0]["single_error"] == 0.0
    for name in ("transfer.png", "detection.png", "deutsch_fgsm.png"):
        assert _png(os.path.join(out, name))


# hypergan_regression end to end: test_quick_runs (hypergan_regression --quick checks its table rows).
