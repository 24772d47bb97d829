"""Run folders: a folder holds one run, and a run is resumed only with the flags it was started with.

Runs that can't lie
-------------------
A run folder belongs to one run. `setup` keeps its record in ``<output_dir>/run.json`` (experiment, the
flags that define the run, and the history of flag changes) beside its ``checkpoints/``:

* a new or empty folder starts a new run;
* the same defining flags resume the run from its newest checkpoints (a killed run continues where it
  stopped; with ``--deterministic`` it ends bit-exact with an uninterrupted one);
* other defining flags are refused, with a message naming every flag that differs and its two values.
  Two escapes: ``--overwrite`` removes the earlier run's files (it says which) and starts afresh;
  ``--resume_with_new_flags`` continues from the checkpoints and records the new flags and the step at
  which they changed, which every report then states. Fewer ``--steps`` than a model has already been
  trained for are refused even then (training cannot be undone; a report would lie);
* a folder with another experiment's run, or with results but no run record (an older hyperkeras), is
  refused unless ``--overwrite``.

Every report.md ends with a "Run" section, and every metrics.json has a ``run`` entry, stating the steps
each model was actually trained for (read from its newest checkpoint) and the flags it was trained with.

Which flags define a run: every flag of the experiment except `HARMLESS_FLAGS`, which change where a run
lives, how often it is saved, where it runs or how it is evaluated, not what is trained:
``output_dir``, ``overwrite``, ``resume_with_new_flags``, ``checkpoint_every`` (the data stream is
re-positioned on resume, so the trained weights do not depend on it), ``data_dir`` (where the same
dataset's files are found), ``strategy`` and ``tpu`` (the same global batch and objective on other
devices), ``deterministic`` (op determinism: bitwise reproducibility only) and the evaluation batch sizes
``eval_batch_size``, ``eval_batch``, ``eval_chunk``, and ``reevaluate`` (evaluate finished models again). ``--steps`` defines the run: extending a finished
run to more steps is a change of flags (``--resume_with_new_flags``), because learning-rate schedules and
some reports depend on it. Evaluation-only flags other than the batch sizes (sample counts, subsets) are
treated as defining (refusing is never a lie); change them on a finished run with
``--resume_with_new_flags``, which trains nothing more and records the change.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil

from absl import logging

from experiments.common.flags import HARMLESS_FLAGS

RUN_FILE = "run.json"


@dataclasses.dataclass
class Context:
    """What `setup` gives a binary: its run folder, strategy, seed, step and batch defaults, run record."""

    output_dir: str
    strategy: object
    seed: int
    steps: int
    batch_size: int
    checkpoint_every: int
    experiment: str = ""
    run: dict | None = None  # the run record (run.json) from `setup`
    # {model name: training wall time in s, summed over the run's sessions}, set by `train`
    train_seconds: dict = dataclasses.field(default_factory=dict)
    run_file: str | None = None  # where `run` is kept (a Context for a sub-folder keeps the run's)

    def path(self, *parts) -> str:
        return os.path.join(self.output_dir, *parts)


class RunFolderError(ValueError):
    """--output_dir holds a run this invocation must not silently continue; the message says why and how."""


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def trained_steps(output_dir: str) -> dict:
    """``{model name: step of its newest checkpoint}`` for every ``checkpoints/<name>`` under `output_dir`
    (nested run folders too, e.g. ``in_classes/generator``): the steps each model was actually trained for."""
    found = {}
    if not os.path.isdir(output_dir):
        return found
    for root, dirs, files in os.walk(output_dir):
        dirs.sort()
        if "checkpoint" not in files or os.path.basename(os.path.dirname(root)) != "checkpoints":
            continue
        with open(os.path.join(root, "checkpoint")) as f:
            match = re.search(r'^model_checkpoint_path:\s*"([^"]*)"', f.read(), re.M)
        number = re.search(r"ckpt-(\d+)$", match.group(1)) if match else None
        if number:
            rel = os.path.relpath(os.path.dirname(os.path.dirname(root)), output_dir)
            name = os.path.basename(root)
            found[name if rel == "." else f"{rel}/{name}"] = int(number.group(1))
    return found


_RUN_OUTPUTS = ("checkpoints", "logs", "flags.json", "metrics.json", "report.md", RUN_FILE)


def _looks_like_run_output(path: str) -> bool:
    """A file or folder an experiment binary writes (for folders without a run record)."""
    name = os.path.basename(path)
    if name in _RUN_OUTPUTS or name.endswith((".png", ".keras")):
        return True
    if os.path.isdir(path) and not os.path.islink(path):  # e.g. baselines/, in_classes/
        return any(_looks_like_run_output(os.path.join(path, n)) for n in os.listdir(path))
    return False


def _remove(output_dir: str, names) -> None:
    for name in names:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _flag_diff(old: dict, new: dict, defaults: dict) -> dict:
    """``{name: (old, new)}`` of the defining flags that differ. A flag the old record lacks counts only
    if it is not at its default (a flag added to the binary since); one the binary no longer has is ignored."""
    diff = {}
    for name, value in new.items():
        if name in HARMLESS_FLAGS:
            continue
        if name in old:
            if old[name] != value:
                diff[name] = (old[name], value)
        elif value != defaults.get(name, value):
            diff[name] = (defaults.get(name), value)
    return diff


def _describe(diff: dict) -> str:
    return ", ".join(f"--{k}: {a!r} (run) -> {b!r} (now)" for k, (a, b) in sorted(diff.items()))


def _renamed(recorded: dict, renamed: dict | None) -> dict:
    """`recorded` flags with old names (`renamed` keys) under their new names."""
    if not renamed:
        return recorded
    return {renamed.get(k, k) if renamed.get(k) not in recorded else k: v for k, v in recorded.items()}


def steps_text(steps: dict) -> str:
    """``"name step, ..."`` of `trained_steps` (``"none"`` when empty)."""
    return ", ".join(f"{k} {v}" for k, v in sorted(steps.items())) or "none"


def prepare_run(
    output_dir: str,
    experiment: str,
    values: dict,
    defaults: dict | None = None,
    *,
    overwrite: bool = False,
    resume_with_new_flags: bool = False,
    log=None,
    renamed: dict | None = None,
) -> dict:
    """Claims `output_dir` for a run of `experiment` with flag `values`; returns the run record it wrote.

    Starts a new run, resumes the run with the same defining flags, or raises `RunFolderError` naming
    the flags that differ; `overwrite` and `resume_with_new_flags` are the escapes (module docstring).
    Works on files only (no TensorFlow), so a refusal comes before any slow import or work.
    `renamed` (``{old flag: new flag}``, see `experiments.common.flags.renamed_flag`): a run recorded
    under a flag's old name compares as its new name.
    """
    log = log or (lambda msg: logging.warning("%s", msg))
    defaults = defaults or {}
    if overwrite and resume_with_new_flags:
        raise RunFolderError("--overwrite and --resume_with_new_flags exclude each other: start afresh or continue.")
    defining = {k: v for k, v in sorted(values.items()) if k not in HARMLESS_FLAGS}
    where = f"--output_dir={output_dir}"
    entries = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    record_path = os.path.join(output_dir, RUN_FILE)
    record = None
    if os.path.exists(record_path):
        try:
            with open(record_path) as f:
                record = json.load(f)
            record["segments"][-1]["flags"]  # noqa: B018 (checks the structure)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            if not overwrite:
                raise RunFolderError(
                    f"{where}: its run record {record_path} is unreadable ({e}); pass --overwrite to "
                    "remove the run in it, or choose another --output_dir."
                ) from None
            record = None

    def fresh(preexisting):
        return {
            "experiment": experiment,
            "created": _now(),
            "preexisting": sorted(preexisting),
            "segments": [{"flags": defining, "at_steps": {}, "started": _now()}],
        }

    ours = [n for n in entries if _looks_like_run_output(os.path.join(output_dir, n))]
    if record is None and ours and not overwrite:
        # A run written before run records: its flags.json (the flags of its last invocation) stands in for
        # the record when it lists exactly this binary's defining flags.
        try:
            with open(os.path.join(output_dir, "flags.json")) as f:
                legacy = json.load(f)
        except (OSError, ValueError):
            legacy = None
        legacy = _renamed(legacy, renamed) if isinstance(legacy, dict) else legacy
        if isinstance(legacy, dict) and set(legacy) - HARMLESS_FLAGS == set(values) - HARMLESS_FLAGS:
            record = {
                "experiment": experiment,
                "created": None,
                "preexisting": sorted(set(entries) - set(ours)),
                "segments": [
                    {
                        "flags": {k: v for k, v in sorted(legacy.items()) if k not in HARMLESS_FLAGS},
                        "at_steps": {},
                        "started": None,
                        "from": "flags.json (no run record)",
                    }
                ],
            }
    if record is None:
        if ours:
            if not overwrite:
                raise RunFolderError(
                    f"{where} holds results or checkpoints ({', '.join(ours)}) but no run record ({RUN_FILE}): "
                    "they were written by an older hyperkeras or by hand, with flags nobody can check. Pass "
                    "--overwrite to remove them and start afresh, or choose another --output_dir."
                )
            log(f"--overwrite: removing {', '.join(ours)} from {output_dir} (results without a run record).")
            _remove(output_dir, ours)
        new = fresh(set(entries) - set(ours))
    else:
        preexisting = set(record.get("preexisting", []))
        theirs = [n for n in entries if n not in preexisting]
        content = [n for n in theirs if n not in (RUN_FILE, "flags.json", "logs")]
        steps_now = trained_steps(output_dir)
        old_flags = _renamed(record["segments"][-1]["flags"], renamed)
        diff = _flag_diff(old_flags, defining, defaults)
        other_experiment = record.get("experiment") != experiment
        if overwrite:
            log(
                f"--overwrite: removing the earlier run ({record.get('experiment')}, steps trained: "
                f"{steps_text(steps_now)}) from {output_dir}: {', '.join(theirs)}."
            )
            _remove(output_dir, theirs)
            new = fresh(preexisting)
        elif not diff and not other_experiment:
            new = record
            if steps_now:
                log(f"resuming the run in {output_dir} (steps trained so far: {steps_text(steps_now)}).")
        elif not content:
            log(
                f"the run in {output_dir} never trained or wrote results; starting it afresh with the new "
                f"{'experiment' if other_experiment else 'flags'}."
            )
            _remove(output_dir, theirs)
            new = fresh(preexisting)
        elif other_experiment:
            raise RunFolderError(
                f"{where} holds a run of experiment {record.get('experiment')!r}, not {experiment!r}. Choose another "
                f"--output_dir (the default is runs/{experiment}), or pass --overwrite to remove that run."
            )
        elif not resume_with_new_flags:
            raise RunFolderError(
                f"{where} holds a run with other flags: {_describe(diff)}; steps trained: {steps_text(steps_now)}. "
                "Resume it with its own flags; or pass --overwrite to remove it and start afresh, or "
                "--resume_with_new_flags to continue it with the new flags (reports record both flag sets and "
                "the step of the change); or choose another --output_dir."
            )
        else:
            # Models trained along --steps (not e.g. baselines with their own step flag) never exceed the old
            # value; those beyond the new one would make a report claim fewer steps than they saw.
            old_steps, steps = diff.get("steps", (None, None))
            beyond = {
                k: v
                for k, v in steps_now.items()
                if isinstance(old_steps, int) and isinstance(steps, int) and steps < v <= old_steps
            }
            if beyond:
                raise RunFolderError(
                    f"{where}: --steps={steps} is fewer than the run has already trained ({steps_text(beyond)}); "
                    "training cannot be undone. Use --steps of at least that many, or --overwrite to start afresh."
                )
            log(
                f"--resume_with_new_flags: continuing the run in {output_dir} at steps {steps_text(steps_now)} "
                f"with {_describe(diff)}."
            )
            new = dict(record)
            new["segments"] = [
                *record["segments"],
                {
                    "flags": defining,
                    "at_steps": steps_now,
                    "started": _now(),
                    "changed": {k: list(v) for k, v in diff.items()},
                },
            ]
    from hyperkeras.io import atomic_write_json

    atomic_write_json(record_path, new)
    return new
