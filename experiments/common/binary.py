"""A binary's life: `run` (absl's entry, help exits 0, Ctrl-C names the resume command), `setup` (claims
the run folder, seeds, builds the strategy) and the progress lines of work without a progress bar."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import time

from absl import app, flags, logging

from experiments.common import flags as shared_flags
from experiments.common import runs, training
from experiments.common.flags import STRATEGIES
from experiments.common.runs import RUN_FILE, Context, RunFolderError

FLAGS = flags.FLAGS

RUN_DIR = []  # the output folder of this process's run, set by `setup`


def run(main):
    """Runs `main` as absl's ``app.run`` does, with two differences every binary shares:

    * ``--help`` (``--helpshort``, ``--helpfull``, ``--helpxml``) prints its help and exits 0, not absl's 1.
      ``--help`` lists the binary's own flags and those it gets from `define_flags` (and
      ``hypergan_common.define_flags``): those modules disclaim their flags to the caller; ``--helpfull``
      adds absl's and TensorFlow's.
    * Ctrl-C (KeyboardInterrupt) prints one line instead of a traceback: where the newest checkpoint of
      the model in training is (`train` saves no half checkpoint: Ctrl-C during a save waits for it) and
      the command that resumes the run (this command line, without ``--overwrite``); exit code 130.
      The process ends there without Python's finalisation: everything worth keeping is on disk by then,
      and TensorFlow's threads, stopped mid-step, can crash it (a SIGSEGV instead of 130, seen in CI).
    """

    def main_with_interrupt(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            sys.stderr.write(interrupted_message() + "\n")
            logging.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)

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


def interrupted_message() -> str:
    """The one line a binary prints when Ctrl-C stops it: the newest checkpoint (read from disk: the
    checkpoint that a resumed run restores) and the command that resumes."""
    resume = f"resume with: {resume_command()}"
    if training.TRAINING:
        folder = training.TRAINING[-1]
        step = runs.trained_steps(os.path.dirname(os.path.dirname(folder))).get(os.path.basename(folder))
        if step is None:
            where = f"no checkpoint of {folder} yet (this model restarts from step 0)"
        else:
            where = f"last checkpoint {os.path.join(folder, f'ckpt-{step}')} (step {step})"
    elif RUN_DIR:
        steps = runs.trained_steps(RUN_DIR[-1])
        where = (
            f"checkpoints in {RUN_DIR[-1]}/checkpoints kept (steps trained: {runs.steps_text(steps)})"
            if steps
            else f"nothing trained yet in {RUN_DIR[-1]}"
        )
    else:
        where = "before any training"
    return f"Interrupted (Ctrl-C): {where}; {resume}"


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
        from experiments.common import compat

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        compat.fix_keras_multi_worker()
        return strategy
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}.")


def setup(argv=None) -> Context:
    """Claims the run folder (see the module docstring), writes flags.json, seeds everything, sets the Keras
    dtype policy (``--dtype_policy``) and builds the strategy. A refused run folder ends the program with a
    message naming the differing flags."""
    if argv is not None and len(argv) > 1:
        raise flags.Error(f"unexpected positional arguments: {argv[1:]}")
    shared_flags.apply_quick()
    values = shared_flags.flag_values()
    defaults = {name: FLAGS[name].default for name in values}
    experiment = shared_flags.experiment_name or os.path.splitext(os.path.basename(sys.argv[0]))[0]
    try:
        record = runs.prepare_run(
            FLAGS.output_dir,
            experiment,
            values,
            defaults,
            overwrite=FLAGS.overwrite,
            resume_with_new_flags=FLAGS.resume_with_new_flags,
            renamed=dict(shared_flags.RENAMED),
        )
    except RunFolderError as e:
        sys.exit(f"error: {e}")

    import keras
    import tensorflow as tf

    from hyperkeras.io import atomic_write_json

    atomic_write_json(os.path.join(FLAGS.output_dir, "flags.json"), values)
    RUN_DIR.append(FLAGS.output_dir)
    keras.utils.set_random_seed(FLAGS.seed)
    keras.mixed_precision.set_global_policy(FLAGS.dtype_policy)
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
