"""The flags every experiment binary shares, ``--quick``, renamed flags, and which flags define a run.

`define_flags` defines the shared flags on the calling binary's behalf (its ``--help`` lists them);
`quick_defaults` registers what ``--quick`` sets; `renamed_flag` keeps an old flag name as an error that
names the new one; `flag_values` are the values a run is recorded with (see `experiments.common.runs`).
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

FLAGS = flags.FLAGS

# The flags this module defines belong to the binary that calls `define_flags`: its `--help` lists them
# beside its own (absl's mechanism for modules that define flags on a caller's behalf).
flags.disclaim_key_flags()

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

# Flags that may change between the invocations of one run (see experiments.common.runs).
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
        "reevaluate",  # compare_ensembles: evaluate finished models again; trains nothing
        "quick",  # only sets other flags' values (those are recorded and compared)
        "save_optimizer",  # what the saved .keras files hold, not what is trained
    }
)

experiment_name = None  # the calling binary's name, set by define_flags
QUICK = {}  # the calling binary's --quick values, set by quick_defaults
RENAMED = {}  # {old flag name: new flag name} of the calling binary, set by renamed_flag
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
    global experiment_name
    if experiment is None:
        caller = sys._getframe(1).f_globals
        experiment = os.path.splitext(os.path.basename(caller.get("__file__") or caller.get("__name__", "run")))[0]
    experiment_name = experiment
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
    flags.DEFINE_enum(
        "dtype_policy",
        "float32",
        ["float32", "mixed_bfloat16", "mixed_float16"],
        "Keras dtype policy the run's models are built under. mixed_bfloat16 measured faster on a CPU with "
        "AVX512-BF16/AMX (paper-size steps 0.85-0.92x the float32 time) and 5x slower on one without; "
        "mixed_float16 is for GPUs (README, 'Mixed precision').",
    )
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


def renamed_flag(old: str, new: str, meaning: str = "") -> None:
    """Keeps flag ``--old`` of the calling binary as an error: given on the command line (or in a flagfile)
    it stops the binary with absl's flag error naming ``--new`` (`meaning` may add what the old name meant
    here), so that a command written for the old name never runs with another meaning. The old name is
    not a flag of the run (not in flags.json or run.json); a run recorded with it compares as ``--new``."""
    note = f" ({meaning})" if meaning else ""
    message = f"--{old} was renamed --{new}{note}: pass --{new} instead."
    flags.DEFINE_string(old, None, f"Renamed: use --{new}{note}. Passing --{old} is an error.")
    flags.register_validator(old, lambda value: value is None, message=message)
    RENAMED[old] = new


def quick_defaults(**values):
    """Registers the values ``--quick`` gives the binary's flags (shared or its own), e.g.
    ``common.quick_defaults(steps=50, dataset="digits", eval_networks=20)``; ``--help`` lists them.
    Unless given here or on the command line, ``--checkpoint_every`` is, for each model `train` trains,
    at most a quarter of its steps: an interrupted quick run resumes instead of starting again.

    `setup` applies them to every flag not given on the command line (explicit flags win), before the
    run folder is claimed, so run.json, flags.json and the reports record the values actually used.
    """
    QUICK.update(values)
    if "quick" in FLAGS:
        shown = " ".join(as_flag(k, v) for k, v in sorted(QUICK.items()))
        FLAGS["quick"].help = f"{_QUICK_HELP} Sets: {shown}"


def apply_quick() -> dict:
    """With ``--quick``: gives every flag of `quick_defaults` that the command line did not set its quick
    value, and the run folder ``runs/<experiment>_quick`` (unless --output_dir is given); returns the
    values it set. Without ``--quick``: nothing. `setup` calls it; binaries without `setup` may too."""
    if "quick" not in FLAGS or not FLAGS.quick:
        return {}
    values = dict(QUICK)
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
            "--quick: %s (flags given explicitly kept)", " ".join(as_flag(k, v) for k, v in sorted(applied.items()))
        )
    return applied


def quick_checkpoints() -> bool:
    """Whether `train` checkpoints every quarter of a model's steps: ``--quick`` and ``--checkpoint_every``
    set neither on the command line nor by `quick_defaults`."""
    return (
        "quick" in FLAGS
        and "checkpoint_every" in FLAGS
        and FLAGS.is_parsed()
        and bool(FLAGS.quick)
        and not FLAGS["checkpoint_every"].present
        and "checkpoint_every" not in QUICK
    )


def flag_values() -> dict:
    """The (JSON-able) values of the experiment's flags: the binary's own and those it got from
    `define_flags` and ``hypergan_common.define_flags``; absl's and TensorFlow's flags, and the old names
    of `renamed_flag`, are left out."""
    main = sys.argv[0] if sys.argv else ""
    return {
        f.name: f.value
        for module, module_flags in FLAGS.flags_by_module_dict().items()
        if "experiments" in module or module == main
        for f in module_flags
        if f.name not in RENAMED and _jsonable(f.value)
    }


def _jsonable(v) -> bool:
    import json

    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def as_flag(name, value) -> str:
    """``--name=value`` as a command line spells it (booleans ``--name`` / ``--noname``, lists joined)."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"--{name}={value}"
