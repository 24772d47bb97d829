"""Runs that can't lie, discoverable flags and files for everyone (issue 14, items 1, 2 and 4).

Binaries run as subprocesses at tiny sizes (digits, a few steps); a refused run folder is answered
before TensorFlow is imported, so refusals cost well under a second.
"""

import json
import os
import pathlib
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

from experiments import common

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARIES = sorted(
    p.stem
    for p in (REPO_ROOT / "experiments").glob("*.py")
    if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M)
)
SHARED = [
    "steps",
    "output_dir",
    "dataset",
    "data_dir",
    "seed",
    "batch_size",
    "strategy",
    "checkpoint_every",
    "overwrite",
    "resume_with_new_flags",
    "quick",
    "save_optimizer",
]
DIRECT = ["--dataset=digits", "--target=mlp", "--batch_size=16"]


def _run(module, *args, cwd=REPO_ROOT, timeout=300, umask=None):
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    kw = {} if umask is None else {"umask": umask}
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def _ok(res):
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _metrics(folder):
    return json.loads((pathlib.Path(folder) / "metrics.json").read_text())


# ------------------------------------------------------------------------------------ item 2: --help
def test_every_binary_is_found():
    assert {"train_direct", "deutsch_toy", "hypergan_classify", "zoo_run", "export"} <= set(BINARIES)


def _help_env():
    return dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )


def test_help_exits_0_and_lists_own_and_shared_flags():
    """Every binary's --help (issue 24 item 3): exit code 0 (absl's own is 1), its own flags and the
    shared ones it accepts (from common.define_flags / hypergan_common.define_flags, or its own
    --output_dir, --seed, --quick as in export). All binaries at once, in parallel."""
    procs = {
        b: subprocess.Popen(
            [sys.executable, "-m", f"experiments.{b}", "--help"],
            cwd=REPO_ROOT,
            env=_help_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in BINARIES
    }
    results = {b: (p.communicate(timeout=120), p.returncode) for b, p in procs.items()}
    for binary, ((stdout, stderr), code) in results.items():
        assert code == 0, f"{binary} --help exited {code}: {stderr[-2000:]}"
        assert "Traceback" not in stderr, stderr[-2000:]
        source = (REPO_ROOT / "experiments" / f"{binary}.py").read_text()
        expected = set(re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', source))
        if "common.define_flags(" in source:
            expected |= set(SHARED)
        if "hc.define_flags(" in source or "hypergan_common.define_flags(" in source:
            expected |= {"noise_dim", "networks_per_step", "baseline_steps", "eval_batch_size"}
        assert {"output_dir", "seed", "quick"} <= expected, binary  # every binary has these three
        missing = sorted(f for f in expected if f"--{f}:" not in stdout and f"--[no]{f}:" not in stdout)
        assert not missing, f"{binary} --help lacks {missing}"
        if "common.define_flags(" in source and binary != "zoo_run":  # zoo_run: runs/zoo_<target>, set in main
            assert f"(default: 'runs/{binary}')" in stdout
    res = _run("train_direct", "--helpfull", timeout=120)  # absl's own and TensorFlow's flags too, also exit 0
    assert res.returncode == 0 and "--[no]only_check_flags" in res.stdout and "--steps:" in res.stdout
    res = _run("train_direct", "--steps=x", "--help", timeout=120)  # a bad value before --help: still an error
    assert res.returncode == 1 and "FATAL Flags parsing error: flag --steps=x" in res.stderr


def test_readme_lists_every_binary():
    if not (REPO_ROOT / "README.md").exists():
        pytest.skip("README.md is not among this test's files (Bazel runfiles)")
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Experiment binaries") : text.index("## Data")]
    for binary in BINARIES:
        assert f"`{binary}`" in section, binary


# ------------------------------------------------------------------ item 1: runs that can't lie
def test_two_binaries_with_defaults_do_not_collide_and_files_are_readable(tmp_path):
    _ok(_run("train_direct", *DIRECT, "--steps=2", cwd=tmp_path, umask=0o022))
    _ok(_run("deutsch_toy", "--steps=2", "--path_points=40", cwd=tmp_path, umask=0o022))
    for name in ("train_direct", "deutsch_toy"):
        folder = tmp_path / "runs" / name
        assert json.loads((folder / "run.json").read_text())["experiment"] == name
        run = _metrics(folder)["run"]
        assert run["experiment"] == name and run["steps_trained"] == {"train": 2}
        assert "## Run" in (folder / "report.md").read_text()
        files = ["report.md", "metrics.json", "flags.json", "run.json"] + (["toy.png"] if name == "deutsch_toy" else [])
        for f in files:
            assert stat.S_IMODE((folder / f).stat().st_mode) == 0o644, f"{name}/{f}"
    assert not (tmp_path / "runs" / "train_direct" / "toy.png").exists()


def test_changed_flags_are_refused_or_recorded(tmp_path):
    out = f"--output_dir={tmp_path / 'run'}"
    _ok(_run("train_direct", out, *DIRECT, "--steps=4"))
    report = (tmp_path / "run" / "report.md").read_text()

    res = _run("train_direct", out, *DIRECT, "--steps=4", "--learning_rate=0.01")
    assert res.returncode != 0 and "holds a run with other flags" in res.stderr
    assert "--learning_rate: 0.001 (run) -> 0.01 (now)" in res.stderr and "Traceback" not in res.stderr
    res = _run("train_direct", out, *DIRECT, "--steps=2")  # fewer steps: a changed flag like any other
    assert res.returncode != 0 and "--steps: 4 (run) -> 2 (now)" in res.stderr
    res = _run("train_direct", out, *DIRECT, "--steps=2", "--resume_with_new_flags")  # ... and never undone
    assert res.returncode != 0 and "fewer than the run has already trained (train 4)" in res.stderr
    assert (tmp_path / "run" / "report.md").read_text() == report  # nothing rewritten

    # Continue with a new learning rate and more steps; --checkpoint_every is harmless (not a change).
    res = _ok(
        _run(
            "train_direct",
            out,
            *DIRECT,
            "--steps=6",
            "--learning_rate=0.01",
            "--checkpoint_every=3",
            "--resume_with_new_flags",
        )
    )
    assert "resumed from" in res.stderr
    m = _metrics(tmp_path / "run")
    assert m["steps"] == 6 and m["run"]["steps_trained"] == {"train": 6}
    assert m["run"]["flags"]["learning_rate"] == 0.01 and m["run"]["initial_flags"]["learning_rate"] == 0.001
    assert m["run"]["flag_changes"] == [
        {"at_steps": {"train": 4}, "changed": {"learning_rate": [0.001, 0.01], "steps": [4, 6]}}
    ]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "train: **6**" in report and "after steps train 4" in report and "`--learning_rate` 0.001 → 0.01" in report


def test_overwrite_says_what_it_removes_and_starts_afresh(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")  # in the folder before the run: never removed
    out = f"--output_dir={folder}"
    _ok(_run("train_direct", out, *DIRECT, "--steps=4"))
    res = _ok(_run("train_direct", out, *DIRECT, "--steps=2", "--learning_rate=0.01", "--overwrite"))
    assert "--overwrite: removing the earlier run (train_direct, steps trained: train 4)" in res.stderr
    m = _metrics(folder)
    assert m["run"]["steps_trained"] == {"train": 2} and "flag_changes" not in m["run"]
    assert all(p == "checkpoint" or p.startswith("ckpt-2.") for p in os.listdir(folder / "checkpoints" / "train"))
    assert (folder / "notes.txt").read_text() == "mine"
    res = _run("deutsch_toy", out, "--steps=2")
    assert res.returncode != 0 and "holds a run of experiment 'train_direct', not 'deutsch_toy'" in res.stderr


def _fake_checkpoint(folder, name, step):
    path = folder / "checkpoints" / name
    path.mkdir(parents=True)
    (path / "checkpoint").write_text(
        f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n'
    )


FLAGS_A = {"steps": 10, "lam": 0.2, "output_dir": "x", "checkpoint_every": 5, "eval_batch_size": 100}


def test_prepare_run_cases(tmp_path):
    logs = []
    prep = lambda values, **kw: common.prepare_run(str(tmp_path), "toy", values, {"new_flag": 1}, log=logs.append, **kw)  # noqa: E731
    first = prep(FLAGS_A)
    assert first["segments"][0]["flags"] == {"lam": 0.2, "steps": 10}  # harmless flags are not part of the run
    # never trained, no results: other flags start it afresh
    assert prep({**FLAGS_A, "lam": 5.0})["segments"][0]["flags"]["lam"] == 5.0 and "never trained" in logs[-1]
    _fake_checkpoint(tmp_path, "train", 10)
    assert common.trained_steps(str(tmp_path)) == {"train": 10}
    # harmless flags and a new flag at its default resume
    assert (
        len(prep({**FLAGS_A, "lam": 5.0, "checkpoint_every": 1, "eval_batch_size": 7, "new_flag": 1})["segments"]) == 1
    )
    with pytest.raises(common.RunFolderError, match=r"--new_flag: 1 \(run\) -> 2 \(now\)"):
        prep({**FLAGS_A, "lam": 5.0, "new_flag": 2})
    with pytest.raises(common.RunFolderError, match="exclude each other"):
        prep(FLAGS_A, overwrite=True, resume_with_new_flags=True)
    with pytest.raises(common.RunFolderError, match="holds a run of experiment 'toy', not 'other'"):
        common.prepare_run(str(tmp_path), "other", FLAGS_A, resume_with_new_flags=True)
    # a nested run folder's checkpoints count too (ood's in_classes/)
    _fake_checkpoint(tmp_path / "in_classes", "generator", 8)
    assert common.trained_steps(str(tmp_path)) == {"train": 10, "in_classes/generator": 8}


def test_folder_without_run_record(tmp_path):
    _fake_checkpoint(tmp_path, "train", 10)
    (tmp_path / "report.md").write_text("old")
    (tmp_path / "data.csv").write_text("not ours")
    with pytest.raises(
        common.RunFolderError, match=r"holds results or checkpoints \(checkpoints, report.md\) but no run"
    ):
        common.prepare_run(str(tmp_path), "toy", FLAGS_A)
    # written by hyperkeras before run records: its flags.json stands in for the record
    legacy = {k: v for k, v in FLAGS_A.items() if k != "eval_batch_size"}  # harmless flags may come and go
    (tmp_path / "flags.json").write_text(json.dumps({**legacy, "lam": 0.1}))
    with pytest.raises(common.RunFolderError, match=r"--lam: 0.1 \(run\) -> 0.2 \(now\)"):
        common.prepare_run(str(tmp_path), "toy", FLAGS_A)
    (tmp_path / "flags.json").write_text(json.dumps(legacy))
    record = common.prepare_run(str(tmp_path), "toy", FLAGS_A, log=lambda m: None)
    assert record["preexisting"] == ["data.csv"] and record["segments"][0]["flags"] == {"lam": 0.2, "steps": 10}
    (tmp_path / "flags.json").write_text(json.dumps({**legacy, "other_binary_flag": 1}))  # another binary's folder
    os.remove(tmp_path / "run.json")
    with pytest.raises(common.RunFolderError, match="but no run record"):
        common.prepare_run(str(tmp_path), "toy", FLAGS_A)
    common.prepare_run(str(tmp_path), "toy", {**FLAGS_A, "lam": 3.0}, overwrite=True, log=lambda m: None)
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "run.json"]


def _tiny_model(lr):
    import keras

    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return m


def _make(start):
    import tensorflow as tf

    x = np.ones((16, 3), "float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(4).repeat().skip(start)


def _ctx(tmp_path, steps, segments=1):
    import tensorflow as tf

    run = {"segments": [{"flags": {}, "at_steps": {}}] * segments}
    return common.Context(
        output_dir=str(tmp_path),
        strategy=tf.distribute.get_strategy(),
        seed=0,
        steps=steps,
        batch_size=4,
        checkpoint_every=2,
        run=run,
    )


def test_resume_with_new_flags_trains_with_the_new_learning_rate(tmp_path):
    """Learning rates are optimizer variables that a checkpoint would restore: the new flags must win."""
    common.train(_tiny_model(0.0), _make, _ctx(tmp_path, 2), verbose=0)
    before = [w.numpy().copy() for w in _restored(tmp_path)]
    resumed = _tiny_model(0.1)
    common.train(resumed, _make, _ctx(tmp_path, 4, segments=2), verbose=0)
    assert float(resumed.optimizer.learning_rate.numpy()) == pytest.approx(0.1)
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(before, resumed.weights))


def _restored(folder):
    import tensorflow as tf

    from hyperkeras import checkpoints

    m = _tiny_model(0.0)
    ckpt = checkpoints.model_checkpoint(m, step=tf.Variable(0, dtype=tf.int64))
    checkpoints.restore(ckpt, tf.train.latest_checkpoint(str(folder / "checkpoints" / "train")))
    return m.weights


def test_train_refuses_a_checkpoint_beyond_its_steps(tmp_path):
    common.train(_tiny_model(0.1), _make, _ctx(tmp_path, 4), verbose=0)
    with pytest.raises(common.RunFolderError, match="holds 4 trained steps, more than the 2 asked for"):
        common.train(_tiny_model(0.1), _make, _ctx(tmp_path, 2), verbose=0)


# ------------------------------------------------------------------- item 4: files for everyone
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hyperkeras import io

    old = os.umask(umask)
    try:
        (tmp_path / "replaced.md").write_text("old")
        os.chmod(tmp_path / "replaced.md", 0o600)
        io.atomic_write_text(str(tmp_path / "report.md"), "# hi\n")
        io.atomic_write_text(str(tmp_path / "replaced.md"), "new")
        io.atomic_write_json(str(tmp_path / "sub" / "metrics.json"), {"a": np.float32(1.5)})
        io.save_figure(plt.figure(), str(tmp_path / "fig.png"))
    finally:
        os.umask(old)
    for name in ("report.md", "replaced.md", "sub/metrics.json", "fig.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert (tmp_path / "replaced.md").read_text() == "new"
    assert json.loads((tmp_path / "sub" / "metrics.json").read_text()) == {"a": 1.5}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    from hyperkeras import io

    io.atomic_write_text(str(tmp_path / "report.md"), "complete")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_text(str(tmp_path / "report.md"), "half")
    assert (tmp_path / "report.md").read_text() == "complete"
    assert os.listdir(tmp_path) == ["report.md"]


# ------------------------------------------------------------------ issue 24 item 5: Ctrl-C
def test_ctrl_c_names_the_checkpoint_and_the_command_that_resumes(tmp_path):
    """SIGINT after the first checkpoint of a --quick run (which checkpoints every steps/4): exit 130, one
    line naming the checkpoint and the resume command (without --overwrite), no traceback; that command
    resumes from the checkpoint and the report's training time sums both sessions."""
    import shlex
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.train_direct", "--quick", f"--output_dir={out}", "--overwrite"]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=_help_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    state = out / "checkpoints" / "train" / "checkpoint"
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint was seen"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    crash = stderr.find("Fatal Python error")  # faulthandler's report: the stacks, not its module list
    assert proc.returncode == 130, stderr[crash : crash + 6000] if crash >= 0 else stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("Interrupted (Ctrl-C)")]
    assert len(lines) == 1, stderr[-3000:]
    match = re.fullmatch(
        r"Interrupted \(Ctrl-C\): last checkpoint (\S+)/ckpt-(\d+) \(step (\d+)\); resume with: (.+)", lines[0]
    )
    assert match, lines[0]
    folder, step = match.group(1), int(match.group(2))
    assert folder == str(out / "checkpoints" / "train") and step == int(match.group(3)) and step % 75 == 0 < step < 300
    assert (out / "checkpoints" / "train" / f"ckpt-{step}.index").exists()
    resume = shlex.split(match.group(4))
    assert resume == cmd[:-1]  # the same command, without --overwrite (which would remove the run)
    record = json.loads((out / "run.json").read_text())["train_seconds"]["train"]
    assert record["steps"] == step and record["seconds"] > 0

    res = subprocess.run(resume, cwd=tmp_path, env=_help_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {folder}/ckpt-{step} at step {step}" in res.stderr
    session = float(re.search(rf"train: {300 - step} steps in ([\d.]+) s", res.stderr).group(1))
    m = _metrics(out)
    assert m["run"]["steps_trained"] == {"train": 300}
    total = m["run"]["train_seconds"]["train"]
    assert total > session and total >= round(record["seconds"] + session, 1) - 0.2
    assert f"Training time, summed over the run's sessions: train {total:.0f} s." in (out / "report.md").read_text()


def test_ctrl_c_during_a_checkpoint_waits_for_it(monkeypatch):
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    done = []
    with pytest.raises(KeyboardInterrupt):
        with common._interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the rest of the block ran")
    assert done and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(
        sys,
        "orig_argv",
        [
            "python",
            "-u",
            "-m",
            "experiments.demo",
            "--overwrite",
            "--steps=3",
            "--nooverwrite",
            "-overwrite=true",
            "--output_dir=a b",
        ],
    )
    assert common.resume_command() == "python -u -m experiments.demo --steps=3 '--output_dir=a b'"


def test_dtype_policy_flag_builds_the_runs_models_under_it(tmp_path):
    """--dtype_policy=mixed_bfloat16: the trained model's weighted layers compute in bfloat16 and keep float32
    variables (Keras's mixed precision), the run trains to a finite loss and records the flag."""
    import keras

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.train_direct", "--quick", "--steps=120", "--dtype_policy=mixed_bfloat16"]
    res = subprocess.run(
        [*cmd, f"--output_dir={out}"], cwd=tmp_path, env=_help_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    model = keras.models.load_model(out / "model.keras")
    weighted = [layer for layer in model.layers if layer.weights]
    assert weighted and {layer.dtype_policy.name for layer in weighted} == {"mixed_bfloat16"}
    assert {w.dtype for layer in weighted for w in layer.weights} == {"float32"}
    assert json.loads((out / "flags.json").read_text())["dtype_policy"] == "mixed_bfloat16"
    m = _metrics(out)
    # 120 steps on digits: float32 reached 0.66 (NLL 1.06) and bfloat16 0.61 (1.03) with these flags; chance is 0.1
    assert np.isfinite(m["test_nll"]) and m["test_accuracy"] > 0.4
