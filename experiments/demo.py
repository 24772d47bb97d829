"""The main job: a generated ensemble against a deep ensemble of 5 and one network, at one training budget.

On Fashion-MNIST (or scikit-learn's digits where Fashion-MNIST is absent), classes ``--in_classes``, it
1. trains a hypernetwork (``--method``; default ``svgd_weight``: a HyperGAN-style generator trained by
   Stein variational gradient descent in weight space, its K networks sharing each batch out — the best
   generated ensemble of the equal-budget study, docs/results/ensembles.md), checkpointed and resumable;
2. trains a deep ensemble of ``--deep_ensemble_size`` networks and one network of the same target with the
   same budget of ``--budget_images`` images forward and backward through target networks (each ensemble
   member gets 1/M of it);
3. evaluates all three on the held-in test classes (accuracy, NLL, ECE) and as out-of-distribution
   detectors of the held-out classes (AUROC/AUPRC/FPR@95 of predictive entropy);
4. writes metrics.json, report.md and demo.png, and exports the generator as a SavedModel
   (``<output_dir>/saved_model``: ``predict(x, n, seed)`` and ``sample_weights(seed, n)``).

    python -m experiments.demo --output_dir=runs/demo            # ~5 min on an idle 2-core CPU
"""

from __future__ import annotations

import time

from absl import flags

from experiments import common

common.define_flags(dataset="fashion_mnist", steps=0, batch_size=64, checkpoint_every=1000)
flags.DEFINE_enum(
    "method",
    "svgd_weight",
    ["svgd_weight", "entropy"],
    "Hypernetwork: svgd_weight (SVGD in weight space) or entropy (Deutsch's λ·CE − Ĥ).",
)
flags.DEFINE_integer(
    "budget_images",
    192_000,
    "Training budget of each of the three models: images forward and backward through target networks.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "networks_per_step", 8, "K, networks generated per step (each sees its share of the batch).", lower_bound=2
)
flags.DEFINE_float("repulsion", 0.1, "svgd_weight: factor of SVGD's repulsive term.", lower_bound=0.0)
flags.DEFINE_float("lam", 1e3, "entropy: λ, weight of the cross-entropy against the entropy.", lower_bound=0.0)
flags.DEFINE_float("hyper_learning_rate", 3e-4, "Adam learning rate of the hypernetwork.", lower_bound=0.0)
flags.DEFINE_float(
    "baseline_learning_rate", 1e-3, "Adam learning rate of the directly trained networks.", lower_bound=0.0
)
flags.DEFINE_integer("deep_ensemble_size", 5, "M, networks of the deep ensemble.", lower_bound=2)
common.renamed_flag(
    "learning_rate", "hyper_learning_rate", "the hypernetwork's rate; the baselines' is --baseline_learning_rate"
)
common.renamed_flag("ensemble_size", "deep_ensemble_size")
flags.DEFINE_integer("eval_networks", 10, "Networks in the evaluated generated ensemble.", lower_bound=1)
flags.DEFINE_integer("histogram_networks", 100, "Generated networks whose single accuracy is plotted.", lower_bound=1)
flags.DEFINE_string("in_classes", "0-4", "Training (in-distribution) classes; the others are OOD.")
flags.DEFINE_integer("train_subset", None, "Use only this many training examples.")
flags.DEFINE_integer("test_subset", None, "Use only this many test examples (per split).")
common.quick_defaults(
    dataset="digits", budget_images=12_800, batch_size=32, networks_per_step=4, eval_networks=8, histogram_networks=30
)
FLAGS = flags.FLAGS


def main(argv):
    ctx = common.setup(argv)
    if FLAGS["steps"].present:
        raise flags.ValidationError("demo sets each model's steps from --budget_images; do not pass --steps.")
    t_start = time.time()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk
    from hyperkeras import ensembles, metrics
    from hyperkeras.io import save_figure

    dataset = FLAGS.dataset
    resize = 28 if dataset == "digits" else None
    in_classes = hk.data.parse_classes(FLAGS.in_classes)
    out_classes = tuple(c for c in range(10) if c not in in_classes)
    load = dict(data_dir=FLAGS.data_dir, resize=resize, seed=ctx.seed)
    x, y = hk.data.load_arrays(dataset, "train", classes=in_classes, subset=FLAGS.train_subset, **load)
    x_in, y_in = hk.data.load_arrays(dataset, "test", classes=in_classes, subset=FLAGS.test_subset, **load)
    x_out, _ = hk.data.load_arrays(dataset, "test", classes=out_classes, subset=FLAGS.test_subset, **load)
    batch, members = ctx.batch_size, FLAGS.deep_ensemble_size
    steps = FLAGS.budget_images // batch  # the hypernetwork shares each batch out: batch images per step
    member_steps = FLAGS.budget_images // (members * batch)
    if member_steps < 1:
        raise flags.ValidationError(
            f"--budget_images={FLAGS.budget_images} is less than one step of each of the "
            f"{members} ensemble members ({members * batch} images)."
        )
    kw = {"input_shape": x.shape[1:], "num_classes": int(max(in_classes)) + 1}

    # 1. The hypernetwork.
    with ctx.strategy.scope():
        target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist", seed=ctx.seed, **kw))
        model = common.build_hypernetwork(
            FLAGS.method,
            target,
            num_networks=FLAGS.networks_per_step,
            seed=ctx.seed,
            lam=FLAGS.lam,  # entropy
            repulsion=FLAGS.repulsion,  # svgd_weight: a HyperGAN generator of 64 noise, 32 code, 256 units
            learning_rate=FLAGS.hyper_learning_rate,
        )
    common.train(model, common.array_stream(x, y, batch, ctx.seed), ctx, steps=steps, name="hypernetwork")

    # 2. The baselines at the same budget: a deep ensemble (member i from seed + 1000 + i; member 0 is also
    #    reported alone) and one network trained for the whole budget.
    def direct(seeds, n_steps, names):
        return common.train_direct_networks(
            lambda seed: hk.targets.build_model("deutsch_mnist", seed=seed, **kw),
            x,
            y,
            ctx,
            seeds=seeds,
            names=names,
            steps=n_steps,
            learning_rate=FLAGS.baseline_learning_rate,
        )

    with common.stage("deep ensemble: %d networks x %d steps", members, member_steps):
        deep = direct(
            [ctx.seed + 1000 + i for i in range(members)], member_steps, [f"deep_ensemble_{i}" for i in range(members)]
        )
    with common.stage("one network: %d steps", steps):
        (single,) = direct([ctx.seed + 2000], steps, ["single"])
    # Training wall time summed over the run's sessions (a resumed run counts its earlier ones too).
    times = {
        "hypernetwork": ctx.train_seconds["hypernetwork"],
        "deep ensemble": sum(ctx.train_seconds[f"deep_ensemble_{i}"] for i in range(members)),
        "one network": ctx.train_seconds["single"],
    }

    # 3. Evaluation.
    label = f"{FLAGS.method} ensemble (n={FLAGS.eval_networks})"
    sources = {
        label: dict(source=model, n=FLAGS.eval_networks, seed=1),
        f"deep ensemble ({members})": dict(source=deep),
        "one network": dict(source=single),
    }
    results, preds = {}, {}
    h_x, h_y = x_in[:2000], y_in[:2000]
    with common.stage(
        "evaluation on %d + %d test images; %d single generated networks",
        len(x_in),
        len(x_out),
        FLAGS.histogram_networks,
    ):
        v = common.verbose()
        for name, src in sources.items():
            pin, pout = (ensembles.predict(**src, x=data, verbose=v) for data in (x_in, x_out))
            preds[name] = (pin, pout)
            results[name] = metrics.classification_summary(pin.mean_probs, y_in)
            results[name].update(
                {
                    f"ood_{k}": val
                    for k, val in metrics.ood_scores(pin.predictive_entropy, pout.predictive_entropy).items()
                }
            )
            if pin.num_networks > 1:
                results[name]["disagreement"] = metrics.disagreement(pin.member_predictions)
        hist = ensembles.predict(model, h_x, n=FLAGS.histogram_networks, seed=2, verbose=v)
    single_acc = hist.member_accuracy(h_y)
    results["generated single networks"] = {
        "accuracy_mean": float(single_acc.mean()),
        "accuracy_min": float(single_acc.min()),
        "accuracy_max": float(single_acc.max()),
        "networks": int(len(single_acc)),
        "test_images": int(len(h_y)),
    }
    deep_name = f"deep ensemble ({members})"
    verdict = common.at_least_as_good(results[label], results[deep_name], ("accuracy", "nll", "ece", "ood_auroc"))
    wins = verdict["at_least_as_good_on"]

    # Figures.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].hist(single_acc * 100, bins=30, color="tab:orange", alpha=0.8, label="single generated networks")
    for name, color, ls in ((label, "tab:red", "-"), (deep_name, "tab:blue", "-"), ("one network", "k", "--")):
        axes[0].axvline(results[name]["accuracy"] * 100, color=color, ls=ls, label=name)
    axes[0].set(
        xlabel="test accuracy (%)",
        ylabel="networks",
        title=f"{len(single_acc)} generated networks ({len(h_y)} test images)",
    )
    axes[0].legend(fontsize=7)
    for (name, (pin, pout)), color in zip(preds.items(), ("tab:red", "tab:blue", "k")):
        for scores, ls, tag in ((pin.predictive_entropy, "-", "in"), (pout.predictive_entropy, "--", "out")):
            s = np.sort(scores)
            axes[1].plot(s, np.arange(1, len(s) + 1) / len(s), color=color, ls=ls, label=f"{name}: {tag}")
    axes[1].set(
        xlabel="predictive entropy (nats)",
        ylabel="empirical CDF",
        title=f"classes {FLAGS.in_classes} in-distribution (solid), others OOD (dashed)",
    )
    axes[1].legend(fontsize=6)
    save_figure(fig, ctx.path("demo.png"))
    plt.close(fig)

    # 4. Serving.
    common.save_model(model, ctx.path("hypernetwork.keras"))
    export_path = hk.export.export_generator(model, ctx.path("saved_model"))
    served = tf.saved_model.load(export_path)
    check = served.predict(x=tf.constant(x_in[:8]), n=tf.constant(4), seed=tf.constant(0, tf.int64))
    if not np.all(np.isfinite(check["mean_probs"].numpy())):
        raise RuntimeError("the exported SavedModel returned non-finite probabilities")

    total_s = time.time() - t_start
    out = {
        "dataset": dataset,
        "in_classes": list(in_classes),
        "method": FLAGS.method,
        "budget_images": FLAGS.budget_images,
        "steps": {"hypernetwork": steps, "deep_ensemble_member": member_steps, "one_network": steps},
        "results": results,
        "at_least_as_good_as_deep_ensemble_on": wins,
        "train_s": {k: round(v, 1) for k, v in times.items()},
        "total_s": round(total_s, 1),
        "saved_model": export_path,
        "generator_params": int(sum(int(np.prod(v.shape)) for v in model.generator.trainable_variables)),
        "target_params": target.num_params,
    }
    table = common.markdown_table(
        [
            {
                "model": k,
                **{
                    m: val
                    for m, val in r.items()
                    if m in ("accuracy", "nll", "ece", "ood_auroc", "ood_auprc", "disagreement")
                },
            }
            for k, r in results.items()
            if "accuracy" in r
        ],
        ["model", "accuracy", "nll", "ece", "ood_auroc", "ood_auprc", "disagreement"],
    )
    s = results["generated single networks"]
    report = f"""# hyperkeras demo: a generated ensemble vs a deep ensemble of {members}, at one training budget

Dataset **{dataset}**, trained on classes {FLAGS.in_classes}; OOD = classes {",".join(map(str, out_classes))}.
Each model's budget: {FLAGS.budget_images:,} images forward and backward through target networks —
the hypernetwork ({FLAGS.method}, K = {FLAGS.networks_per_step} networks sharing each batch of {batch} out) and the one
network {steps} steps, each deep-ensemble member {member_steps} steps, all on batches of {batch}.
Generator: {out["generator_params"]:,} parameters; target: {target.num_params:,} weights.

{table}

At least as good as the deep ensemble of {members} on: {", ".join(wins) or "none"} (of accuracy, NLL, ECE, OOD AUROC).
Single generated networks ({s["networks"]}, on {s["test_images"]} test images): mean accuracy {s["accuracy_mean"]:.4f}
(min {s["accuracy_min"]:.4f}, max {s["accuracy_max"]:.4f}).

![demo](demo.png)

Training time (summed over the run's sessions): {", ".join(f"{k} {v:.0f} s" for k, v in times.items())}; this session's whole demo {total_s:.0f} s.

Serve the exported generator (TensorFlow only):

```python
import tensorflow as tf
m = tf.saved_model.load("{export_path}")
images = tf.random.uniform([32, {", ".join(str(d) for d in target.input_shape)}])  # your float32 images here
out = m.predict(x=images, n=tf.constant(100), seed=tf.constant(0, tf.int64))
out["mean_probs"], out["predictive_entropy"], out["probs"]
```
"""
    common.write_results(ctx, out, report)
    print(table)
    print(f"demo finished in {total_s:.0f} s -> {ctx.output_dir}/report.md")


if __name__ == "__main__":
    common.run(main)
