"""Deutsch (2018) §4.2: an entropy-regularised hypernetwork generating the Table 1 MNIST target.

    python -m experiments.deutsch_mnist --output_dir=runs/deutsch_mnist --steps=13000

Trains one hypernetwork (Table 2 generator, Adam, 32 noise samples × 32 images each, gauge transform)
per λ in --lams, then, writes to --output_dir: checkpoints, TensorBoard logs, metrics.json, report.md
and figures — the test-accuracy histogram of --eval_networks generated networks per λ (Fig. 3),
majority-vote ensembles (§4.2.2), accuracy along direct vs. interpolated paths between random z pairs
(Fig. 4), PCA scatter of the generated weights per layer and for the whole network (Figs. 14–21),
generated first- and second-layer filters (Figs. 7–9), targeted FGSM against a single generated
network vs. an ensemble (Fig. 6), and the same target trained directly (several seeds) side by side.
The analyses use the first λ of --lams.
"""

import numpy as np
from absl import app, flags, logging

from experiments import common

common.define_flags(dataset="fashion_mnist", steps=13000, batch_size=32)
flags.DEFINE_list("lams", ["1e3", "1e5"], "λ values (weight of the cross-entropy); one hypernetwork each.")
flags.DEFINE_integer(
    "networks_per_step",
    32,
    "K: networks generated per training step (each sees its own --batch_size images).",
    lower_bound=2,
)
flags.DEFINE_float("hyper_learning_rate", 3e-4, "Adam learning rate of the hypernetwork.", lower_bound=0.0)
common.renamed_flag("learning_rate", "hyper_learning_rate", "the hypernetwork's rate; the baselines use Adam 1e-3")
flags.DEFINE_float(
    "lr_decay", 0.99998, "Learning-rate decay per step (paper's code).", lower_bound=0.0, upper_bound=1.0
)
flags.DEFINE_enum("gauge", "transform", ["transform", "penalty", "none"], "Gauge-fixing strategy.")
flags.DEFINE_float("gamma", 1.0, "Weight of the gauge penalty (--gauge=penalty).", lower_bound=0.0)
flags.DEFINE_integer("train_subset", None, "Use only this many training examples.")
flags.DEFINE_integer("eval_subset", None, "Evaluate on only this many test examples (default: all).")
flags.DEFINE_integer("eval_networks", 500, "Generated networks in the accuracy histogram and PCA.", lower_bound=2)
flags.DEFINE_integer("num_ensembles", 20, "Number of majority-vote ensembles.", lower_bound=0)
flags.DEFINE_integer("vote_ensemble_size", 200, "Networks per majority-vote ensemble.", lower_bound=1)
common.renamed_flag("ensemble_size", "vote_ensemble_size", "networks per majority-vote ensemble")
flags.DEFINE_integer("num_paths", 4, "Random z pairs for the path study (Fig. 4).", lower_bound=0)
flags.DEFINE_integer("path_points", 21, "Points along each path.", lower_bound=2)
flags.DEFINE_integer("fgsm_examples", 1000, "Test examples attacked with FGSM (0 disables).", lower_bound=0)
flags.DEFINE_integer("fgsm_ensemble_size", 100, "Networks in the FGSM ensemble.", lower_bound=1)
flags.DEFINE_float("fgsm_max_eps", 0.24, "Largest FGSM perturbation (fraction of the pixel range).", lower_bound=0.0)
flags.DEFINE_integer("fgsm_eps_points", 13, "Number of ε values in [0, fgsm_max_eps].", lower_bound=2)
flags.DEFINE_integer("baseline_seeds", 3, "Seeds of the directly trained target (0 disables).", lower_bound=0)
flags.DEFINE_integer(
    "baseline_steps", 2000, "Training steps of each direct baseline (Adam 1e-3, batch 32).", lower_bound=0
)
flags.DEFINE_integer("eval_batch", 500, "Examples per evaluation step.", lower_bound=1)
common.quick_defaults(
    dataset="digits",
    steps=150,
    lams=["1e3"],
    networks_per_step=8,
    eval_subset=300,
    eval_networks=50,
    num_ensembles=5,
    vote_ensemble_size=10,
    num_paths=2,
    path_points=11,
    fgsm_examples=200,
    fgsm_ensemble_size=20,
    fgsm_eps_points=5,
    baseline_seeds=2,
    baseline_steps=150,
)
FLAGS = flags.FLAGS


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lam_name(lam):
    return f"lam{lam:g}".replace("+", "")


def _train_hypernetwork(lam, target, x, y, ctx):
    import keras

    import hyperkeras as hk

    k = FLAGS.networks_per_step
    with ctx.strategy.scope():
        generator = hk.generators.DeutschGenerator.paper_config(target, seed=ctx.seed)
        model = hk.models.EntropyHypernetwork(
            target, generator, lam=lam, gauge=FLAGS.gauge, gamma=FLAGS.gamma, num_networks=k, seed=ctx.seed
        )
        schedule = keras.optimizers.schedules.ExponentialDecay(FLAGS.hyper_learning_rate, 1, FLAGS.lr_decay)
        model.compile(optimizer=hk.optimizers.FusedAdam(schedule))
        model.optimizer.build(model.trainable_variables)

    make_dataset = common.array_stream(x, y, k * ctx.batch_size, ctx.seed)

    name = _lam_name(lam)
    hist_cb = common.GeneratedWeightHistograms(ctx.path("logs", name, "generated"), num_networks=32)
    history = common.train(model, make_dataset, ctx, name=name, callbacks=[hist_cb])
    last = {key: float(v[-1]) for key, v in history.history.items()} if history is not None else {}
    return model, last


def _member_accuracy(params, target, x, y):
    from hyperkeras import ensembles

    pred = ensembles.predict(
        params, x, target=target, batch_size=FLAGS.eval_batch, keep_member_probs=False, verbose=common.verbose()
    )
    return pred, pred.member_accuracy(y)


def _majority(preds, num_classes):
    counts = (preds[..., None] == np.arange(num_classes)).sum(0)  # [B, C]
    return counts.argmax(1)


def _histogram(acc_by_lam, path):
    plt = _figure()
    from hyperkeras.io import save_figure

    fig, axes = plt.subplots(1, len(acc_by_lam), figsize=(4.5 * len(acc_by_lam), 3.2), squeeze=False)
    for ax, (lam, accs) in zip(axes[0], acc_by_lam.items()):
        ax.hist(100 * accs, bins=30, color="tab:blue")
        ax.set_title(f"λ = {lam:g}: {len(accs)} generated networks")
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("networks")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _paths(model, target, x, y, ctx):
    import tensorflow as tf

    n, p = FLAGS.num_paths, FLAGS.path_points
    z = model.sample_noise(2 * n, seed=ctx.seed + 11)
    ts = np.linspace(0.0, 1.0, p).astype("float32")
    ends = model.generate(z)  # gauge-fixed G(z) of all endpoints
    direct, interp = [], []
    for i in range(n):
        z1, z2 = z[2 * i], z[2 * i + 1]
        zt = ts[:, None] * z1[None] + (1 - ts[:, None]) * z2[None]
        interp.append(model.generate(zt))
        direct.append(
            {
                k: ts.reshape([-1] + [1] * (len(v.shape) - 1)) * v[2 * i][None]
                + (1 - ts.reshape([-1] + [1] * (len(v.shape) - 1))) * v[2 * i + 1][None]
                for k, v in ends.items()
            }
        )
    stack = {k: tf.concat([d[k] for d in direct] + [q[k] for q in interp], 0) for k in ends}
    with common.stage("paths: %d pairs × %d points × 2 on %d examples", n, p, len(y)):
        _, accs = _member_accuracy(stack, target, x, y)
    accs = accs.reshape(2, n, p)
    return ts, accs[0], accs[1]


def _paths_figure(ts, direct, interp, path):
    plt = _figure()
    from hyperkeras.io import save_figure

    n = len(direct)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.plot(ts, 100 * direct[i], "--", label="direct")
        ax.plot(ts, 100 * interp[i], "-", label="interpolated")
        ax.set_xlabel("t")
        if i == 0:
            ax.set_ylabel("test accuracy (%)")
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _pca(flat_by_name, ctx, components=4):
    """Scatter matrices of the first principal components (Figs. 14–21); returns explained variances."""
    from sklearn.decomposition import PCA

    plt = _figure()
    from hyperkeras.io import save_figure

    out = {}
    for name, flat in flat_by_name.items():
        c = min(components, flat.shape[0], flat.shape[1])
        pca = PCA(n_components=c, random_state=0)
        proj = pca.fit_transform(flat)
        out[name] = [float(v) for v in pca.explained_variance_ratio_]
        fig, axes = plt.subplots(c, c, figsize=(1.9 * c, 1.9 * c), squeeze=False)
        for i in range(c):
            for j in range(c):
                ax = axes[i, j]
                if i == j:
                    ax.hist(proj[:, i], bins=30, color="tab:gray")
                else:
                    ax.scatter(proj[:, j], proj[:, i], s=2, alpha=0.5)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"PC{i + 1}", fontsize=8)
                if i == c - 1:
                    ax.set_xlabel(f"PC{j + 1}", fontsize=8)
        fig.suptitle(f"PCA of generated weights: {name}", fontsize=9)
        fig.tight_layout()
        save_figure(fig, ctx.path(f"pca_{name.replace('/', '_')}.png"))
        plt.close(fig)
    return out


def _filters_figure(params, target, path, samples=12):
    """Samples of two first-layer filters and one channel of a second-layer filter (Figs. 7–9)."""
    plt = _figure()
    from hyperkeras.io import save_figure

    convs = [l for l in target.layers if l.kind == "conv2d"]
    rows = []
    if convs:
        k1 = np.asarray(params[convs[0].kernel.name])
        rows += [(f"{convs[0].name} filter {f}", k1[:samples, :, :, 0, f]) for f in range(min(2, k1.shape[-1]))]
    if len(convs) > 1:
        k2 = np.asarray(params[convs[1].kernel.name])
        rows.append((f"{convs[1].name} filter 0, channel 0", k2[:samples, :, :, 0, 0]))
    if not rows:
        return False
    fig, axes = plt.subplots(len(rows), samples, figsize=(1.0 * samples, 1.15 * len(rows)), squeeze=False)
    for r, (title, imgs) in enumerate(rows):
        for s in range(samples):
            ax = axes[r, s]
            if s < len(imgs):
                lim = np.abs(imgs[s]).max() + 1e-12
                ax.imshow(imgs[s], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _fgsm(model, target, x, y, ctx):
    """Targeted fast-gradient attack crafted on one generated network, tested on it and on an ensemble."""
    from hyperkeras import attacks

    single = model.sample(1, seed=ctx.seed + 21)
    ens = model.sample(FLAGS.fgsm_ensemble_size, seed=ctx.seed + 22)
    x, y = x[: FLAGS.fgsm_examples], y[: FLAGS.fgsm_examples]
    eps = np.linspace(0.0, FLAGS.fgsm_max_eps, FLAGS.fgsm_eps_points)
    with common.stage(
        "targeted FGSM: %d examples, %d ε values, ensemble of %d", len(y), len(eps), FLAGS.fgsm_ensemble_size
    ):
        res = attacks.deutsch_fgsm_curve(
            single, ens, x, y, eps, target=target, seed=ctx.seed, batch_size=FLAGS.eval_batch
        )
    if not res["examples"]:
        logging.warning("FGSM skipped: the attacked network classifies none of the %d examples correctly.", len(y))
    return res


def _fgsm_figure(res, path):
    plt = _figure()
    from hyperkeras.io import save_figure

    eps = [r["eps"] for r in res["curve"]]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(eps, [r["single_success"] for r in res["curve"]], "--", label="single network")
    ax.plot(eps, [r["ensemble_success"] for r in res["curve"]], "-", label=f"ensemble of {res['ensemble_size']}")
    ax.set_xlabel("ε (fraction of pixel range)")
    ax.set_ylabel("targeted attack success")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _baselines(x, y, xt, yt, ctx):
    import keras

    from hyperkeras import targets

    accs = []
    for s in range(FLAGS.baseline_seeds):
        keras.utils.set_random_seed(ctx.seed + 100 + s)
        with ctx.strategy.scope():
            net = targets.build_model("deutsch_mnist", input_shape=x.shape[1:], seed=ctx.seed + 100 + s)
            net.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )

        logging.info("direct baseline %d/%d: %d steps", s + 1, FLAGS.baseline_seeds, FLAGS.baseline_steps)
        common.train(
            net,
            common.array_stream(x, y, ctx.batch_size, ctx.seed + s),
            ctx,
            steps=FLAGS.baseline_steps,
            name=f"direct_seed{s}",
        )
        logits = net.predict(xt, batch_size=FLAGS.eval_batch, verbose=common.verbose())
        accs.append(float(np.mean(logits.argmax(-1) == yt)))
    return accs


def _stats(a):
    a = np.asarray(a, dtype=np.float64)
    return (
        {
            "mean": float(a.mean()),
            "std": float(a.std()),
            "min": float(a.min()),
            "max": float(a.max()),
            "median": float(np.median(a)),
        }
        if a.size
        else {}
    )


def main(argv):
    ctx = common.setup(argv)

    import hyperkeras as hk
    from hyperkeras import data

    try:
        lams = [float(v) for v in FLAGS.lams]
    except ValueError:
        raise app.UsageError(f"--lams must be numbers, got {FLAGS.lams}.") from None
    if not lams or any(v < 0 for v in lams):
        raise app.UsageError(f"--lams must be a non-empty list of λ >= 0, got {FLAGS.lams}.")
    resize = 28 if FLAGS.dataset == "digits" else None
    x, y = data.load_arrays(
        FLAGS.dataset, "train", data_dir=FLAGS.data_dir, subset=FLAGS.train_subset, resize=resize, seed=ctx.seed
    )
    xt, yt = data.load_arrays(
        FLAGS.dataset, "test", data_dir=FLAGS.data_dir, subset=FLAGS.eval_subset, resize=resize, seed=ctx.seed
    )
    if len(y) < FLAGS.networks_per_step * ctx.batch_size:
        raise app.UsageError(
            f"the training set has {len(y)} examples, fewer than one step needs "
            f"(--networks_per_step × --batch_size = {FLAGS.networks_per_step * ctx.batch_size})."
        )
    num_classes = int(max(y.max(), yt.max()) + 1)
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist", input_shape=x.shape[1:], num_classes=num_classes))
    metrics = {
        "dataset": FLAGS.dataset,
        "steps": ctx.steps,
        "networks_per_step": FLAGS.networks_per_step,
        "images_per_network": ctx.batch_size,
        "eval_examples": int(len(yt)),
        "target_params": target.num_params,
    }
    acc_by_lam, per_lam = {}, {}
    main_model = None
    for lam in lams:
        model, last = _train_hypernetwork(lam, target, x, y, ctx)
        if main_model is None:
            main_model = model
        pool = max(FLAGS.eval_networks, FLAGS.num_ensembles * FLAGS.vote_ensemble_size if lam == lams[0] else 0)
        params = model.sample(pool, seed=ctx.seed + 1)
        logging.info("λ=%g: evaluating %d generated networks on %d examples", lam, pool, len(yt))
        pred, accs = _member_accuracy(params, target, xt, yt)
        flat = target.flatten({k: v[: FLAGS.eval_networks] for k, v in params.items()})
        entropy = float(hk.objectives.kozachenko_leonenko_entropy(flat, dim=model.noise_dim))
        acc_by_lam[lam] = accs[: FLAGS.eval_networks]
        per_lam[_lam_name(lam)] = {
            "lam": lam,
            "final_train": last,
            "accuracy": _stats(acc_by_lam[lam]),
            "entropy_estimate": entropy,
            "eval_networks": FLAGS.eval_networks,
        }
        if lam == lams[0]:
            main_params, main_pred = params, pred
    metrics["hypernetworks"] = per_lam
    _histogram(acc_by_lam, ctx.path("accuracy_histogram.png"))

    model, lam0 = main_model, lams[0]
    # Ensembles: disjoint groups of the sampled pool, majority vote (§4.2.2).
    preds = main_pred.member_predictions
    groups = min(FLAGS.num_ensembles, preds.shape[0] // FLAGS.vote_ensemble_size)
    ens_acc = [
        float(
            np.mean(
                _majority(preds[g * FLAGS.vote_ensemble_size : (g + 1) * FLAGS.vote_ensemble_size], num_classes) == yt
            )
        )
        for g in range(groups)
    ]
    metrics["ensembles"] = {
        "num_ensembles": groups,
        "ensemble_size": FLAGS.vote_ensemble_size,
        "majority_vote_accuracy": _stats(ens_acc),
        "all_networks_vote_accuracy": float(np.mean(main_pred.majority_vote == yt)),
        "all_networks_mean_probs_accuracy": float(np.mean(main_pred.mean_prediction == yt)),
    }

    if FLAGS.num_paths:
        ts, direct, interp = _paths(model, target, xt, yt, ctx)
        _paths_figure(ts, direct, interp, ctx.path("paths.png"))
        metrics["paths"] = {
            "t": ts.tolist(),
            "direct": direct.tolist(),
            "interpolated": interp.tolist(),
            "direct_min_mean": float(direct.min(1).mean()),
            "interpolated_min_mean": float(interp.min(1).mean()),
        }

    sub = {k: v[: FLAGS.eval_networks].numpy() for k, v in main_params.items()}
    flat_by = {
        l.name: np.concatenate(
            [sub[s.name].reshape(len(sub[s.name]), -1) for s in target.param_specs if s.layer == l.name], 1
        )
        for l in target.layers
    }
    flat_by["network"] = np.concatenate(list(flat_by.values()), 1)
    with common.stage("PCA of %d generated networks", len(flat_by["network"])):
        metrics["pca_explained_variance_ratio"] = _pca(flat_by, ctx)
    _filters_figure(sub, target, ctx.path("filters.png"))

    if FLAGS.fgsm_examples:
        metrics["fgsm"] = _fgsm(model, target, xt, yt, ctx)
        if metrics["fgsm"]["curve"]:
            _fgsm_figure(metrics["fgsm"], ctx.path("fgsm.png"))

    if FLAGS.baseline_seeds and FLAGS.baseline_steps:
        base = _baselines(x, y, xt, yt, ctx)
        metrics["direct_baseline"] = {
            "steps": FLAGS.baseline_steps,
            "seeds": FLAGS.baseline_seeds,
            "accuracy": base,
            "accuracy_stats": _stats(base),
        }

    common.write_results(ctx, metrics, _report(metrics, lam0))
    a = per_lam[_lam_name(lam0)]["accuracy"]
    print(
        f"λ={lam0:g}: single-network accuracy mean {a['mean']:.4f} (min {a['min']:.4f}, max {a['max']:.4f}) -> {ctx.output_dir}"
    )


def _report(m, lam0):
    rows = [
        {
            "λ": f"{v['lam']:g}",
            "networks": v["eval_networks"],
            "mean acc": v["accuracy"]["mean"],
            "min": v["accuracy"]["min"],
            "max": v["accuracy"]["max"],
            "std": v["accuracy"]["std"],
            "entropy Ĥ (d=300)": v["entropy_estimate"],
        }
        for v in m["hypernetworks"].values()
    ]
    out = [
        f"# Deutsch (2018) hypernetwork on {m['dataset']}",
        "",
        f"{m['steps']} steps, {m['networks_per_step']} networks × {m['images_per_network']} images per step; "
        f"evaluation on {m['eval_examples']} test examples; target has {m['target_params']} weights.",
        "",
        "## Generated networks (Fig. 3)",
        "",
        common.markdown_table(rows),
        "",
        "![histogram](accuracy_histogram.png)",
        "",
    ]
    e = m["ensembles"]
    out += [
        "## Ensembles (majority vote)",
        "",
        f"{e['num_ensembles']} ensembles of {e['ensemble_size']}: accuracy {e['majority_vote_accuracy'].get('mean', float('nan')):.4f} "
        f"(min {e['majority_vote_accuracy'].get('min', float('nan')):.4f}, max {e['majority_vote_accuracy'].get('max', float('nan')):.4f}); "
        f"vote of all sampled networks {e['all_networks_vote_accuracy']:.4f}, mean-probability ensemble {e['all_networks_mean_probs_accuracy']:.4f}.",
        "",
    ]
    if "direct_baseline" in m:
        b = m["direct_baseline"]
        out += [
            "## Direct training (same target)",
            "",
            f"{b['seeds']} seeds × {b['steps']} steps: accuracy "
            + ", ".join(f"{v:.4f}" for v in b["accuracy"])
            + f" (mean {b['accuracy_stats']['mean']:.4f}).",
            "",
        ]
    if "paths" in m:
        p = m["paths"]
        out += [
            "## Paths in weight space (Fig. 4)",
            "",
            f"Mean over pairs of the lowest accuracy along the path: direct {p['direct_min_mean']:.4f}, "
            f"interpolated {p['interpolated_min_mean']:.4f}.",
            "",
            "![paths](paths.png)",
            "",
        ]
    out += [
        "## PCA of generated weights (Figs. 14–21)",
        "",
        common.markdown_table(
            [
                {"weights": k, "explained variance ratio (PC1..)": ", ".join(f"{v:.3f}" for v in r)}
                for k, r in m["pca_explained_variance_ratio"].items()
            ]
        ),
        "",
    ]
    out += [f"![pca](pca_{k.replace('/', '_')}.png)" for k in m["pca_explained_variance_ratio"]]
    out += ["", "## Generated filters (Figs. 7–9)", "", "![filters](filters.png)", ""]
    if m.get("fgsm", {}).get("curve"):
        f = m["fgsm"]
        out += [
            "## Targeted FGSM: single network vs ensemble (Fig. 6)",
            "",
            f"{f['examples']} correctly classified test examples; adversarial examples crafted on one generated "
            f"network, tested on it and on an ensemble of {f['ensemble_size']} (majority vote).",
            "",
            common.markdown_table(f["curve"]),
            "",
            "![fgsm](fgsm.png)",
            "",
        ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    common.run(main)
