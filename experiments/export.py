"""Turns a trained model (a `.keras` file, optionally updated from a training checkpoint) into a SavedModel.

    # a weight generator (EntropyHypernetwork, HyperGAN): sample_weights + predict endpoints
    python -m experiments.export --model=runs/demo/hypernetwork.keras --export_dir=runs/demo/served
    # the newest checkpoint of a run, with the architecture from its .keras file
    python -m experiments.export --model=runs/demo/hypernetwork.keras \
        --checkpoint=runs/demo/checkpoints/hypernetwork --export_dir=runs/demo/served
    # 100 networks frozen at export time (serve endpoint)
    python -m experiments.export --model=... --kind=ensemble --ensemble_size=100 --export_dir=...
    # any other Keras model (HyperConv2D/HyperDense/HyperLSTMCell models, single networks): serve endpoint
    python -m experiments.export --model=runs/static_mnist/hyper.keras --export_dir=runs/static_mnist/served

Serving the result needs only TensorFlow: ``tf.saved_model.load(export_dir)`` (see README).
"""

from __future__ import annotations

import os

from absl import app, flags

flags.DEFINE_string("model", None, "Path of the trained model's .keras file.", required=True)
flags.DEFINE_string("checkpoint", None, "Optional checkpoint folder (or file prefix) whose weights to export.")
flags.DEFINE_string("export_dir", None, "Where the SavedModel goes.", required=True)
flags.DEFINE_enum("kind", "auto", ["auto", "generator", "ensemble", "model"],
                  "auto: generator if the model can sample networks, else model.")
flags.DEFINE_integer("ensemble_size", 100, "Networks frozen into a --kind=ensemble export.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Sampling seed of a --kind=ensemble export.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    import keras
    import tensorflow as tf

    import hyperkeras as hk

    if not os.path.isfile(FLAGS.model):
        raise app.UsageError(f"--model={FLAGS.model}: no such file (expected a .keras file written by model.save).")
    model = keras.saving.load_model(FLAGS.model, compile=False)
    if FLAGS.checkpoint:
        path = FLAGS.checkpoint
        if os.path.isdir(path):
            path = tf.train.latest_checkpoint(path)
            if path is None:
                raise app.UsageError(f"--checkpoint={FLAGS.checkpoint}: the folder holds no checkpoint.")
        # Only the model's variables: a training checkpoint also holds optimizer state.
        hk.checkpoints.restore(hk.checkpoints.model_checkpoint(model, include_optimizers=False), path, partial=True)
        print(f"restored weights from {path}")
    is_generator = callable(getattr(model, "sample", None)) and isinstance(getattr(model, "target", None), hk.TargetNetwork)
    kind = FLAGS.kind if FLAGS.kind != "auto" else ("generator" if is_generator else "model")
    if kind in ("generator", "ensemble") and not is_generator:
        raise app.UsageError(f"--kind={kind} needs a weight generator (EntropyHypernetwork, HyperGAN); {FLAGS.model} is not one.")
    if kind == "generator":
        out = hk.export.export_generator(model, FLAGS.export_dir)
    elif kind == "ensemble":
        out = hk.export.export_ensemble(model.target, model.sample(FLAGS.ensemble_size, FLAGS.seed), FLAGS.export_dir)
    else:
        out = hk.export.export_model(model, FLAGS.export_dir)
    print(f"exported {kind} SavedModel to {out}")


if __name__ == "__main__":
    app.run(main)
