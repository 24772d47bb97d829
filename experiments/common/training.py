"""Resumable training: `train` fits a model in checkpointed steps (NaN-guarded, TensorBoard, training time
kept in the run record), `array_stream` is the positioned data stream it resumes, and
`GeneratedWeightHistograms` shows generated weights in TensorBoard."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time

from absl import logging

from experiments.common import flags as shared_flags
from experiments.common.runs import Context, RunFolderError

TRAINING = []  # checkpoint folders of the `train` calls in progress (innermost last)


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
    if shared_flags.quick_checkpoints() and steps // 4 < every:  # a few checkpoints: an interrupted quick run resumes
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
    TRAINING.append(ckpt_dir)
    try:
        history = _fit(model, make_dataset, start, steps, every, whole, full, _Checkpointer, tb, callbacks, verbose)
    except KeyboardInterrupt:
        # ckpt_dir stays on TRAINING: `run`'s message names its newest checkpoint. The TensorBoard callback's
        # writer is still the default one (its on_train_end did not run): flush the session's last curves.
        import tensorflow as tf

        tf.summary.flush()
        raise
    except BaseException:
        TRAINING.pop()
        raise
    TRAINING.pop()
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
