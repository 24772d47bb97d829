"""HyperGAN classification (Ratzlaff & Fuxin, Table 2 and Table 1).

Trains a HyperGAN on a target architecture, then reports accuracy, NLL, ECE and Brier score of ensembles
of 1, 5, 10 and 100 sampled networks (mean of softmax probabilities), next to the baselines trained on
the same data and target: one directly trained network, deep ensembles of 5 and 10, MC dropout. Also
the Table 1 diversity statistics (mean and variance across networks of each layer's weight 2-norm) of
generated vs. directly trained networks.

    python -m experiments.hypergan_classify --output_dir=runs/hypergan_classify
    python -m experiments.hypergan_classify --train_subset=5000          # "MNIST 5000" protocol
    python -m experiments.hypergan_classify --classes=0-4                # "CIFAR-5" protocol

Writes metrics.json, report.md, accuracy_vs_ensemble.png, member_accuracy.png, weight_norms.png,
generator.keras, baselines/*.keras, checkpoints/ and logs/ (TensorBoard) into --output_dir.
"""

from absl import flags

from experiments import common
from experiments import hypergan_common as hc

common.define_flags(dataset="fashion_mnist", steps=5000, batch_size=32)
hc.define_flags()
flags.DEFINE_integer("train_subset", None, "Use only this many training examples (Table 2: 5000).")
flags.DEFINE_string("classes", None, "Keep only these classes, e.g. 0-4 (the CIFAR-5 protocol).")
flags.DEFINE_string("ensemble_sizes", "1,5,10,100", "Ensemble sizes of sampled networks.")
flags.DEFINE_integer("test_subset", None, "Evaluate on only this many test examples.")
common.quick_defaults(
    dataset="digits",
    target="mlp",
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
    ensemble_sizes="1,5,10,50",
)
FLAGS = flags.FLAGS


def _resize_for(dataset, target):
    return 28 if dataset == "digits" and target in ("hypergan_mnist", "deutsch_mnist") else None


def evaluate_generator(gen, xt, yt, sizes, seed, batch_size):
    """Metrics of HyperGAN ensembles of each size, from ONE pass of max(sizes) networks: ensembles of
    size n are the disjoint groups of n consecutive networks, metrics averaged over groups."""
    import numpy as np

    from hyperkeras import ensembles, metrics

    n_max = max(sizes)
    with common.stage("HyperGAN: %d networks on %d test examples", n_max, len(xt)):
        pred = ensembles.predict(
            gen, xt, n=n_max, seed=seed, batch_size=batch_size, keep_member_probs=True, verbose=common.verbose()
        )
    probs = pred.member_probs  # [N, B, C]
    rows = {}
    for n in sizes:
        groups = [probs[i : i + n].mean(axis=0) for i in range(0, n_max - n + 1, n)]
        summaries = [metrics.classification_summary(p, yt) for p in groups]
        row = {k: float(np.mean([s[k] for s in summaries])) for k in summaries[0]}
        row["accuracy_std"] = float(np.std([s["accuracy"] for s in summaries]))
        row["groups"] = len(groups)
        rows[n] = row
    return rows, pred


def main(argv):
    ctx = common.setup(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hyperkeras import data, ensembles, io, metrics

    sizes = hc.int_list(FLAGS.ensemble_sizes)
    resize = _resize_for(FLAGS.dataset, FLAGS.target)
    x, y = data.load_arrays(
        FLAGS.dataset,
        "train",
        data_dir=FLAGS.data_dir,
        classes=FLAGS.classes,
        subset=FLAGS.train_subset,
        resize=resize,
        seed=ctx.seed,
    )
    xt, yt = data.load_arrays(
        FLAGS.dataset,
        "test",
        data_dir=FLAGS.data_dir,
        classes=FLAGS.classes,
        subset=FLAGS.test_subset,
        resize=resize,
        seed=ctx.seed,
    )
    num_classes = int(max(y.max(), yt.max())) + 1

    gen = hc.train_hypernetwork(ctx, x, y, "hypergan", num_classes=num_classes, load_from=FLAGS.load_from)
    rows, pred = evaluate_generator(gen, xt, yt, sizes, seed=ctx.seed + 77, batch_size=FLAGS.eval_batch_size)
    member_acc = pred.member_accuracy(yt)

    table = []
    for n in sizes:
        r = rows[n]
        table.append(
            {
                "method": f"HyperGAN {n} network{'s' if n > 1 else ''}",
                "accuracy": r["accuracy"],
                "accuracy_std": r["accuracy_std"],
                "nll": r["nll"],
                "ece": r["ece"],
                "brier": r["brier"],
                "trials": r["groups"],
            }
        )

    diversity = {"hypergan": metrics.weight_norm_statistics(gen.target, gen.sample(100, seed=ctx.seed + 5))}
    base_models = None
    if FLAGS.baselines:
        base_models = hc.train_baselines(ctx, x, y, num_classes=num_classes, load_from=FLAGS.load_from)
        preds = hc.baseline_predictions(
            base_models, xt, FLAGS.mc_samples, FLAGS.eval_batch_size, ensemble_sizes=(5, FLAGS.deep_ensemble_size)
        )
        for name, p in preds.items():
            s = metrics.classification_summary(p.mean_probs, yt)
            table.append({"method": name, **s, "accuracy_std": 0.0, "trials": 1})
        direct_acc = [
            metrics.accuracy(
                ensembles.predict(m, xt, batch_size=FLAGS.eval_batch_size, verbose=common.verbose()).mean_probs, yt
            )
            for m in base_models["direct"]
        ]
        table.append(
            {
                "method": f"single net (mean of {len(direct_acc)})",
                "accuracy": float(np.mean(direct_acc)),
                "accuracy_std": float(np.std(direct_acc)),
                "trials": len(direct_acc),
            }
        )
        diversity["direct"] = metrics.weight_norm_statistics(gen.target, base_models["direct"])

    # ------------------------------------------------------------------ figures
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [rows[n]["accuracy"] for n in sizes], "o-", label="HyperGAN ensemble")
    ax.set_xscale("log")
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"][1:])
    for r in table:
        if not r["method"].startswith("HyperGAN") and "mean of" not in r["method"]:
            ax.axhline(r["accuracy"], ls="--", color=next(colors), label=r["method"])
    ax.set_xlabel("networks in the ensemble")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"HyperGAN on {FLAGS.dataset}")
    ax.legend(fontsize=8)
    io.save_figure(fig, ctx.path("accuracy_vs_ensemble.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(member_acc, bins=20, alpha=0.8, label=f"{len(member_acc)} sampled networks")
    if base_models is not None:
        ax.hist(direct_acc, bins=10, alpha=0.6, label=f"{len(direct_acc)} directly trained")
    ax.set_xlabel("test accuracy of one network")
    ax.set_ylabel("count")
    ax.legend()
    io.save_figure(fig, ctx.path("member_accuracy.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, len(gen.target.layers), figsize=(4 * len(gen.target.layers), 3.2))
    axes = np.atleast_1d(axes)
    norms = metrics.weight_norms(gen.target, gen.sample(100, seed=ctx.seed + 5))
    direct_norms = metrics.weight_norms(gen.target, base_models["direct"]) if base_models is not None else None
    for ax, spec in zip(axes, gen.target.layers):
        ax.hist(norms[spec.name], bins=20, alpha=0.8, label="HyperGAN")
        if direct_norms is not None:
            ax.hist(direct_norms[spec.name], bins=10, alpha=0.6, label="direct")
        ax.set_title(f"{spec.name}: kernel 2-norm")
        ax.set_xlabel("2-norm of the layer's kernel")
        ax.set_ylabel("networks")
        ax.legend(fontsize=8)
    io.save_figure(fig, ctx.path("weight_norms.png"))
    plt.close(fig)

    # ------------------------------------------------------------------ results
    out = {
        "dataset": FLAGS.dataset,
        "target": FLAGS.target,
        "classes": FLAGS.classes,
        "train_examples": int(len(y)),
        "test_examples": int(len(yt)),
        "steps": ctx.steps,
        "table": table,
        "hypergan_member_accuracy": {
            "mean": float(member_acc.mean()),
            "std": float(member_acc.std()),
            "min": float(member_acc.min()),
            "max": float(member_acc.max()),
        },
        "diversity": diversity,
    }
    div_rows = []
    for who, stats in diversity.items():
        for stat in ("mean", "variance"):
            div_rows.append({"networks": who, "statistic": stat, **{k: v[stat] for k, v in stats.items()}})
    report = (
        f"# HyperGAN classification: {FLAGS.target} on {FLAGS.dataset}"
        f"{' classes ' + FLAGS.classes if FLAGS.classes else ''}\n\n"
        f"{len(y)} training / {len(yt)} test examples, {ctx.steps} steps of batch {ctx.batch_size}, "
        f"{FLAGS.networks_per_step} networks per step, β = {FLAGS.beta}.\n\n"
        "## Table 2: ensembles (mean of softmax probabilities)\n\n"
        + common.markdown_table(table, ["method", "accuracy", "accuracy_std", "nll", "ece", "brier", "trials"])
        + "\n\nHyperGAN rows: mean over `trials` disjoint ensembles drawn from one batch of "
        f"{max(sizes)} sampled networks.\n\n"
        "## Table 1: diversity (2-norm of each layer's kernel across networks)\n\n"
        + common.markdown_table(div_rows)
        + "\n\n![accuracy](accuracy_vs_ensemble.png)\n![members](member_accuracy.png)\n![norms](weight_norms.png)\n"
    )
    common.write_results(ctx, out, report)
    print(report)


if __name__ == "__main__":
    common.run(main)
