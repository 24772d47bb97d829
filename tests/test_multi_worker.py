"""Multi-worker training for real: two worker processes on 127.0.0.1 (``--strategy=multi_worker``,
`TF_CONFIG`, gRPC collectives) train like one process on the same global batch.

One experiment binary, ``experiments.zoo_run``, trains two models on the ``digits`` dataset: the ``mlp``
target directly (a plain Keras model) and a `HyperGAN` (a `hyperkeras.models.Hypernetwork` with a
`HyperGANGenerator` and the `LatentGAN` regulariser, whose discriminator has its own optimizer), 5 steps
each: two checkpoint epochs of 2 steps, then a second `fit` on the data stream re-positioned at step 4.
It runs three times at once: as workers 0 and 1 of a two-worker cluster (each with half of every global
batch of 32) and as a single process with the whole batch. Every weight of both models (trainable or
not) must agree to float32 round-off (seen: below 1e-7): the same seeds, data order, loss scaling and
updates. The README's multi-worker section shows these commands (`COMMON_FLAGS`).

Not compared: the Deutsch hypernetwork (``--methods=deutsch``). It runs multi-worker, but its training
here turns round-off into visible differences within a few steps: its first step agrees with one
process's up to 4-5 of 700,000 weights (Adam's first step is ``lr · sign(g)``, so a near-zero gradient's
round-off flips a whole step), and from there the differences spread to a third of the weights by step 4
(seen with K = 4 and 16, λ = 10 and 1e3), so no float32 tolerance holds and a looser one would prove
little. With plain SGD its weights agree to round-off (checked by hand: 1.4e-7 after 4 steps).

Adam is also why no test of final weights can see a uniformly mis-scaled loss (its step does not depend
on the gradient's scale); a wrongly scaled regulariser, another data order or sharding, or other seeds
do show.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMON_FLAGS = [
    "--target=mlp",
    "--dataset=digits",
    "--methods=direct,hypergan",
    "--steps=5",
    "--checkpoint_every=2",
    "--batch_size=32",
    "--seed=3",
    "--networks_per_step=4",
    "--noise_dim=8",
    "--code_dim=8",
    "--units=16",
    "--pretrain_steps=0",
    "--eval_networks=2",
    "--eval_subset=64",
]
MODELS = ("direct", "hypergan")
FLOAT32 = {"rtol": 1e-5, "atol": 1e-6}
STEPS = 5
TIMEOUT_S = 420  # per run of the three processes (about a minute on two busy cores)


def free_ports(n):
    """`n` distinct TCP ports free on 127.0.0.1 right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports, index):
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _tail(path, n=4000):
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no output)"


def run_all(jobs, cwd, timeout):
    """Starts every ``(name, argv, env, log path)`` job at once and waits for all. If one fails, or the
    deadline passes, kills every job still running (a worker whose peer died waits for it forever) and
    fails with the output of the failed one."""
    procs = []
    try:
        for name, argv, env, log in jobs:
            with open(log, "w") as out:
                procs.append(
                    (name, subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT), log)
                )
        deadline = time.monotonic() + timeout
        while True:
            codes = [(name, p.poll(), log) for name, p, log in procs]
            failed = [(name, code, log) for name, code, log in codes if code not in (None, 0)]
            if failed:
                name, code, log = failed[0]
                pytest.fail(f"{name} exited with {code}; its output ends:\n{_tail(log)}")
            if all(code == 0 for _, code, _ in codes):
                return
            if time.monotonic() > deadline:
                running = [name for name, code, _ in codes if code is None]
                pytest.fail(
                    f"{', '.join(running)} still running after {timeout} s; last output of "
                    f"{running[0]}:\n{_tail(dict((n, l) for n, _, l in procs)[running[0]])}"
                )
            time.sleep(0.2)
    finally:
        for _, p, _ in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run folders of the single process and the two workers, trained at the same time."""
    tmp = tmp_path_factory.mktemp("multi_worker")
    binary = [sys.executable, "-m", "experiments.zoo_run", *COMMON_FLAGS]
    ports = free_ports(2)
    jobs = [("single process", [*binary, f"--output_dir={tmp / 'single'}"], _env(), tmp / "single.log")]
    for i in range(2):
        jobs.append(
            (
                f"worker {i}",
                [*binary, "--strategy=multi_worker", f"--output_dir={tmp / f'worker{i}'}"],
                _env(TF_CONFIG=tf_config(ports, i)),
                tmp / f"worker{i}.log",
            )
        )
    run_all(jobs, REPO_ROOT, TIMEOUT_S)
    return {
        "single": tmp / "single",
        "worker0": tmp / "worker0",
        "worker1": tmp / "worker1",
        "logs": {name: tmp / f"{name}.log" for name in ("single", "worker0", "worker1")},
    }


def _weights(path):
    import keras

    import hyperkeras  # noqa: F401 (registers the hypernetwork classes for loading)

    model = keras.models.load_model(path, compile=False)
    return [(v.path, np.asarray(v.numpy() if hasattr(v, "numpy") else v)) for v in model.weights]


def test_workers_ran_as_a_two_worker_cluster(runs):
    for i in range(2):
        log = runs["logs"][f"worker{i}"].read_text(errors="replace")
        assert f"task_id = {i}, num_workers = 2" in log, _tail(runs["logs"][f"worker{i}"])
    assert "num_workers" not in runs["logs"]["single"].read_text(errors="replace")
    for run in ("single", "worker0", "worker1"):
        metrics = json.loads((runs[run] / "metrics.json").read_text())
        assert metrics["run"]["steps_trained"] == {m: STEPS for m in MODELS}
        assert metrics["run"]["other_flags"]["strategy"] == ("default" if run == "single" else "multi_worker")


@pytest.mark.parametrize("model", MODELS)
def test_two_workers_train_like_one_process(runs, model):
    single = _weights(runs["single"] / f"{model}.keras")
    for worker in ("worker0", "worker1"):
        multi = _weights(runs[worker] / f"{model}.keras")
        assert [p for p, _ in multi] == [p for p, _ in single]
        for (path, a), (_, b) in zip(single, multi):
            np.testing.assert_allclose(b, a, **FLOAT32, err_msg=f"{model} {worker}: {path}")


def test_training_moved_the_weights(runs):
    """The comparison above means something only if the steps changed the weights well beyond its tolerance:
    the directly trained network against its initial weights (the same seeded build)."""
    import hyperkeras as hk

    init = hk.targets.build_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=3)
    trained = _weights(runs["single"] / "direct.keras")
    assert len(init.weights) == len(trained)
    moved = max(float(np.abs(np.asarray(v.numpy()) - w).max()) for v, (_, w) in zip(init.weights, trained))
    assert moved > 1e-3


def test_readme_shows_these_commands():
    if not (REPO_ROOT / "README.md").exists():
        pytest.skip("README.md is not among this test's files (Bazel runfiles)")
    text = (REPO_ROOT / "README.md").read_text()
    flags = " ".join(COMMON_FLAGS)
    assert f"python -m experiments.zoo_run --strategy=multi_worker {flags}" in text
    assert f"python -m experiments.zoo_run {flags}" in text
