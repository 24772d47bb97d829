"""Every experiment binary's ``--quick`` run (issue 14, item 3): exit code 0 and the expected outputs, and
(issue 24, item 6) no line of the kinds in ``conftest.NOISE`` (tf.function retracing, Keras's ignored
``shuffle=True``, grappler's "remapper failed", "Value in checkpoint could not be found").

Each binary runs as a subprocess with ``--quick`` and a temporary ``--output_dir``; ``--quick`` picks small
data, few steps, networks and evaluations (``common.quick_defaults`` in each binary). These runs replace
the tests that only smoke-ran a binary at tiny flags; tests that check specific behaviour stay elsewhere.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# binary -> (extra flags, files the run must write besides metrics.json and report.md)
RUNS = {
    "adversarial": ([], ["transfer.png", "detection.png", "deutsch_fgsm.png", "generator.keras"]),
    "demo": ([], ["demo.png", "hypernetwork.keras", "saved_model/saved_model.pb"]),
    "deutsch_mnist": ([], ["accuracy_histogram.png", "paths.png", "filters.png", "fgsm.png"]),
    "deutsch_toy": ([], ["toy.png"]),
    "export": ([], ["generator.keras", "saved_model/saved_model.pb"]),
    "hypergan_classify": (
        [],
        [
            "accuracy_vs_ensemble.png",
            "member_accuracy.png",
            "weight_norms.png",
            "generator.keras",
            "baselines/mc_dropout.keras",
        ],
    ),
    "hypergan_regression": ([], ["regression.png", "generator.keras"]),
    "hyperlstm_charlm": ([], ["valid_bpc.png", "weight_changes.png", "sample.txt", "hyper.keras", "lstm.keras"]),
    "hyperlstm_handwriting": ([], ["handwriting_sample.png", "model.keras"]),
    "ood": ([], ["entropy_cdf_classes.png", "entropy_cdf_dataset.png", "generator.keras"]),
    "static_mnist": ([], ["kernels.png", "hyper.keras", "ordinary.keras"]),
    "static_wrn": ([], ["model.keras"]),
    # an explicit flag wins over the quick value (--steps=300)
    "train_direct": (["--steps=120"], ["model.keras"]),
    "zoo_run": ([], ["accuracy.png", "direct.keras", "hypergan.keras"]),
}


def _binaries():
    found = sorted(
        p.stem
        for p in (REPO_ROOT / "experiments").glob("*.py")
        if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M)
    )
    # their --quick runs have test files of their own: tests/test_compare_ensembles.py, test_continual_experiment.py
    return [b for b in found if b not in ("compare_ensembles", "continual")]


def test_every_binary_has_a_quick_run():
    assert set(_binaries()) <= set(RUNS), sorted(set(_binaries()) - set(RUNS))


def _optimizer_values(path):
    """Numbers stored for optimizers in a .keras file (its model.weights.h5)."""
    import io

    import h5py

    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5:
        sizes = []
        h5.visititems(
            lambda name, obj: sizes.append(obj.size) if isinstance(obj, h5py.Dataset) and "optimizer" in name else None
        )
    return sum(sizes)


@pytest.mark.parametrize("binary", sorted(RUNS))
def test_quick_run(binary, tmp_path, noise_lines):
    extra, files = RUNS[binary]
    out = tmp_path / binary
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",  # TensorFlow's C++ errors (grappler's "remapper failed") show, its info does not
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    res = subprocess.run(
        [sys.executable, "-m", f"experiments.{binary}", "--quick", f"--output_dir={out}", *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    noisy = noise_lines(res.stdout, res.stderr)  # retracing, shuffle, remapper, checkpoint lines (conftest.NOISE)
    assert not noisy, f"{binary} --quick printed {len(noisy)} such lines: " + "\n".join(l[:300] for l in noisy[:5])
    missing = [f for f in ["metrics.json", "report.md", *files] if not (out / f).exists()]
    assert not missing, f"{binary} --quick did not write {missing}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "report.md").read_text().strip()
    assert not list(tmp_path.glob("runs")), "the run wrote outside --output_dir"
    if binary != "export":
        flags = metrics["run"]["flags"]
        assert metrics["run"]["steps_trained"], metrics["run"]
        assert all(v > 0 for v in metrics["run"]["steps_trained"].values())
        assert "--quick:" in res.stderr  # says which values --quick set
    if binary == "train_direct":
        assert flags["steps"] == 120 and flags["dataset"] == "digits"  # explicit flag kept, quick value elsewhere
        assert metrics["run"]["steps_trained"] == {"train": 120}
    if binary == "export":
        assert metrics["max_abs_difference"] < 1e-4 and metrics["accuracy"] > 0.5
    CHECKS.get(binary, lambda out, metrics: None)(out, metrics)
    # Saved models hold no optimizer state (moments, step counter) unless --save_optimizer.
    for model_file in (f for f in files if f.endswith(".keras")):
        assert _optimizer_values(out / model_file) == 0, model_file


# ---------------------------------------------------------------- what each binary's quick run must show
def _check_demo(out, m):
    import numpy as np
    import tensorflow as tf

    for row in ("svgd_weight ensemble (n=8)", "deep ensemble (5)", "one network"):
        r = m["results"][row]
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["ood_auroc"] <= 1.0 and np.isfinite(r["nll"])
    # equal budgets: the one network and the hypernetwork 12,800 / 32 steps, each of 5 members a fifth of that
    assert m["steps"] == {"hypernetwork": 400, "deep_ensemble_member": 80, "one_network": 400}
    assert m["results"]["generated single networks"]["networks"] == 30
    assert m["results"]["one network"]["accuracy"] > 0.6
    assert (out / "demo.png").stat().st_size > 10_000
    served = tf.saved_model.load(str(out / "saved_model"))
    x = tf.random.uniform([3, 28, 28, 1])
    probs = served.predict(x=x, n=tf.constant(5), seed=tf.constant(1, tf.int64))["mean_probs"].numpy()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert served.sample_weights(seed=tf.constant(1, tf.int64), n=tf.constant(5))["weights"].shape[0] == 5


def _check_deutsch_toy(out, m):
    assert m["steps"] == 1500 and m["num_peaks"] == 5 and m["peaks_visited"] >= 2


def _check_deutsch_mnist(out, m):
    h = m["hypernetworks"]["lam1000"]
    assert 0.0 <= h["accuracy"]["min"] <= h["accuracy"]["max"] <= 1.0 and h["eval_networks"] == 50
    assert m["ensembles"]["num_ensembles"] == 5 and len(m["fgsm"]["curve"]) == 5
    assert len(m["direct_baseline"]["accuracy"]) == 2
    for fig in ("pca_network", "pca_conv1"):
        assert (out / f"{fig}.png").stat().st_size > 0
    assert (out / "checkpoints" / "lam1000").is_dir()


def _check_hypergan_classify(out, m):
    methods = [r["method"] for r in m["table"]]
    assert methods[:4] == ["HyperGAN 1 network", "HyperGAN 5 networks", "HyperGAN 10 networks", "HyperGAN 50 networks"]
    assert {"single net", "deep ensemble 3", "MC dropout"} <= set(methods)
    assert m["table"][3]["accuracy"] > 0.5  # a 50-network ensemble on digits after the quick run


def _check_hypergan_regression(out, m):
    assert [r["method"] for r in m["table"]] == [
        "HyperGAN 10",
        "HyperGAN 100",
        "deep ensemble 5",
        "deep ensemble 5 (mean–variance)",
        "MC dropout",
    ]
    rows = {r["method"]: r for r in m["table"]}
    # the mean–variance ensemble learns the observation noise (sd 3 in y): its sd inside [-4, 4] is far above
    # the MSE members' spread, which only measures their disagreement
    assert rows["deep ensemble 5 (mean–variance)"]["mean_std_in_[-4,4]"] > rows["deep ensemble 5"]["mean_std_in_[-4,4]"]


def _check_charlm(out, m):
    hyper, lstm = m["models"]["hyper"], m["models"]["lstm"]
    assert abs(hyper["params"] - lstm["params"]) / hyper["params"] < 0.05  # comparable parameter counts
    for r in (hyper, lstm):
        assert 1.0 < r["valid_bpc"] < 7.0 and 1.0 < r["test_bpc"] < 7.0
    assert (out / "weight_changes.png").stat().st_size > 1000
    assert len((out / "sample.txt").read_text()) == len("The ") + 200


def _check_handwriting(out, m):
    import math

    import numpy as np

    assert math.isfinite(m["valid_nats_per_window"]) and m["valid_windows"] > 0
    assert (out / "handwriting_sample.png").stat().st_size > 1000
    assert len(np.load(out / "strokes.npz", allow_pickle=True)["strokes"]) == 64


def _check_ood(out, m):
    rows = {(r["setting"], r["method"]) for r in m["table"]}
    for setting in ("classes", "dataset"):
        assert {
            (setting, k) for k in ("HyperGAN 5", "HyperGAN 20", "single net", "deep ensemble 3", "MC dropout")
        } <= rows
    assert all(0.0 <= r["auroc"] <= 1.0 for r in m["table"])


def _check_adversarial(out, m):
    assert {(r["attack"], r["test_networks"]) for r in m["transfer"]} == {
        (a, n) for a in ("fgsm", "pgd") for n in (5, 20)
    }
    assert {"HyperGAN 5 (fresh)", "single net", "deep ensemble 3", "MC dropout"} == {r["method"] for r in m["direct"]}
    assert len(m["deutsch_protocol"]) == 5 and m["deutsch_protocol"][0]["single_success"] == 0.0


def _check_static_mnist(out, m):
    assert m["hyper"]["params"] == 12_910 and m["ordinary"]["params"] == 21_210
    assert m["hyper"]["conv2_params"] == 4 * 16 * 4 + 16 * 4 + 4 * 49 * 16 + 49 * 16 + 4 + 16
    assert m["hyper"]["test_accuracy"] > 0.5 and m["ordinary"]["test_accuracy"] > 0.5


def _check_static_wrn(out, m):
    assert m["steps"] == 150 and m["lr_boundaries"] == [38, 75, 112] and m["params"]["generator"] > 0


def _check_zoo_run(out, m):
    assert set(m["results"]) == {"direct", "hypergan"} and m["eval_networks"] == 8
    assert m["results"]["direct"]["accuracy"] > 0.5


CHECKS = {
    "demo": _check_demo,
    "deutsch_toy": _check_deutsch_toy,
    "deutsch_mnist": _check_deutsch_mnist,
    "hypergan_classify": _check_hypergan_classify,
    "hypergan_regression": _check_hypergan_regression,
    "hyperlstm_charlm": _check_charlm,
    "hyperlstm_handwriting": _check_handwriting,
    "ood": _check_ood,
    "adversarial": _check_adversarial,
    "static_mnist": _check_static_mnist,
    "static_wrn": _check_static_wrn,
    "zoo_run": _check_zoo_run,
}


def test_save_optimizer_flag_stores_optimizer_state(tmp_path):
    """--save_optimizer keeps the optimizer state in the saved model (and the file is larger)."""
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    sizes = {}
    for flag in ("--save_optimizer", "--nosave_optimizer"):
        out = tmp_path / flag
        res = subprocess.run(
            [sys.executable, "-m", "experiments.train_direct", "--quick", "--steps=5", f"--output_dir={out}", flag],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-4000:]
        sizes[flag] = (out / "model.keras").stat().st_size
        stored = _optimizer_values(out / "model.keras")
        assert (stored > 0) == (flag == "--save_optimizer"), (flag, stored)
    assert sizes["--save_optimizer"] > 1.5 * sizes["--nosave_optimizer"], sizes
