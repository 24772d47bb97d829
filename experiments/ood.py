"""Out-of-distribution detection by predictive entropy (Ratzlaff & Fuxin §4.4, Fig. 3).

Two settings, each comparing generated ensembles with the baselines (one directly trained network,
deep ensembles of 5 and 10, MC dropout):

* ``classes``: train on classes ``--in_classes`` (default 0–4); test examples of the other classes are
  out-of-distribution (the paper's CIFAR-5 protocol, here on ``--dataset``);
* ``dataset``: train on all of ``--dataset``; ``--ood_dataset`` is out-of-distribution (default:
  scikit-learn's digits resized to 28×28 against Fashion-MNIST; ``uniform_noise`` gives noise images).

The score is the entropy of the ensemble's mean softmax; OOD is the positive class. Reports AUROC,
AUPRC and FPR at 95% TPR, and the empirical CDFs of the entropy (Fig. 3).

    python -m experiments.ood --output_dir=runs/ood
    python -m experiments.ood --load_from=runs/hypergan_classify      # reuse all-class models
    python -m experiments.ood --hypernetwork=deutsch --target=deutsch_mnist

Models of the ``classes`` setting live in ``<output_dir>/in_classes/`` (reuse them with
``--load_from_classes``, which also accepts a ``hypergan_classify --classes=0-4`` run).
"""

import dataclasses

from absl import flags

from experiments import common
from experiments import hypergan_common as hc

common.define_flags(dataset="fashion_mnist", steps=5000, batch_size=32)
hc.define_flags(hypernetwork_choice=True)
flags.DEFINE_list("settings", ["classes", "dataset"], "Which OOD settings to run: classes, dataset.")
flags.DEFINE_string("in_classes", "0-4", "In-distribution classes of the 'classes' setting.")
flags.DEFINE_string("ood_dataset", "digits", "OOD data of the 'dataset' setting (a dataset name or uniform_noise).")
flags.DEFINE_string(
    "ood_data_dir",
    None,
    "Folder with the --ood_dataset's files (e.g. IDX files); default: where "
    "hyperkeras.data looks for that dataset (--data_dir is the in-distribution dataset's folder).",
)
flags.DEFINE_string("load_from_classes", None, "Folder with generator.keras and baselines/ trained on --in_classes.")
flags.DEFINE_string("ensemble_sizes", "10,100", "Sizes of the generated ensembles.")
flags.DEFINE_integer("train_subset", None, "Use only this many training examples.")
flags.DEFINE_integer("test_subset", None, "Use only this many in-distribution test examples.")
flags.DEFINE_integer("ood_subset", None, "Use only this many OOD examples.")
common.quick_defaults(
    dataset="digits",
    target="mlp",
    ood_dataset="uniform_noise",
    steps=300,
    pretrain_steps=50,
    noise_dim=32,
    code_dim=32,
    mixer_units=64,
    generator_units=64,
    discriminator_units=64,
    networks_per_step=8,
    baseline_steps=300,
    deep_ensemble_size=3,
    mc_samples=10,
    ensemble_sizes="5,20",
    test_subset=300,
    ood_subset=300,
)
FLAGS = flags.FLAGS


def run_setting(ctx, name, x, y, xt, yt, x_ood, load_from):
    """Trains (or loads) a generator and the baselines on (x, y) and scores (xt, x_ood)."""
    import numpy as np

    from hyperkeras import ensembles, metrics

    num_classes = int(max(y.max(), yt.max())) + 1
    gen = hc.train_hypernetwork(ctx, x, y, FLAGS.hypernetwork, num_classes=num_classes, load_from=load_from)
    label = "HyperGAN" if FLAGS.hypernetwork == "hypergan" else "Deutsch"
    preds = {}
    kw = dict(seed=ctx.seed + 31, batch_size=FLAGS.eval_batch_size, verbose=common.verbose())
    for n in hc.int_list(FLAGS.ensemble_sizes):
        with common.stage(
            "%s setting: %s %d on %d in- and %d out-of-distribution examples", name, label, n, len(xt), len(x_ood)
        ):
            preds[f"{label} {n}"] = (ensembles.predict(gen, xt, n=n, **kw), ensembles.predict(gen, x_ood, n=n, **kw))
    if FLAGS.baselines:
        models = hc.train_baselines(ctx, x, y, num_classes=num_classes, load_from=load_from)
        sizes = (5, FLAGS.deep_ensemble_size)
        ins = hc.baseline_predictions(models, xt, FLAGS.mc_samples, FLAGS.eval_batch_size, sizes)
        outs = hc.baseline_predictions(models, x_ood, FLAGS.mc_samples, FLAGS.eval_batch_size, sizes)
        for key in ins:
            preds[key] = (ins[key], outs[key])
    rows, curves = [], {}
    for method, (p_in, p_out) in preds.items():
        h_in, h_out = p_in.predictive_entropy, p_out.predictive_entropy
        rows.append(
            {
                "setting": name,
                "method": method,
                "in_accuracy": metrics.accuracy(p_in.mean_probs, yt),
                **metrics.ood_scores(h_in, h_out),
                "mean_entropy_in": float(np.mean(h_in)),
                "mean_entropy_out": float(np.mean(h_out)),
            }
        )
        curves[method] = (h_in, h_out)
    return rows, curves, num_classes


def plot_cdfs(curves, num_classes, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hyperkeras import io

    fig, ax = plt.subplots(figsize=(6, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, (h_in, h_out)) in enumerate(curves.items()):
        c = colors[i % len(colors)]
        for h, ls, tag in ((h_out, "-", "OOD"), (h_in, "--", "in")):
            s = np.sort(h)
            ax.plot(s, np.arange(1, len(s) + 1) / len(s), ls, color=c, label=f"{method} ({tag})")
    ax.set_xlim(0, np.log(num_classes))
    ax.set_xlabel("predictive entropy (nats)")
    ax.set_ylabel("empirical CDF")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    io.save_figure(fig, path)
    plt.close(fig)


def main(argv):
    ctx = common.setup(argv)
    from hyperkeras import data

    bad = set(FLAGS.settings) - {"classes", "dataset"}
    if bad or not FLAGS.settings:
        raise flags.ValidationError(f"--settings must list classes and/or dataset, got {FLAGS.settings}.")
    resize = 28 if FLAGS.dataset == "digits" and FLAGS.target in ("hypergan_mnist", "deutsch_mnist") else None
    load = dict(data_dir=FLAGS.data_dir, resize=resize, seed=ctx.seed)
    rows, figures = [], []
    if "classes" in FLAGS.settings:
        keep = data.parse_classes(FLAGS.in_classes)
        x, y = data.load_arrays(FLAGS.dataset, "train", classes=keep, subset=FLAGS.train_subset, **load)
        xt_all, yt_all = data.load_arrays(FLAGS.dataset, "test", **load)
        inside = __import__("numpy").isin(yt_all, keep)
        xt, yt, x_ood = xt_all[inside], yt_all[inside], xt_all[~inside]
        if FLAGS.test_subset:
            xt, yt = xt[: FLAGS.test_subset], yt[: FLAGS.test_subset]
        if FLAGS.ood_subset:
            x_ood = x_ood[: FLAGS.ood_subset]
        sub = dataclasses.replace(ctx, output_dir=ctx.path("in_classes"))
        r, curves, nc = run_setting(sub, "classes", x, y, xt, yt, x_ood, FLAGS.load_from_classes)
        rows += r
        plot_cdfs(
            curves,
            nc,
            f"{FLAGS.dataset}: classes {FLAGS.in_classes} in, others out",
            ctx.path("entropy_cdf_classes.png"),
        )
        figures.append("entropy_cdf_classes.png")
    if "dataset" in FLAGS.settings:
        x, y = data.load_arrays(FLAGS.dataset, "train", subset=FLAGS.train_subset, **load)
        xt, yt = data.load_arrays(FLAGS.dataset, "test", subset=FLAGS.test_subset, **load)
        x_ood = common.load_ood(
            FLAGS.ood_dataset,
            x.shape[1:],
            ctx.seed,
            subset=FLAGS.ood_subset,
            data_dir=FLAGS.ood_data_dir,
            in_dataset=FLAGS.dataset,
            splits=("train", "test"),
        )
        r, curves, nc = run_setting(ctx, "dataset", x, y, xt, yt, x_ood, FLAGS.load_from)
        rows += r
        plot_cdfs(curves, nc, f"{FLAGS.dataset} in, {FLAGS.ood_dataset} out", ctx.path("entropy_cdf_dataset.png"))
        figures.append("entropy_cdf_dataset.png")

    report = (
        f"# OOD detection by predictive entropy ({FLAGS.hypernetwork} hypernetwork, {FLAGS.target} on {FLAGS.dataset})\n\n"
        f"Settings: `classes` = classes {FLAGS.in_classes} in-distribution, the rest out; `dataset` = "
        f"{FLAGS.ood_dataset} out. OOD is the positive class.\n\n"
        + common.markdown_table(
            rows,
            [
                "setting",
                "method",
                "in_accuracy",
                "auroc",
                "auprc",
                "fpr_at_95_tpr",
                "mean_entropy_in",
                "mean_entropy_out",
            ],
        )
        + "\n\n"
        + "\n".join(f"![{f}]({f})" for f in figures)
        + "\n"
    )
    common.write_results(
        ctx,
        {
            "generator": FLAGS.hypernetwork,
            "dataset": FLAGS.dataset,
            "ood_dataset": FLAGS.ood_dataset,
            "in_classes": FLAGS.in_classes,
            "table": rows,
        },
        report,
    )
    print(report)


if __name__ == "__main__":
    common.run(main)
