"""experiments/continual.py end to end: its --quick run (digits, split, every method, one seed) into a tmp
folder; metrics.json's keys and the ranges of its values; a second invocation resumes from the stored
results instead of training again; --steps is refused."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hyperkeras import continual

METHODS = ("hnet", "finetune", "ewc", "separate", "multitask")


def run(repo_root, *args, check=True):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.continual", *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("continual") / "run"
    first = run(pathlib.Path(__file__).resolve().parent.parent, "--quick", f"--output_dir={output}")
    return output, first


def test_quick_metrics(quick_run, noise_lines):
    output, first = quick_run
    assert noise_lines(first.stdout, first.stderr) == []
    m = json.loads((output / "metrics.json").read_text())
    assert m["benchmark"] == "split" and m["dataset"] == "digits"
    assert m["num_tasks"] == 5 and m["classes_per_task"] == 2
    assert m["task_classes"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert set(m["methods"]) == set(METHODS)
    t = m["num_tasks"]
    for name, e in m["methods"].items():
        assert 0.0 <= e["average_accuracy"] <= 1.0, name
        assert e["seeds"] == [0]
        assert len(e["final_accuracy"]) == t and all(0.0 <= a <= 1.0 for a in e["final_accuracy"])
        matrix = e["matrix"]
        if name == "multitask":  # trained on all tasks at once: one row, no forgetting
            assert len(matrix) == 1 and e["forgetting"] is None
            continue
        assert len(matrix) == t and all(len(row) == t for row in matrix)
        for i, row in enumerate(matrix):  # R[i][j]: accuracy on task j after task i; None before task j
            assert all(v is None for v in row[i + 1 :]) and all(0.0 <= v <= 1.0 for v in row[: i + 1])
        # the summary's numbers are the matrix's (one seed)
        assert e["average_accuracy"] == pytest.approx(np.mean(matrix[-1]))
        assert e["forgetting"] == pytest.approx(continual.forgetting(matrix))
        assert -1.0 <= e["forgetting"] <= 1.0
    assert m["methods"]["separate"]["forgetting"] == 0.0
    # every method learns the digit pairs well above chance (0.5)
    assert all(e["average_accuracy"] > 0.7 for e in m["methods"].values())
    ent = m["methods"]["hnet"]["entropy_inference"]
    assert 0.0 <= ent["average_accuracy"] <= 1.0 and 0.0 <= ent["task_inference_accuracy"] <= 1.0
    # sizes: the generator's weights, one target, and the T separate networks
    assert m["target_params"] == 64 * 100 + 100 + 100 * 100 + 100 + 100 * 2 + 2  # 8x8 digits, hidden 100,100
    assert m["separate_params"] == t * m["target_params"] == m["methods"]["separate"]["num_params"]
    assert m["generator_params"] == m["methods"]["hnet"]["num_params"] > 0
    assert m["generator_vs_separate"] == pytest.approx(m["generator_params"] / m["separate_params"])
    assert m["run"]["steps_trained"] == {f"{k}_seed0": 60 * t for k in METHODS}
    assert (output / "continual.png").stat().st_size > 0
    report = (output / "report.md").read_text()
    assert "hnet+ent" in report and "## Run" in report


def test_quick_run_resumes_without_training(quick_run, repo_root):
    output, _ = quick_run
    before = json.loads((output / "metrics.json").read_text())
    again = run(repo_root, "--quick", f"--output_dir={output}")
    assert again.stderr.count("done in an earlier session") == len(METHODS)
    after = json.loads((output / "metrics.json").read_text())
    assert after["methods"] == before["methods"]


def test_refuses_steps_and_unknown_methods(tmp_path, repo_root):
    out = run(repo_root, "--quick", "--steps=10", f"--output_dir={tmp_path / 'a'}", check=False)
    assert out.returncode != 0 and "--steps_per_task" in out.stderr
    out = run(repo_root, "--quick", "--methods=hnet,si", f"--output_dir={tmp_path / 'b'}", check=False)
    assert out.returncode != 0 and "si" in out.stderr


def test_hnet_flags_reach_the_generator(tmp_path, repo_root):
    """--hnet_learning_rate is the generator's own (0: it never moves, so every task's accuracy stays where
    it started and nothing is forgotten, also with --lookahead, while --learning_rate still trains the
    others); --residual, --lookahead and --generator_init are recorded and reported."""
    output = tmp_path / "run"
    args = [
        "--quick",
        "--methods=hnet,separate",
        "--num_tasks=2",
        "--hnet_learning_rate=0",
        "--residual",
        "--lookahead",
    ]
    run(repo_root, *args, "--generator_init=hyperfan_out", f"--output_dir={output}")
    m = json.loads((output / "metrics.json").read_text())
    hnet = m["methods"]["hnet"]
    assert hnet["matrix"][0][0] == hnet["matrix"][1][0] and hnet["forgetting"] == 0.0
    assert m["methods"]["separate"]["average_accuracy"] > 0.7  # trained at --learning_rate
    flags = json.loads((output / "flags.json").read_text())
    assert flags["residual"] is True and flags["generator_init"] == "hyperfan_out"
    assert flags["lookahead"] is True
    assert "hyperfan_out init, residual θ₀ + Δ, lookahead" in (output / "report.md").read_text()
