"""Directly trains a target architecture (no hypernetwork): the baseline every report compares with.

python -m experiments.train_direct --output_dir=runs/direct --steps=2000
"""

from absl import flags

from experiments import common

common.define_flags(dataset="fashion_mnist", steps=2000, batch_size=32)
flags.DEFINE_string("target", "deutsch_mnist", "Target architecture (hyperkeras.targets.available_targets()).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_integer("train_subset", None, "Use only this many training examples.")
common.quick_defaults(dataset="digits", steps=300)
FLAGS = flags.FLAGS


def main(argv):
    ctx = common.setup(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    from hyperkeras import data, targets

    resize = 28 if FLAGS.dataset == "digits" and FLAGS.target == "deutsch_mnist" else None
    x, y = data.load_arrays(
        FLAGS.dataset, "train", data_dir=FLAGS.data_dir, subset=FLAGS.train_subset, resize=resize, seed=ctx.seed
    )
    xt, yt = data.load_arrays(FLAGS.dataset, "test", data_dir=FLAGS.data_dir, resize=resize)
    with ctx.strategy.scope():
        model = targets.build_model(FLAGS.target, input_shape=x.shape[1:], seed=ctx.seed)
        model.compile(
            optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )

    make_dataset = common.array_stream(x, y, ctx.batch_size, ctx.seed)

    common.train(model, make_dataset, ctx)
    with common.stage("predicting %d test examples", len(yt)):
        probs = tf.nn.softmax(model.predict(xt, batch_size=1000, verbose=common.verbose())).numpy()
    acc = float(np.mean(probs.argmax(-1) == yt))
    nll = float(-np.mean(np.log(probs[np.arange(len(yt)), yt] + 1e-12)))
    metrics = {
        "dataset": FLAGS.dataset,
        "target": FLAGS.target,
        "steps": ctx.steps,
        "test_accuracy": acc,
        "test_nll": nll,
        "num_params": int(model.count_params()),
    }
    report = f"# Direct training: {FLAGS.target} on {FLAGS.dataset}\n\n" + common.markdown_table([metrics]) + "\n"
    common.write_results(ctx, metrics, report)
    common.save_model(model, ctx.path("model.keras"))
    print(f"test accuracy {acc:.4f}  NLL {nll:.4f}  ({ctx.steps} steps) -> {ctx.output_dir}")


if __name__ == "__main__":
    common.run(main)
