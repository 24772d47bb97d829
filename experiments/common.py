"""What every experiment binary shares: flags, output folder, strategy, checkpointed training, reports.

An experiment module does::

    from absl import app, flags
    from experiments import common

    common.define_flags(dataset="fashion_mnist", steps=2000, batch_size=32)
    flags.DEFINE_float("lam", 1e3, "...")          # its own flags

    def main(argv):
        ctx = common.setup(argv)                   # output dir, flags.json, seeds, strategy
        with ctx.strategy.scope():
            model = ...; model.compile(...)
        common.train(model, make_dataset, ctx)     # resumable, NaN-guarded, TensorBoard
        common.write_results(ctx, metrics, report_markdown)

    if __name__ == "__main__":
        common.run(main)                           # not app.run: --help exits 0, Ctrl-C says how to resume

Run as ``python -m experiments.<name>``; results go to ``runs/<name>`` unless ``--output_dir`` says otherwise.

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
``eval_batch_size``, ``eval_batch``, ``eval_chunk``. ``--steps`` defines the run: extending a finished
run to more steps is a change of flags (``--resume_with_new_flags``), because learning-rate schedules and
some reports depend on it. Evaluation-only flags other than the batch sizes (sample counts, subsets) are
treated as defining (refusing is never a lie); change them on a finished run with
``--resume_with_new_flags``, which trains nothing more and records the change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS

# The flags this module defines belong to the binary that calls `define_flags`: its `--help` lists them
# beside its own (absl's mechanism for modules that define flags on a caller's behalf).
flags.disclaim_key_flags()

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

RUN_FILE = "run.json"

# Flags that may change between the invocations of one run (see the module docstring).
HARMLESS_FLAGS = frozenset(
    {
        "output_dir",
        "overwrite",
        "resume_with_new_flags",  # where the run lives, how to treat an earlier one
        "checkpoint_every",  # how often state is saved; the trained weights do not depend on it
        "data_dir",  # where the same dataset's files are found
        "strategy",
        "tpu",  # which devices run the same global batch
        "deterministic",  # op determinism: bitwise reproducibility, not what is trained
        "eval_batch_size",
        "eval_batch",
        "eval_chunk",  # memory and speed of evaluation
        "quick",  # only sets other flags' values (those are recorded and compared)
        "save_optimizer",  # what the saved .keras files hold, not what is trained
    }
)

_EXPERIMENT = None  # the calling binary's name, set by define_flags
_QUICK = {}  # the calling binary's --quick values, set by quick_defaults
_QUICK_HELP = (
    "A quick try: small data, few steps, networks and evaluations, so that the binary finishes in "
    "under a minute on two CPU cores with small but meaningful results; the run folder defaults to "
    "runs/<experiment>_quick, and each model is checkpointed every quarter of its steps unless "
    "--checkpoint_every is given (an interrupted quick run resumes). Flags given explicitly win over these values."
)


def define_flags(
    dataset: str = "fashion_mnist",
    steps: int = 1000,
    batch_size: int = 32,
    checkpoint_every: int = 500,
    experiment: str | None = None,
):
    """Defines the flags shared by all experiment binaries, with per-experiment defaults.

    `experiment` (default: the calling module's file name, e.g. ``deutsch_toy``) names the run's default
    folder, ``runs/<experiment>``.
    """
    global _EXPERIMENT
    if experiment is None:
        caller = sys._getframe(1).f_globals
        experiment = os.path.splitext(os.path.basename(caller.get("__file__") or caller.get("__name__", "run")))[0]
    _EXPERIMENT = experiment
    flags.DEFINE_string(
        "output_dir",
        os.path.join("runs", experiment),
        "Run folder: checkpoints, logs, flags, metrics.json, report.md and figures (relative paths "
        "from the working directory). Holds one run: see --overwrite, --resume_with_new_flags.",
    )
    flags.DEFINE_string("dataset", dataset, "Dataset name (see hyperkeras.data.DATASETS).")
    flags.DEFINE_string(
        "data_dir",
        None,
        "Folder of the dataset's files (IDX files, cifar-10-batches-py), directly or "
        "in a <dataset> subfolder; when given, the only place looked at (an error if they are not there).",
    )
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_integer("steps", steps, "Training steps.", lower_bound=0)
    flags.DEFINE_integer("batch_size", batch_size, "Batch size (global, across replicas).", lower_bound=1)
    flags.DEFINE_integer("checkpoint_every", checkpoint_every, "Checkpoint every this many steps.", lower_bound=1)
    flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
    flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu.")
    flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism (slower).")
    flags.DEFINE_bool(
        "overwrite",
        False,
        "If --output_dir holds another run (other flags or experiment), remove its files and start afresh.",
    )
    flags.DEFINE_bool(
        "resume_with_new_flags",
        False,
        "If --output_dir holds this experiment's run with other flags, continue it with the new flags; "
        "the reports record both flag sets and the step of the change.",
    )
    flags.DEFINE_bool("quick", False, _QUICK_HELP)
    flags.DEFINE_bool(
        "save_optimizer",
        False,
        "Also store the optimizers' state (moments, step counter) in the saved .keras models, to "
        "continue training from them; off: the files hold the model only (checkpoints/ keep it all).",
    )


def quick_defaults(**values):
    """Registers the values ``--quick`` gives the binary's flags (shared or its own), e.g.
    ``common.quick_defaults(steps=50, dataset="digits", eval_networks=20)``; ``--help`` lists them.
    Unless given here or on the command line, ``--checkpoint_every`` is, for each model `train` trains,
    at most a quarter of its steps: an interrupted quick run resumes instead of starting again.

    `setup` applies them to every flag not given on the command line (explicit flags win), before the
    run folder is claimed, so run.json, flags.json and the reports record the values actually used.
    """
    _QUICK.update(values)
    if "quick" in FLAGS:
        shown = " ".join(_as_flag(k, v) for k, v in sorted(_QUICK.items()))
        FLAGS["quick"].help = f"{_QUICK_HELP} Sets: {shown}"


def apply_quick() -> dict:
    """With ``--quick``: gives every flag of `quick_defaults` that the command line did not set its quick
    value, and the run folder ``runs/<experiment>_quick`` (unless --output_dir is given); returns the
    values it set. Without ``--quick``: nothing. `setup` calls it; binaries without `setup` may too."""
    if "quick" not in FLAGS or not FLAGS.quick:
        return {}
    values = dict(_QUICK)
    out = FLAGS["output_dir"] if "output_dir" in FLAGS else None
    if out is not None and "output_dir" not in values and out.default and out.value == out.default:
        values["output_dir"] = out.default.rstrip("/") + "_quick"
    applied = {}
    for name, value in values.items():
        if name not in FLAGS:
            raise ValueError(f"quick_defaults: the binary has no flag --{name}.")
        if not FLAGS[name].present:
            FLAGS[name].value = value
            applied[name] = value
    if applied:
        logging.info(
            "--quick: %s (flags given explicitly kept)", " ".join(_as_flag(k, v) for k, v in sorted(applied.items()))
        )
    return applied


def run(main):
    """Runs `main` as absl's ``app.run`` does, with two differences every binary shares:

    * ``--help`` (``--helpshort``, ``--helpfull``, ``--helpxml``) prints its help and exits 0, not absl's 1.
      ``--help`` lists the binary's own flags and those it gets from `define_flags` (and
      ``hypergan_common.define_flags``): those modules disclaim their flags to the caller; ``--helpfull``
      adds absl's and TensorFlow's.
    * Ctrl-C (KeyboardInterrupt) prints one line instead of a traceback: where the newest checkpoint of
      the model in training is (`train` saves no half checkpoint: Ctrl-C during a save waits for it) and
      the command that resumes the run (this command line, without ``--overwrite``); exit code 130.
    """

    def main_with_interrupt(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            sys.stderr.write(interrupted_message() + "\n")
            sys.stderr.flush()
            sys.exit(130)

    app.run(main_with_interrupt, flags_parser=_parse_flags)


def _parse_flags(argv):
    """absl's ``parse_flags_with_usage``, except that a help flag (the only flags that end the program
    while the command line is parsed, with code 1) exits 0."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        message = str(error)
        message = "\n" + "\n".join("  " + line for line in message.splitlines()) if "\n" in message else " " + message
        sys.stderr.write(f"FATAL Flags parsing error:{message}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    except SystemExit as e:
        sys.stdout.flush()
        sys.exit(0 if e.code == 1 else e.code)


def resume_command() -> str:
    """The command line of this process (interpreter, its options, ``-m experiments.<name>``, flags),
    without ``--overwrite``: running it again resumes the run instead of removing it."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    overwrite = re.compile(r"^--?(no)?overwrite(=.*)?$")
    return shlex.join(a for a in argv if not overwrite.match(a))


_TRAINING = []  # checkpoint folders of the `train` calls in progress (innermost last)
_RUN_DIR = []  # the output folder of this process's run, set by `setup`


def interrupted_message() -> str:
    """The one line a binary prints when Ctrl-C stops it: the newest checkpoint (read from disk: the
    checkpoint that a resumed run restores) and the command that resumes."""
    resume = f"resume with: {resume_command()}"
    if _TRAINING:
        folder = _TRAINING[-1]
        step = trained_steps(os.path.dirname(os.path.dirname(folder))).get(os.path.basename(folder))
        if step is None:
            where = f"no checkpoint of {folder} yet (this model restarts from step 0)"
        else:
            where = f"last checkpoint {os.path.join(folder, f'ckpt-{step}')} (step {step})"
    elif _RUN_DIR:
        steps = trained_steps(_RUN_DIR[-1])
        where = (
            f"checkpoints in {_RUN_DIR[-1]}/checkpoints kept (steps trained: {_steps_text(steps)})"
            if steps
            else f"nothing trained yet in {_RUN_DIR[-1]}"
        )
    else:
        where = "before any training"
    return f"Interrupted (Ctrl-C): {where}; {resume}"


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C during the block takes effect when it ends (a checkpoint and its record are written whole).
    Only in the main thread with Python's default SIGINT handler; elsewhere the block runs as is."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    pending = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def verbose() -> int:
    """Keras verbosity for evaluations and baselines: a progress bar on a terminal; elsewhere (logs, CI)
    0, with `stage`'s absl lines saying what runs and how long it took."""
    return 1 if sys.stdout.isatty() else 0


@contextlib.contextmanager
def stage(what: str, *args):
    """Logs ``what`` (absl %-formatting with `args`) when it starts and, with its wall time, when it ends:
    the progress of evaluations and baselines that run without a progress bar."""
    text = what % args if args else what
    logging.info("%s ...", text)
    t0 = time.time()
    yield
    logging.info("%s: done in %.1f s", text, time.time() - t0)


@dataclasses.dataclass
class Context:
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


def get_strategy(name: str, tpu: str | None = None):
    """Returns the tf.distribute strategy called `name` (one of `STRATEGIES`)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable (see README).")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _fix_keras_multi_worker()
        return strategy
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}.")


def _fix_keras_multi_worker():
    """Works around two bugs of Keras 3 (3.15; unchanged in 3.16) that make every `fit` and `evaluate` fail
    under MultiWorkerMirroredStrategy with several workers (keras-team/keras#20585): `_maybe_symbolic_build`
    all-reduces the whole first batch just to read its shapes (and cannot reduce a tuple), and the step's
    logs are averaged with ``strategy.reduce("MEAN", v, axis=0)``, which fails for scalars. Here the shapes
    come from the dataset's element spec (no extra iterator: one would advance a ``shuffle``'s
    reshuffle-each-iteration seed, so training would see another data order than on one worker), and logs
    are averaged over replicas (``axis=None``), as Keras does for one worker. Training itself (gradients,
    updates) is Keras's own. Idempotent."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_hyperkeras_multi_worker_fix", False):
        return
    build, reduce_per_replica = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec  # shapes and dtypes suffice
        return build(self, data_batch=data_batch)

    def reduce(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce
    trainer._hyperkeras_multi_worker_fix = True


def setup(argv=None) -> Context:
    """Claims the run folder (see the module docstring), writes flags.json, seeds everything and builds the
    strategy. A refused run folder ends the program with a message naming the differing flags."""
    if argv is not None and len(argv) > 1:
        raise flags.Error(f"unexpected positional arguments: {argv[1:]}")
    apply_quick()
    values = flag_values()
    defaults = {name: FLAGS[name].default for name in values}
    experiment = _EXPERIMENT or os.path.splitext(os.path.basename(sys.argv[0]))[0]
    try:
        record = prepare_run(
            FLAGS.output_dir,
            experiment,
            values,
            defaults,
            overwrite=FLAGS.overwrite,
            resume_with_new_flags=FLAGS.resume_with_new_flags,
        )
    except RunFolderError as e:
        sys.exit(f"error: {e}")

    import keras
    import tensorflow as tf

    from hyperkeras.io import atomic_write_json

    atomic_write_json(os.path.join(FLAGS.output_dir, "flags.json"), values)
    _RUN_DIR.append(FLAGS.output_dir)
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    return Context(
        output_dir=FLAGS.output_dir,
        strategy=get_strategy(FLAGS.strategy, FLAGS.tpu),
        seed=FLAGS.seed,
        steps=FLAGS.steps,
        batch_size=FLAGS.batch_size,
        checkpoint_every=FLAGS.checkpoint_every,
        experiment=experiment,
        run=record,
        run_file=os.path.join(FLAGS.output_dir, RUN_FILE),
    )


def flag_values() -> dict:
    """The (JSON-able) values of the experiment's flags: the binary's own and those it got from
    `define_flags` and ``hypergan_common.define_flags``; absl's and TensorFlow's flags are left out."""
    main = sys.argv[0] if sys.argv else ""
    return {
        f.name: f.value
        for module, module_flags in FLAGS.flags_by_module_dict().items()
        if "experiments" in module or module == main
        for f in module_flags
        if _jsonable(f.value)
    }


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


# ------------------------------------------------------------------------------------------- run folders
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


def _steps_text(steps: dict) -> str:
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
) -> dict:
    """Claims `output_dir` for a run of `experiment` with flag `values`; returns the run record it wrote.

    Starts a new run, resumes the run with the same defining flags, or raises `RunFolderError` naming
    the flags that differ; `overwrite` and `resume_with_new_flags` are the escapes (module docstring).
    Works on files only (no TensorFlow), so a refusal comes before any slow import or work.
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
        old_flags = record["segments"][-1]["flags"]
        diff = _flag_diff(old_flags, defining, defaults)
        other_experiment = record.get("experiment") != experiment
        if overwrite:
            log(
                f"--overwrite: removing the earlier run ({record.get('experiment')}, steps trained: "
                f"{_steps_text(steps_now)}) from {output_dir}: {', '.join(theirs)}."
            )
            _remove(output_dir, theirs)
            new = fresh(preexisting)
        elif not diff and not other_experiment:
            new = record
            if steps_now:
                log(f"resuming the run in {output_dir} (steps trained so far: {_steps_text(steps_now)}).")
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
                f"{where} holds a run with other flags: {_describe(diff)}; steps trained: {_steps_text(steps_now)}. "
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
                    f"{where}: --steps={steps} is fewer than the run has already trained ({_steps_text(beyond)}); "
                    "training cannot be undone. Use --steps of at least that many, or --overwrite to start afresh."
                )
            log(
                f"--resume_with_new_flags: continuing the run in {output_dir} at steps {_steps_text(steps_now)} "
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


def _quietly(fn, *args, **kwargs):
    """Calls `fn` with absl's INFO lines off (TF's checkpoint writer logs one per save)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(min(verbosity, logging.WARNING))
    try:
        return fn(*args, **kwargs)
    finally:
        logging.set_verbosity(verbosity)


def array_stream(x, y, batch_size: int, seed: int, shuffle_buffer: int | None = None):
    """``start_step -> tf.data.Dataset``: the arrays shuffled (seeded), repeated, cut into batches of
    `batch_size` (partial batches dropped) and positioned at batch `start_step`, so that a resumed run sees
    exactly the batches an uninterrupted one would (the `make_dataset` argument of `train`).
    `shuffle_buffer` defaults to the whole array."""
    import tensorflow as tf

    buffer = len(y) if shuffle_buffer is None else min(len(y), int(shuffle_buffer))

    def make(start_step):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(buffer, seed=seed).repeat()
        return ds.batch(batch_size, drop_remainder=True).skip(start_step).prefetch(tf.data.AUTOTUNE)

    return make


def train(model, make_dataset, ctx: Context, steps: int | None = None, name: str = "train", callbacks=(), verbose=None):
    """Trains `model` with `fit` for `steps` steps, resumably.

    Args:
        model: a compiled keras.Model (built in `ctx.strategy.scope()`).
        make_dataset: ``start_step -> tf.data.Dataset``, an infinite stream of batches positioned at
            `start_step` (so a resumed run sees exactly the batches an uninterrupted one would).
        ctx: from `setup`.
        steps: total steps (default `ctx.steps`).
        name: sub-folder of the checkpoints and TensorBoard logs (several models in one experiment).

    Checkpoints (model and optimizer variables, step counter) go to ``<output_dir>/checkpoints/<name>``
    every `ctx.checkpoint_every` steps (``--quick`` without a ``--checkpoint_every``: at most every quarter
    of `steps`); a restarted run resumes from the newest. Ctrl-C during a save
    takes effect once the checkpoint and its record are written (`run` then names the checkpoint). The
    training wall time, summed over the run's sessions (up to the newest checkpoint: steps trained again
    after an interruption count once), is kept in the run record (run.json, ``train_seconds``), set in
    ``ctx.train_seconds[name]`` and stated by every report (`run_summary`). A NaN/Inf in any
    logged value stops training with `hyperkeras.models.TrainingDivergedError`; the last good checkpoint is kept. A
    checkpoint beyond `steps` (a model trained longer than asked) raises `RunFolderError`: the report would
    understate its training.

    Why not `keras.callbacks.BackupAndRestore` / `TerminateOnNaN` (Keras 3.15): BackupAndRestore keeps one
    ``.weights.h5`` plus a separate epoch file, written one after the other and not atomically (a kill
    between the two resumes the wrong epoch with advanced weights: no longer bit-exact), restores only
    the epoch counter of one `fit` call (not the position of the data stream, nor across the two `fit`
    calls below), and by default deletes its backup when training ends (a finished run would train again).
    `tf.train.CheckpointManager` writes each checkpoint atomically (index last) and keeps the step with
    the variables. TerminateOnNaN watches only ``loss`` (not e.g. HyperGAN's ``d_loss``) and names the
    batch within the epoch, not the step or the last good checkpoint.
    """
    import keras
    import tensorflow as tf

    from hyperkeras import checkpoints

    steps = ctx.steps if steps is None else steps
    every = max(1, min(ctx.checkpoint_every, steps)) if steps else 1
    if _quick_checkpoints() and steps // 4 < every:  # a few checkpoints: an interrupted quick run resumes
        every = max(1, steps // 4)
        logging.info("%s: --quick: a checkpoint every %d of its %d steps", name, every, steps)
    ckpt_dir = ctx.path("checkpoints", name)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    if not model.variables:
        raise ValueError(f"{name}: build the model before training it with common.train (it has no variables yet).")
    with ctx.strategy.scope():  # builds the optimizers' slots where the model's variables live
        ckpt = checkpoints.model_checkpoint(model, step=step_var)
    manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        # Learning rates are optimizer variables, so a checkpoint restores the old ones; in a run continued
        # with --resume_with_new_flags they must follow the new flags (schedules are not variables).
        rates = [
            (opt._learning_rate, opt._learning_rate.numpy())
            for opt in checkpoints.optimizers_of(model)
            if isinstance(getattr(opt, "_learning_rate", None), keras.Variable)
        ]
        checkpoints.restore(ckpt, manager.latest_checkpoint)
        logging.info("resumed from %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))
        if len((ctx.run or {}).get("segments", ())) > 1:
            for variable, value in rates:
                variable.assign(value)
    start = int(step_var.numpy())
    if start > steps:
        raise RunFolderError(
            f"{ckpt_dir} holds {start} trained steps, more than the {steps} asked for; training cannot be undone. "
            "Ask for at least as many steps, or start afresh (--overwrite)."
        )
    earlier = _earlier_train_seconds(ctx, name, start)
    ctx.train_seconds[_model_key(ctx, name)] = earlier
    if start == steps:
        return None
    # From `start`: whole epochs of `every` steps (one checkpoint each), then one shorter epoch for the rest.
    whole = (steps - start) // every
    full = start + whole * every

    class _Checkpointer(keras.callbacks.Callback):
        """Counts steps, saves a checkpoint at every epoch end, stops on NaN/Inf."""

        def __init__(self, first_step):
            super().__init__()
            self.step = first_step

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            for key, value in (logs or {}).items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    continue
                if not math.isfinite(v):
                    from hyperkeras.models import TrainingDivergedError

                    last = manager.latest_checkpoint or "none (no checkpoint written yet)"
                    raise TrainingDivergedError(
                        f"{name}: {key} became {v} at step {self.step}; training stopped. Last good checkpoint: {last}."
                    )

        def on_epoch_end(self, epoch, logs=None):
            with _interrupts_deferred():  # the checkpoint and its record, whole
                step_var.assign(self.step)
                _quietly(manager.save, checkpoint_number=self.step)
                _record_train_seconds(ctx, name, self.step, earlier + time.time() - t0)

    tb = keras.callbacks.TensorBoard(ctx.path("logs", name), update_freq=max(1, every // 10), write_graph=False)
    if callable(getattr(model, "sample", None)) and hasattr(model, "target"):
        callbacks = (_generated_weight_histograms_class()(ctx.path("logs", name, "weights")), *callbacks)
    verbose = (1 if os.isatty(1) else 2) if verbose is None else verbose
    t0 = time.time()
    history = None
    _TRAINING.append(ckpt_dir)
    try:
        history = _fit(model, make_dataset, start, steps, every, whole, full, _Checkpointer, tb, callbacks, verbose)
    except KeyboardInterrupt:
        raise  # ckpt_dir stays on _TRAINING: `run`'s message names its newest checkpoint
    except BaseException:
        _TRAINING.pop()
        raise
    _TRAINING.pop()
    session = time.time() - t0
    _record_train_seconds(ctx, name, int(step_var.numpy()), earlier + session)  # up to the end of `fit`
    logging.info(
        "%s: %d steps in %.1f s (%.1f s over the run's sessions)", name, steps - start, session, earlier + session
    )
    return history


def _fit(model, make_dataset, start, steps, every, whole, full, checkpointer, tb, callbacks, verbose):
    """`train`'s `fit` calls: whole epochs of `every` steps from `start`, then one shorter for the rest."""
    history = None
    if whole:
        history = model.fit(
            make_dataset(start),
            epochs=start // every + whole,
            initial_epoch=start // every,
            steps_per_epoch=every,
            callbacks=[checkpointer(start), tb, *callbacks],
            verbose=verbose,
            shuffle=False,  # the stream is shuffled already (and positioned for resuming)
        )
    if steps > full:
        history = model.fit(
            make_dataset(full),
            epochs=1,
            steps_per_epoch=steps - full,
            callbacks=[checkpointer(full), tb, *callbacks],
            verbose=verbose,
            shuffle=False,
        )
    return history


def _quick_checkpoints() -> bool:
    """Whether `train` checkpoints every quarter of a model's steps: ``--quick`` and ``--checkpoint_every``
    set neither on the command line nor by `quick_defaults`."""
    return (
        "quick" in FLAGS
        and "checkpoint_every" in FLAGS
        and FLAGS.is_parsed()
        and bool(FLAGS.quick)
        and not FLAGS["checkpoint_every"].present
        and "checkpoint_every" not in _QUICK
    )


def _model_key(ctx: Context, name: str) -> str:
    """Model `name`'s key in the run record: its name, prefixed by its sub-folder of the run folder if any
    (as in `trained_steps`, e.g. ``in_classes/generator``)."""
    if not ctx.run_file:
        return name
    rel = os.path.relpath(ctx.output_dir, os.path.dirname(ctx.run_file))
    return name if rel == "." else f"{rel}/{name}"


def _earlier_train_seconds(ctx: Context, name: str, start: int) -> float:
    """The training time of model `name` recorded by earlier sessions up to its checkpoint at `start`."""
    if not start:
        return 0.0
    entry = ((ctx.run or {}).get("train_seconds") or {}).get(_model_key(ctx, name))
    if not entry or not entry.get("steps"):
        logging.warning(
            "%s: the run record has no training time for the %d steps of its checkpoint (a run from "
            "before hyperkeras recorded it); the reported training time counts this session only.",
            name,
            start,
        )
        return 0.0
    seconds = float(entry["seconds"])
    if entry["steps"] != start:  # only if a process died between a checkpoint and its record
        logging.warning(
            "%s: training time recorded for step %d, the checkpoint is at step %d; scaled to it.",
            name,
            entry["steps"],
            start,
        )
        seconds *= start / entry["steps"]
    return seconds


def _record_train_seconds(ctx: Context, name: str, step: int, seconds: float) -> None:
    """Stores model `name`'s training time up to its checkpoint at `step` in the run record (run.json)."""
    from hyperkeras.io import atomic_write_json

    key = _model_key(ctx, name)
    ctx.train_seconds[key] = seconds
    if ctx.run is None or not ctx.run_file:
        return
    ctx.run.setdefault("train_seconds", {})[key] = {"steps": int(step), "seconds": round(float(seconds), 3)}
    atomic_write_json(ctx.run_file, ctx.run)


def train_classifier(
    model, x, y, ctx: Context, *, seed: int, steps: int, name: str, learning_rate: float, batch_size: int | None = None
):
    """Compiles a plain Keras classifier (Adam, sparse cross-entropy on its logits or probabilities) and
    trains it resumably with `train` on the arrays, shuffled with `seed`: the baselines' one recipe."""
    import keras

    from hyperkeras import ensembles

    from_logits = ensembles.output_kind(model) == "logits"
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
    )
    train(model, array_stream(x, y, batch_size or ctx.batch_size, seed), ctx, steps=steps, name=name, verbose=0)
    return model


def _generated_weight_histograms_class():
    """Builds `GeneratedWeightHistograms` on first use: importing this module must not import Keras (so
    that ``--help`` and a refused run folder answer at once)."""
    cls = globals().get("_GeneratedWeightHistograms")
    if cls is not None:
        return cls
    import keras

    class GeneratedWeightHistograms(keras.callbacks.Callback):
        """TensorBoard histograms of generated weights, per target layer, at the end of every epoch.

        Works for any model with ``.target`` and ``.sample(n, seed)`` (EntropyHypernetwork, HyperGAN).
        """

        def __init__(self, logdir: str, num_networks: int = 32):
            super().__init__()
            self.logdir = logdir
            self.num_networks = num_networks
            self._writer = None

        def on_epoch_end(self, epoch, logs=None):
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.logdir)
            params = self.model.sample(self.num_networks, 0)
            step = int(self.model.optimizer.iterations.numpy()) if getattr(self.model, "optimizer", None) else epoch
            with self._writer.as_default():
                for name, value in params.items():
                    tf.summary.histogram(f"generated/{name}", value, step=step)
            self._writer.flush()

    GeneratedWeightHistograms.__module__ = __name__
    globals()["_GeneratedWeightHistograms"] = GeneratedWeightHistograms
    return GeneratedWeightHistograms


def __getattr__(name):  # PEP 562: ``common.GeneratedWeightHistograms`` imports Keras only when used
    if name == "GeneratedWeightHistograms":
        return _generated_weight_histograms_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_model(model, path: str, include_optimizer: bool | None = None) -> str:
    """Saves `model` as a ``.keras`` file; its optimizers' state (moments, step counter) only with
    `include_optimizer` (default: the ``--save_optimizer`` flag, off). The compile configuration is always
    kept, so a loaded model is compiled with fresh optimizers. Returns `path`.

    Keras 3's ``model.save`` has no such switch; the optimizers' ``save_own_variables`` is silenced for the
    duration of the save (their groups in the file stay empty). Load such files with `load_model`.
    """
    if include_optimizer is None:
        include_optimizer = bool(FLAGS.save_optimizer) if "save_optimizer" in FLAGS else False
    if include_optimizer:
        model.save(path)
        return path
    import keras

    from hyperkeras import checkpoints

    optimizers = checkpoints.optimizers_of(model)
    for layer in model._flatten_layers(include_self=False):  # e.g. a HyperGAN's latent discriminator
        optimizers += [o for o in checkpoints.optimizers_of(layer) if all(o is not f for f in optimizers)]
    patched = [o for o in optimizers if isinstance(o, keras.optimizers.Optimizer)]
    for opt in patched:
        opt.save_own_variables = _save_nothing
    try:
        model.save(path)
    finally:
        for opt in patched:
            del opt.save_own_variables
    return path


def _save_nothing(store):
    """`save_model`'s stand-in for an optimizer's ``save_own_variables``."""


def load_model(path: str, **kwargs):
    """``keras.models.load_model`` without the warning Keras gives for a file saved by `save_model` without
    optimizer state (the loaded model's optimizers start afresh)."""
    import warnings

    import keras

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.models.load_model(path, **kwargs)


def log_figures(ctx: Context, png_paths, step: int = 0, name: str = "figures"):
    """Adds PNG figures to TensorBoard (Images tab) under ``<output_dir>/logs/<name>``."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(ctx.path("logs", name))
    with writer.as_default():
        for path in png_paths:
            image = tf.image.decode_png(tf.io.read_file(path), channels=4)
            tf.summary.image(os.path.splitext(os.path.basename(path))[0], image[None], step=step)
    writer.flush()


def write_results(ctx: Context, metrics: dict, report_markdown: str):
    """Writes metrics.json and report.md atomically into the output folder, and adds every PNG figure
    in it to TensorBoard.

    Both state the run: metrics.json gets a ``run`` entry (`run_summary`) and report.md ends with a "Run"
    section: the steps each model was actually trained for and the flags it was trained with.
    """
    import glob

    from hyperkeras.io import atomic_write_json, atomic_write_text

    pngs = sorted(glob.glob(ctx.path("*.png")))
    if pngs:
        log_figures(ctx, pngs)

    run = run_summary(ctx)
    metrics = {**metrics, "run": run} if "run" not in metrics else {**metrics, "run_record": run}
    atomic_write_json(ctx.path("metrics.json"), metrics)
    atomic_write_text(ctx.path("report.md"), report_markdown.rstrip("\n") + "\n\n" + run_markdown(run))
    logging.info("wrote %s and %s", ctx.path("metrics.json"), ctx.path("report.md"))


def run_summary(ctx: Context) -> dict:
    """What a report must state about its run: steps actually trained (per model, from its newest
    checkpoint), the training time of each model (s, summed over the run's sessions), the defining flags
    it was trained with, every change of them and the step it came at."""
    segments = (ctx.run or {}).get("segments") or []
    out = {
        "experiment": ctx.experiment,
        "output_dir": ctx.output_dir,
        "steps_trained": trained_steps(ctx.output_dir),
        "flags": segments[-1]["flags"] if segments else None,
    }
    if flags.FLAGS.is_parsed():
        out["other_flags"] = {k: v for k, v in flag_values().items() if k in HARMLESS_FLAGS}
    seconds = {
        **((ctx.run or {}).get("train_seconds") or {}),
        **{k: {"seconds": v} for k, v in ctx.train_seconds.items()},
    }
    if seconds:
        out["train_seconds"] = {k: round(float(v["seconds"]), 1) for k, v in sorted(seconds.items())}
    if len(segments) > 1:
        out["flag_changes"] = [{"at_steps": seg["at_steps"], "changed": seg["changed"]} for seg in segments[1:]]
        out["initial_flags"] = segments[0]["flags"]
    return out


def _as_flag(name, value) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"--{name}={value}"


def _non_default(values: dict) -> str:
    out = []
    for name, value in sorted(values.items()):
        try:
            default = FLAGS[name].default
        except (KeyError, AttributeError):
            default = object()
        if value != default:
            out.append(_as_flag(name, value))
    return " ".join(out)


def run_markdown(run: dict) -> str:
    """The "Run" section of a report (from `run_summary`)."""
    steps = run["steps_trained"]
    lines = ["## Run", ""]
    if run.get("experiment"):
        lines.append(f"- Experiment `{run['experiment']}`, run folder `{run['output_dir']}`.")
    lines.append(
        "- Steps actually trained (newest checkpoint of each model): "
        + (
            ", ".join(f"{k}: **{v}**" for k, v in sorted(steps.items()))
            if steps
            else "none in this run folder (nothing trained here, or models loaded from elsewhere)"
        )
        + "."
    )
    if run.get("train_seconds"):
        lines.append(
            "- Training time, summed over the run's sessions: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(run["train_seconds"].items()))
            + "."
        )
    if run.get("flags") is not None:
        shown = _non_default(run["flags"])
        lines.append(
            "- Trained with "
            + (f"`{shown}`" if shown else "the defaults")
            + " (defining flags not at their defaults; every value is in metrics.json under `run`)."
        )
    for change in run.get("flag_changes", []):
        at = ", ".join(f"{k} {v}" for k, v in sorted(change["at_steps"].items())) or "the start"
        what = "; ".join(f"`--{k}` {a!r} → {b!r}" for k, (a, b) in sorted(change["changed"].items()))
        lines.append(f"- Flags changed (--resume_with_new_flags) after steps {at}: {what}.")
    if run.get("flag_changes"):
        first = _non_default(run["initial_flags"])
        lines.append(
            "- Before the first change the run used " + (f"`{first}`" if first else "the defaults") + ". "
            "Models finished before a change (e.g. saved baselines) were reused, not retrained."
        )
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".4f") -> str:
    """A GitHub markdown table from a list of dicts."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def fmt(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
