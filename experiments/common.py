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
        app.run(main)

Run as ``python -m experiments.<name> --output_dir=...``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

from absl import flags, logging

FLAGS = flags.FLAGS

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def define_flags(dataset: str = "fashion_mnist", steps: int = 1000, batch_size: int = 32, checkpoint_every: int = 500):
    """Defines the flags shared by all experiment binaries, with per-experiment defaults."""
    flags.DEFINE_string("output_dir", "/tmp/hyperkeras", "Where checkpoints, logs, metrics.json, report.md and figures go.")
    flags.DEFINE_string("dataset", dataset, "Dataset name (see hyperkeras.data.DATASETS).")
    flags.DEFINE_string("data_dir", None, "First folder to look for dataset files in.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_integer("steps", steps, "Training steps.", lower_bound=0)
    flags.DEFINE_integer("batch_size", batch_size, "Batch size (global, across replicas).", lower_bound=1)
    flags.DEFINE_integer("checkpoint_every", checkpoint_every, "Checkpoint every this many steps.", lower_bound=1)
    flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
    flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu.")
    flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism (slower).")


@dataclasses.dataclass
class Context:
    output_dir: str
    strategy: object
    seed: int
    steps: int
    batch_size: int
    checkpoint_every: int

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
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}.")


def setup(argv=None) -> Context:
    """Creates the output folder, writes flags.json, seeds everything and builds the strategy."""
    import keras
    import tensorflow as tf

    if argv is not None and len(argv) > 1:
        raise flags.Error(f"unexpected positional arguments: {argv[1:]}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    from hyperkeras.io import atomic_write_json

    values = {
        f.name: f.value
        for module, module_flags in FLAGS.flags_by_module_dict().items()
        if "experiments" in module
        for f in module_flags
        if _jsonable(f.value)
    }
    atomic_write_json(os.path.join(FLAGS.output_dir, "flags.json"), values)
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
    )


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or Inf; the message names the step and the last good checkpoint."""


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
    every `ctx.checkpoint_every` steps; a restarted run resumes from the newest. A NaN/Inf in any
    logged value stops training with `TrainingDivergedError`; the last good checkpoint is kept.
    """
    import keras
    import tensorflow as tf

    from hyperkeras import checkpoints

    steps = ctx.steps if steps is None else steps
    every = max(1, min(ctx.checkpoint_every, steps)) if steps else 1
    ckpt_dir = ctx.path("checkpoints", name)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    if not model.variables:
        raise ValueError(f"{name}: build the model before training it with common.train (it has no variables yet).")
    ckpt = checkpoints.model_checkpoint(model, step=step_var)
    manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoints.restore(ckpt, manager.latest_checkpoint)
        logging.info("resumed from %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))
    start = int(step_var.numpy())
    if start >= steps:
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
                    last = manager.latest_checkpoint or "none (no checkpoint written yet)"
                    raise TrainingDivergedError(
                        f"{name}: {key} became {v} at step {self.step}; training stopped. Last good checkpoint: {last}."
                    )

        def on_epoch_end(self, epoch, logs=None):
            step_var.assign(self.step)
            manager.save(checkpoint_number=self.step)

    tb = keras.callbacks.TensorBoard(ctx.path("logs", name), update_freq=max(1, every // 10), write_graph=False)
    if callable(getattr(model, "sample", None)) and hasattr(model, "target"):
        callbacks = (GeneratedWeightHistograms(ctx.path("logs", name, "weights")), *callbacks)
    verbose = (1 if os.isatty(1) else 2) if verbose is None else verbose
    t0 = time.time()
    history = None
    if whole:
        history = model.fit(
            make_dataset(start),
            epochs=start // every + whole,
            initial_epoch=start // every,
            steps_per_epoch=every,
            callbacks=[_Checkpointer(start), tb, *callbacks],
            verbose=verbose,
        )
    if steps > full:
        history = model.fit(
            make_dataset(full),
            epochs=1,
            steps_per_epoch=steps - full,
            callbacks=[_Checkpointer(full), tb, *callbacks],
            verbose=verbose,
        )
    logging.info("%s: %d steps in %.1f s", name, steps - start, time.time() - t0)
    return history


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


class GeneratedWeightHistograms(_keras_callback_base()):
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
    in it to TensorBoard."""
    import glob

    from hyperkeras.io import atomic_write_json, atomic_write_text

    pngs = sorted(glob.glob(ctx.path("*.png")))
    if pngs:
        log_figures(ctx, pngs)

    atomic_write_json(ctx.path("metrics.json"), metrics)
    atomic_write_text(ctx.path("report.md"), report_markdown)
    logging.info("wrote %s and %s", ctx.path("metrics.json"), ctx.path("report.md"))


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
