"""experiments.common as a package: the names binaries use, renamed flags, the shared recipes."""

import os
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from experiments import common

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env():
    return dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )


def test_every_common_name_used_in_experiments_and_tests_exists():
    used = set()
    for folder in ("experiments", "tests"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r"\bcommon\.([A-Za-z_]\w*)", path.read_text()))
    used -= {"py"}  # "common.py" in prose
    missing = sorted(name for name in used if not hasattr(common, name))
    assert not missing, missing


def test_importing_common_imports_neither_keras_nor_tensorflow():
    code = "import sys, experiments.common; print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "binary, old, new",
    [
        ("demo", "learning_rate", "hyper_learning_rate"),
        ("demo", "ensemble_size", "deep_ensemble_size"),
        ("zoo_run", "learning_rate", "baseline_learning_rate"),
        ("ood", "generator", "hypernetwork"),
    ],
)
def test_a_renamed_flag_is_an_error_naming_the_new_one(tmp_path, binary, old, new):
    done = subprocess.run(
        [sys.executable, "-m", f"experiments.{binary}", f"--{old}=1", f"--output_dir={tmp_path / 'run'}"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"--{old} was renamed --{new}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_recorded_under_an_old_flag_name_resumes_under_the_new_one(tmp_path):
    logs = []
    common.prepare_run(str(tmp_path), "toy", {"learning_rate": 0.1, "steps": 2}, log=logs.append)
    (tmp_path / "report.md").write_text("results")
    renamed = {"learning_rate": "hyper_learning_rate"}
    record = common.prepare_run(
        str(tmp_path), "toy", {"hyper_learning_rate": 0.1, "steps": 2}, log=logs.append, renamed=renamed
    )
    assert record["segments"][-1]["flags"] == {"learning_rate": 0.1, "steps": 2}  # the run as recorded
    with pytest.raises(common.RunFolderError, match=r"--hyper_learning_rate: 0.1 \(run\) -> 0.2 \(now\)"):
        common.prepare_run(str(tmp_path), "toy", {"hyper_learning_rate": 0.2, "steps": 2}, renamed=renamed)


def test_at_least_as_good_counts_ties_and_knows_which_way_is_better():
    deep = {"accuracy": 0.9, "nll": 0.3, "ece": 0.02, "auroc_digits": 0.8, "fpr95_digits": 0.5}
    ours = {"accuracy": 0.9, "nll": 0.35, "ece": 0.01, "auroc_digits": 0.85, "fpr95_digits": 0.4}
    verdict = common.at_least_as_good(ours, deep, ["accuracy", "nll", "ece", "auroc_digits", "fpr95_digits", "x"])
    assert verdict == {
        "at_least_as_good_on": ["accuracy", "ece", "auroc_digits", "fpr95_digits"],
        "missing": ["x"],
        "all": False,
    }
    assert common.at_least_as_good(deep, deep, list(deep))["all"]
    # a metric one side lacks is never a win: winning every metric both have is not "all"
    assert common.at_least_as_good(deep, {"accuracy": 0.8}, ["accuracy", "nll"]) == {
        "at_least_as_good_on": ["accuracy"],
        "missing": ["nll"],
        "all": False,
    }
    names = ("ood_auroc", "single_nll_mean", "brier", "accuracy", "nll_ts", "auroc_held-out classes_ts")
    assert [common.higher_is_better(m) for m in names] == [True, False, False, True, False, True]
    with pytest.raises(ValueError, match="'disagreement' names none of"):
        common.higher_is_better("disagreement")


def test_load_ood_noise_and_refusals():
    x = common.load_ood("uniform_noise", (8, 8, 1), seed=3, subset=5)
    assert x.shape == (5, 8, 8, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.random.RandomState(3).rand(5, 8, 8, 1).astype("float32"))
    b = common.load_ood("bernoulli_noise", (8, 8, 1), seed=3, subset=5)
    np.testing.assert_array_equal(b, (np.random.RandomState(3).rand(5, 8, 8, 1) < 0.5).astype("float32"))
    from absl import flags

    with pytest.raises(flags.ValidationError, match="must differ from --dataset"):
        common.load_ood("digits", (8, 8, 1), seed=0, in_dataset="digits")


def test_build_hypernetwork_every_kind():
    import keras

    from hyperkeras import TargetNetwork, models

    target = TargetNetwork(keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(3)]))
    small = dict(num_networks=3, seed=0, noise_dim=4, code_dim=4, mixer_units=8, generator_units=8)
    for method in common.HYPERNETWORKS:
        model = common.build_hypernetwork(method, target, discriminator_units=8, **small)
        assert model.num_networks == 3, method
        assert model.shared_batch == (method in ("svgd_function", "hypergan")), method
        assert isinstance(model, models.HyperGAN) == (method == "hypergan"), method
        assert isinstance(model, models.EntropyHypernetwork) == (method in ("entropy", "deutsch")), method
    compiled = common.build_hypernetwork(
        "hypergan", target, learning_rate=1e-3, discriminator_learning_rate=2e-3, **small
    )
    assert np.isclose(float(compiled.discriminator_optimizer.learning_rate), 2e-3)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        common.build_hypernetwork("nope", target, num_networks=2, seed=0)


def test_old_hypergan_common_names_warn():
    from experiments import hypergan_common as hc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FileNotFoundError, match="no generator.keras there"):
            hc.train_generator(None, None, None, load_from="/nonexistent")
    assert [w.category for w in caught] == [DeprecationWarning] and "train_hypernetwork" in str(caught[0].message)
    assert hc.GENERATORS is hc.HYPERNETWORKS


def test_the_multi_worker_patch_refuses_a_keras_it_was_not_written_for(monkeypatch):
    from experiments.common import compat

    monkeypatch.setattr(compat, "keras_version", lambda: (2, 15))
    with pytest.raises(RuntimeError, match="written for Keras 3.0-3.16"):
        compat.fix_keras_multi_worker()
