"""Turns a trained model (a `.keras` file, optionally updated from a training checkpoint) into a SavedModel.

    # a weight generator (EntropyHypernetwork, HyperGAN): sample_weights + predict endpoints
    python -m experiments.export --model=runs/demo/hypernetwork.keras --export_dir=runs/demo/served
    # the newest checkpoint of a run, with the architecture from its .keras file
    python -m experiments.export --model=runs/demo/hypernetwork.keras \
        --checkpoint=runs/demo/checkpoints/hypernetwork --export_dir=runs/demo/served
    # 100 networks frozen at export time (serve endpoint)
    python -m experiments.export --model=... --kind=ensemble --num_networks=100 --export_dir=...
    # any other Keras model (HyperConv2D/HyperDense/HyperLSTMCell models, single networks): serve endpoint
    python -m experiments.export --model=runs/static_mnist/hyper.keras --export_dir=runs/static_mnist/served

Serving the result needs only TensorFlow: ``tf.saved_model.load(export_dir)`` (see README).

    # a quick try without a trained model: trains a small generator on digits (~200 steps), exports it,
    # reloads the SavedModel and checks it against the model in this process (report.md, metrics.json)
    python -m experiments.export --quick                 # writes runs/export_quick/
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import common

flags.DEFINE_string(
    "model",
    None,
    "Path of the trained model's .keras file (with --quick: default a small generator trained on the spot).",
)
flags.DEFINE_string("checkpoint", None, "Optional checkpoint folder (or file prefix) whose weights to export.")
flags.DEFINE_string("export_dir", None, "Where the SavedModel goes (with --quick: default <output_dir>/saved_model).")
flags.DEFINE_enum(
    "kind",
    "auto",
    ["auto", "generator", "ensemble", "model"],
    "auto: generator if the model can sample networks, else model.",
)
flags.DEFINE_integer("num_networks", 100, "Networks frozen into a --kind=ensemble export.", lower_bound=1)
common.renamed_flag("ensemble_size", "num_networks", "networks frozen into a --kind=ensemble export")
flags.DEFINE_integer("seed", 0, "Sampling seed of a --kind=ensemble export.")
flags.DEFINE_bool(
    "quick",
    False,
    "A quick try (well under a minute): without --model, trains a small EntropyHypernetwork on "
    "scikit-learn's digits for --quick_steps steps and saves it to <output_dir>/generator.keras; exports "
    "to --export_dir (default <output_dir>/saved_model), reloads the SavedModel, compares it with the "
    "model in this process and writes <output_dir>/report.md and metrics.json.",
)
flags.DEFINE_string(
    "output_dir", "runs/export_quick", "--quick: folder of the trained model, the export and the report."
)
flags.DEFINE_integer("quick_steps", 200, "--quick: training steps of the small generator.", lower_bound=1)
FLAGS = flags.FLAGS


def _quick_model(path):
    """Trains a small Deutsch hypernetwork (MLP target) on digits; saves it to `path` without optimizer state."""
    import keras
    import tensorflow as tf

    import hyperkeras as hk
    from experiments import common

    x, y = hk.data.load_arrays("digits", "train", seed=FLAGS.seed)
    keras.utils.set_random_seed(FLAGS.seed)
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=x.shape[1:], hidden=(32,), seed=FLAGS.seed))
    gen = hk.generators.DeutschGenerator.from_target(
        target, noise_dim=16, code_size=8, extractor_units=(64,), generator_units=(64,)
    )
    model = hk.models.EntropyHypernetwork(target, gen, lam=1e3, num_networks=8, shared_batch=True, seed=FLAGS.seed)
    model.compile(optimizer=hk.optimizers.FusedAdam(1e-3))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=FLAGS.seed).repeat().batch(32)
    # shuffle=False: the dataset is shuffled already (Keras ignores its default shuffle=True for a dataset,
    # with a warning)
    model.fit(ds, steps_per_epoch=FLAGS.quick_steps, epochs=1, verbose=common.verbose(), shuffle=False)
    common.save_model(model, path)
    return path


def _check_export(model, kind, export_dir):
    """Reloads the SavedModel and compares it with `model` on digits test images; returns the metrics."""
    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk

    x, y = hk.data.load_arrays("digits", "test")
    if tuple(x.shape[1:]) != tuple(model.inputs[0].shape[1:] if kind == "model" else model.target.input_shape):
        x = np.random.RandomState(0).rand(
            8, *(model.target.input_shape if kind != "model" else model.inputs[0].shape[1:])
        )
        x, y = x.astype("float32"), None
    served = tf.saved_model.load(export_dir)
    n = 10
    if kind == "generator":
        got = served.predict(x=tf.constant(x), n=tf.constant(n), seed=tf.constant(FLAGS.seed, tf.int64))[
            "mean_probs"
        ].numpy()
        want = tf.nn.softmax(model.target.apply(model.sample(n, FLAGS.seed), x)).numpy().mean(0)
    elif kind == "ensemble":
        got = served.serve(tf.constant(x))["mean_probs"].numpy()
        want = tf.nn.softmax(model.target.apply(model.sample(FLAGS.num_networks, FLAGS.seed), x)).numpy().mean(0)
    else:
        got = np.asarray(served.serve(tf.constant(x)))
        want = np.asarray(model(x, training=False))
    out = {
        "kind": kind,
        "export_dir": export_dir,
        "examples": int(len(x)),
        "max_abs_difference": float(np.max(np.abs(got - want))),
    }
    if y is not None and got.ndim == 2 and got.shape[-1] > 1:
        out["accuracy"] = float(np.mean(got.argmax(-1) == y))
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    if FLAGS.quick:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        if FLAGS.export_dir is None:
            FLAGS.export_dir = os.path.join(FLAGS.output_dir, "saved_model")
    for name in ("model", "export_dir"):
        if FLAGS[name].value is None and not (FLAGS.quick and name == "model"):
            raise app.UsageError(f"--{name} is required (or --quick for a quick try).")
    if FLAGS.model is None:
        FLAGS.model = _quick_model(os.path.join(FLAGS.output_dir, "generator.keras"))
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
        # Only the model's variables: a training checkpoint also holds optimizer state. A checkpoint of
        # another model is refused before anything is restored (names, shapes and dtypes checked first).
        hk.checkpoints.restore(hk.checkpoints.model_checkpoint(model, include_optimizers=False), path, partial=True)
        print(f"restored weights from {path}")
    is_generator = callable(getattr(model, "sample", None)) and isinstance(
        getattr(model, "target", None), hk.TargetNetwork
    )
    kind = FLAGS.kind if FLAGS.kind != "auto" else ("generator" if is_generator else "model")
    if kind in ("generator", "ensemble") and not is_generator:
        raise app.UsageError(
            f"--kind={kind} needs a weight generator (EntropyHypernetwork, HyperGAN); {FLAGS.model} is not one."
        )
    if kind == "generator":
        out = hk.export.export_generator(model, FLAGS.export_dir)
    elif kind == "ensemble":
        out = hk.export.export_ensemble(
            model.target,
            model.sample(FLAGS.num_networks, FLAGS.seed),
            FLAGS.export_dir,
            task=hk.ensembles.task_of(model),
        )
    else:
        out = hk.export.export_model(model, FLAGS.export_dir)
    print(f"exported {kind} SavedModel to {out}")
    if FLAGS.quick:
        from experiments import common
        from hyperkeras.io import atomic_write_json, atomic_write_text

        check = {"model": FLAGS.model, "model_bytes": os.path.getsize(FLAGS.model), **_check_export(model, kind, out)}
        atomic_write_json(os.path.join(FLAGS.output_dir, "metrics.json"), check)
        atomic_write_text(
            os.path.join(FLAGS.output_dir, "report.md"),
            f"# Export check ({kind})\n\n`{FLAGS.model}` exported to `{out}`; the reloaded SavedModel "
            "against the model in this process:\n\n" + common.markdown_table([check]) + "\n",
        )
        print(
            f"SavedModel matches the model in this process to {check['max_abs_difference']:.2g} -> {FLAGS.output_dir}"
        )


if __name__ == "__main__":
    common.run(main)
