"""experiments/compare_ensembles.py end to end at tiny sizes (its --quick run, with flags that override some
quick values): equal budgets, every method's rows, an OOD set read from a folder of IDX files, resuming
from stored results."""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from hyperkeras import data

FASHION = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array):
    array = np.ascontiguousarray(array, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture
def ood_folder(tmp_path):
    """A folder holding the first 40 test and 30 training images of Fashion-MNIST as IDX files."""
    if not os.path.isdir(FASHION):
        pytest.skip("Fashion-MNIST (Debian's dataset-fashion-mnist) is not installed")
    folder = tmp_path / "ood_idx"
    folder.mkdir()
    for _split, stem, n in (("test", "t10k", 40), ("train", "train", 30)):
        images = data.read_idx(os.path.join(FASHION, f"{stem}-images-idx3-ubyte.gz"))[:n]
        labels = data.read_idx(os.path.join(FASHION, f"{stem}-labels-idx1-ubyte.gz"))[:n]
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return str(folder)


def run(repo_root, *args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.compare_ensembles", *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out


BUDGET, BATCH, K = 1600, 32, 4
ALL_METHODS = "single,deep_ensemble,deep_ensemble_outlier,mc_dropout,svgd_weight,fs_entropy,svgd_outlier,svgd_cka"


def tiny_args(output, ood_folder, methods=ALL_METHODS, seeds="0,1", sizes="1,2,4"):
    return [
        "--quick",
        "--dataset=digits",
        "--classes=0-6",
        f"--methods={methods}",
        f"--budget_images={BUDGET}",
        f"--batch_size={BATCH}",
        f"--networks_per_step={K}",
        "--deep_ensemble_size=2",
        f"--seeds={seeds}",
        f"--ensemble_sizes={sizes}",
        "--ood_dataset=fashion_mnist",
        f"--ood_data_dir={ood_folder}",
        "--ood_subset=500",
        "--test_subset=120",
        "--generator_units=16",
        "--noise_dim=8",
        "--code_dim=4",
        "--probe_size=4",
        f"--output_dir={output}",
    ]


def test_compare_ensembles_tiny(repo_root, tmp_path, ood_folder, noise_lines):
    output = tmp_path / "run"
    budget, batch, k = BUDGET, BATCH, K
    args = tiny_args(output, ood_folder)
    first = run(repo_root, *args)
    assert noise_lines(first.stdout, first.stderr) == []  # no retracing, shuffle, remapper, checkpoint lines
    metrics = json.loads((output / "metrics.json").read_text())
    # the OOD set is the folder's 70 images (not the installed Fashion-MNIST), and the held-out digits
    assert metrics["data"]["ood"] == {
        "held-out classes": int(metrics["data"]["ood"]["held-out classes"]),
        "fashion_mnist": 70,
        "bernoulli_noise": 500,  # --quick's synthetic set (a family no probe uses)
    }
    assert metrics["data"]["validation"] == 100
    assert metrics["data"]["validation_ood"] == {"held-out classes": 100}  # training images of digits 7-9
    assert metrics["data"]["ood"]["held-out classes"] > 0
    rows = {(r["method"], r["size"]): r for r in metrics["table"]}
    assert set(rows) == {
        ("single", 1),
        ("deep_ensemble", 1),
        ("deep_ensemble", 2),
        ("deep_ensemble_outlier", 1),
        ("deep_ensemble_outlier", 2),
        ("mc_dropout", 1),
        ("mc_dropout", 2),
        ("mc_dropout", 4),
        ("svgd_weight", 1),
        ("svgd_weight", 2),
        ("svgd_weight", 4),
        ("fs_entropy", 1),
        ("fs_entropy", 2),
        ("fs_entropy", 4),
        ("svgd_outlier", 1),
        ("svgd_outlier", 2),
        ("svgd_outlier", 4),
        ("svgd_cka", 1),
        ("svgd_cka", 2),
        ("svgd_cka", 4),
    }
    for row in rows.values():
        assert row["seeds"] == 2
        assert 0.0 <= row["accuracy"] <= 1.0 and row["nll"] > 0 and 0.0 <= row["auroc_fashion_mnist"] <= 1.0
        sets = ("held-out classes", "fashion_mnist", "bernoulli_noise")
        assert row["auroc_mean"] == pytest.approx(np.mean([row[f"auroc_{n}"] for n in sets]))
        assert row["temperature"] > 0 and row["nll_ts"] > 0 and 0.0 <= row["ece_ts"] <= 1.0
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["val_nll"] > 0
        assert 0.0 <= row["val_auroc_held-out classes"] <= 1.0
        for name in ("rotate", "blur", "contrast"):
            assert 0.0 <= row[f"shift_{name}_accuracy"] <= 1.0 and row[f"shift_{name}_nll_ts"] > 0
        for name in sets:
            assert 0.0 <= row[f"auroc_{name}_maxprob"] <= 1.0 and 0.0 <= row[f"auroc_{name}_ts"] <= 1.0
        if row["size"] > 1:
            assert 0.0 <= row["disagreement"] <= 1.0 and row["pairwise_kl"] >= 0.0
            assert 0.0 <= row["auroc_held-out classes_mi"] <= 1.0
            assert 0.0 <= row["disagreement_probes"] <= 1.0 and row["mutual_information_bernoulli_noise"] >= 0.0
        else:
            assert "auroc_held-out classes_mi" not in row  # one network has no disagreement to score
    assert rows[("deep_ensemble", 2)]["accuracy_std"] >= 0.0
    # equal budgets: every method used at most the budget, and less than one more step of it
    per_step = {
        "single": batch,
        "deep_ensemble": 2 * batch,
        "deep_ensemble_outlier": 2 * (batch + 4),  # each member sees its own probes too
        "mc_dropout": batch,
        "svgd_weight": batch,
        "fs_entropy": batch + k * 4,
        "svgd_outlier": batch + k * 4,  # probe passes count as images through target networks
        "svgd_cka": batch + k * 4,
    }
    for name in os.listdir(output / "results"):
        res = json.loads((output / "results" / name).read_text())
        assert budget - per_step[res["method"]] < res["images"] <= budget, res
    for refs in metrics["verdict"].values():  # against both deep ensembles, raw and temperature-scaled
        assert set(refs) == {
            "deep_ensemble",
            "deep_ensemble_scaled",
            "deep_ensemble_outlier",
            "deep_ensemble_outlier_scaled",
        }
    assert set(metrics["verdict"]) == {
        "mc_dropout 2",
        "mc_dropout 4",
        "svgd_weight 2",
        "svgd_weight 4",
        "fs_entropy 2",
        "fs_entropy 4",
        "svgd_outlier 2",
        "svgd_outlier 4",
        "svgd_cka 2",
        "svgd_cka 4",
    }
    for figure in ("accuracy_vs_size.png", "entropy_cdfs.png", "reliability.png"):
        assert (output / figure).stat().st_size > 1000
    report = (output / "report.md").read_text()
    assert "| svgd_weight | 4 |" in report and "±" in report


def test_compare_ensembles_resumes_and_reevaluates(repo_root, tmp_path, ood_folder):
    """A restart with the same flags trains nothing; --reevaluate evaluates again from the final checkpoints
    (a deep ensemble's member checkpoints and a generator's) and gets the same figures."""
    output = tmp_path / "run"
    args = tiny_args(output, ood_folder, methods="deep_ensemble,svgd_outlier", seeds="0", sizes="1,2")
    run(repo_root, *args)
    metrics = json.loads((output / "metrics.json").read_text())
    assert {(r["method"], r["size"]) for r in metrics["table"]} == {
        ("deep_ensemble", 1),
        ("deep_ensemble", 2),
        ("svgd_outlier", 1),
        ("svgd_outlier", 2),
    }

    # a restart with the same flags trains nothing: every (method, seed) is read back
    before = {n: (output / "results" / n).stat().st_mtime_ns for n in os.listdir(output / "results")}
    again = run(repo_root, *args)
    assert "training (" not in again.stderr
    assert before == {n: (output / "results" / n).stat().st_mtime_ns for n in os.listdir(output / "results")}
    assert json.loads((output / "metrics.json").read_text())["table"] == metrics["table"]

    # --reevaluate evaluates again from the final checkpoints: no step is trained, the figures are the same
    checkpoints = sorted(str(p) for p in (output / "checkpoints").rglob("*") if p.is_file())
    third = run(repo_root, *args, "--reevaluate")
    assert " steps in " not in third.stderr  # common.train logs "<name>: N steps in S s" after training
    assert checkpoints == sorted(str(p) for p in (output / "checkpoints").rglob("*") if p.is_file())
    again_table = json.loads((output / "metrics.json").read_text())["table"]
    for old_row, new_row in zip(metrics["table"], again_table):
        assert new_row.keys() == old_row.keys()
        for key, value in old_row.items():
            assert new_row[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key


def test_compare_ensembles_bad_flags(repo_root, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    for bad, message in (
        (["--methods=single,bagging"], "bagging"),
        (["--budget_images=10", "--methods=single"], "less than one step"),
        (["--steps=5"], "budget_images"),
        (["--methods=svgd_outlier", "--outlier_mode=own", "--probe_size=6"], "must be a multiple of networks_per_step"),
    ):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.compare_ensembles",
                "--dataset=digits",
                f"--output_dir={tmp_path / bad[0][2:8]}",
                *bad,
            ],
            cwd=repo_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]


def test_summarise_never_averages_a_metric_over_some_seeds_only():
    """Results evaluated under different protocols (a seed lacks a metric): the metric is left out of the
    table, not averaged over the seeds that have it; the others are means over every seed."""
    from experiments import compare_ensembles

    def result(seed, **row):
        rows = [{"method": "svgd_weight", "seed": seed, "size": 5, **row}]
        return {"method": "svgd_weight", "seed": seed, "train_seconds": 1.0, "rows": rows}

    table = compare_ensembles.summarise(
        [result(0, accuracy=0.9, nll_ts=0.2), result(1, accuracy=0.8), result(2, accuracy=0.7, nll_ts=0.4)]
    )
    (row,) = table
    assert row["seeds"] == 3 and row["accuracy"] == pytest.approx(0.8) and row["accuracy_std"] == pytest.approx(0.1)
    assert "nll_ts" not in row


def test_validation_metrics_against_numpy_and_scikit_learn():
    """``val_*`` keys of `ensemble_row`: accuracy and NLL of the mean prediction on the validation split, and the
    entropy AUROC of the validation split against the validation OOD set, computed here with NumPy and
    scikit-learn from the same made-up member probabilities (float32, as the networks give them)."""
    from sklearn.metrics import roc_auc_score

    from experiments import compare_ensembles

    rng = np.random.RandomState(0)

    def probs(n, sharp):
        logits = rng.randn(3, n, 4) * sharp
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    p = {"val": probs(60, 3.0), "test": probs(50, 3.0), "val_ood/held-out classes": probs(40, 0.7)}
    y_val = rng.randint(0, 4, 60)
    row = compare_ensembles.ensemble_row(p, {"y_val": y_val, "y_test": rng.randint(0, 4, 50)})
    mean = p["val"].astype(np.float64).mean(axis=0)
    assert row["val_accuracy"] == pytest.approx(np.mean(mean.argmax(axis=1) == y_val))
    assert row["val_nll"] == pytest.approx(-np.mean(np.log(mean[np.arange(60), y_val])), rel=1e-5)
    assert 0.0 <= row["val_ece"] <= 1.0

    def entropy(q):
        m = q.astype(np.float64).mean(axis=0)
        return -(m * np.log(m)).sum(axis=1)

    scores = np.concatenate([entropy(p["val"]), entropy(p["val_ood/held-out classes"])])
    expected = roc_auc_score(np.r_[np.zeros(60), np.ones(40)], scores)
    assert row["val_auroc_held-out classes"] == pytest.approx(expected, abs=1e-6)
    assert not any(k.startswith("auroc_") for k in row)


def test_validation_ood_images_come_from_the_training_split():
    """The near-OOD validation set is made of *training* images of the held-out classes: each is one of them,
    and none is a test image (so choosing settings on it never looks at a test set)."""
    from experiments import compare_ensembles

    flags = compare_ensembles.FLAGS
    flags(["compare_ensembles", "--dataset=digits", "--classes=0-6", "--val_size=80", "--ood_dataset="])
    try:
        loaded = compare_ensembles.load_data(seed=0)
    finally:
        flags.unparse_flags()
    val_ood = loaded["val_ood"]["held-out classes"]
    assert len(val_ood) == 80 and len(loaded["y_val"]) == 80
    x_train, y_train = data.load_arrays("digits", "train", resize=28, seed=0)
    x_test, _ = data.load_arrays("digits", "test", resize=28, seed=0)
    held_out = {img.tobytes() for img in x_train[y_train >= 7]}
    tests = {img.tobytes() for img in x_test}
    assert all(img.tobytes() in held_out for img in val_ood)
    assert not any(img.tobytes() in tests for img in val_ood)
