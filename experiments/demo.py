"""The flagship demo: a hypernetwork's generated ensemble vs a directly trained network, then serving.

On Fashion-MNIST (or scikit-learn's digits where Fashion-MNIST is absent) it
1. trains an entropy-regularised hypernetwork (Deutsch 2018: Table 2 generator, λ·CE − Ĥ with gauge
   fixing) on classes 0–4 of the Deutsch MNIST target, checkpointed and resumable;
2. trains the same target directly for the same number of steps (the baseline);
3. evaluates both on the held-in test classes (accuracy, NLL, ECE) and as out-of-distribution detectors
   of the held-out classes 5–9 (AUROC/AUPRC/FPR@95 of predictive entropy);
4. writes metrics.json, report.md and figures, and exports the generator as a SavedModel
   (``<output_dir>/saved_model``: ``predict(x, n, seed)`` and ``sample_weights(seed, n)``).

    python -m experiments.demo --output_dir=runs/demo            # ~4 min on a 2-core CPU
"""

from __future__ import annotations

import time

from absl import app, flags

from experiments import common

common.define_flags(dataset="fashion_mnist", steps=500, batch_size=512, checkpoint_every=250)
flags.DEFINE_integer("networks_per_step", 32, "Networks generated per training step (K); each sees batch_size/K images.")
flags.DEFINE_float("lam", 1e3, "λ, weight of the cross-entropy against the entropy.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate of the hypernetwork.")
flags.DEFINE_integer("ensemble_size", 32, "Networks in the evaluated generated ensemble.")
flags.DEFINE_integer("histogram_networks", 100, "Generated networks whose single accuracy is plotted.")
flags.DEFINE_integer("histogram_images", 2000, "In-distribution test images the single networks are scored on.", lower_bound=1)
flags.DEFINE_string("in_classes", "0-4", "Training (in-distribution) classes; the others are OOD.")
flags.DEFINE_integer("train_subset", None, "Use only this many training examples.")
flags.DEFINE_integer("test_subset", None, "Use only this many test examples (per split).")
common.quick_defaults(dataset="digits", steps=150, batch_size=256, networks_per_step=16, ensemble_size=16,
                      histogram_networks=50, histogram_images=500, checkpoint_every=150)
FLAGS = flags.FLAGS


def main(argv):
    ctx = common.setup(argv)
    t_start = time.time()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    import hyperkeras as hk
    from hyperkeras import baselines, ensembles, metrics
    from hyperkeras.io import save_figure

    dataset = FLAGS.dataset
    resize = 28 if dataset == "digits" else None
    in_classes = hk.data.parse_classes(FLAGS.in_classes)
    out_classes = tuple(c for c in range(10) if c not in in_classes)
    load = dict(data_dir=FLAGS.data_dir, resize=resize, seed=ctx.seed)
    x, y = hk.data.load_arrays(dataset, "train", classes=in_classes, subset=FLAGS.train_subset, **load)
    x_in, y_in = hk.data.load_arrays(dataset, "test", classes=in_classes, subset=FLAGS.test_subset, **load)
    x_out, _ = hk.data.load_arrays(dataset, "test", classes=out_classes, subset=FLAGS.test_subset, **load)
    if ctx.batch_size % FLAGS.networks_per_step:
        raise flags.ValidationError(
            f"--batch_size ({ctx.batch_size}) must be a multiple of --networks_per_step ({FLAGS.networks_per_step})."
        )

    # 1. The hypernetwork.
    with ctx.strategy.scope():
        target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist", input_shape=x.shape[1:], seed=ctx.seed))
        model = hk.models.EntropyHypernetwork(
            target, hk.generators.DeutschGenerator.paper_config(target, seed=ctx.seed), lam=FLAGS.lam,
            num_networks=FLAGS.networks_per_step, seed=ctx.seed,
        )
        model.compile(optimizer=hk.optimizers.FusedAdam(FLAGS.learning_rate))

    make_dataset = common.array_stream(x, y, ctx.batch_size, ctx.seed)

    t0 = time.time()
    common.train(model, make_dataset, ctx, name="hypernetwork")
    hyper_train_s = time.time() - t0

    # 2. The direct baseline: same target, same number of steps, batches of batch_size / K images
    #    (what each generated network sees per step).
    t0 = time.time()
    with common.stage("direct baseline: %d steps", max(1, ctx.steps)):
        direct = baselines.train_direct(
            "deutsch_mnist", x, y, seeds=[ctx.seed], steps=max(1, ctx.steps), batch_size=ctx.batch_size // FLAGS.networks_per_step,
            build_kwargs={"input_shape": x.shape[1:]}, verbose=common.verbose(),
        )[0]
    direct_train_s = time.time() - t0

    # 3. Evaluation.
    h_x, h_y = x_in[:FLAGS.histogram_images], y_in[:FLAGS.histogram_images]
    with common.stage("evaluation: ensemble of %d and the direct network on %d + %d test images, %d single networks "
                      "on %d", FLAGS.ensemble_size, len(x_in), len(x_out), FLAGS.histogram_networks, len(h_y)):
        v = common.verbose()
        ens_in = ensembles.predict(model, x_in, n=FLAGS.ensemble_size, seed=1, verbose=v)
        ens_out = ensembles.predict(model, x_out, n=FLAGS.ensemble_size, seed=1, verbose=v)
        dir_in = ensembles.predict(direct, x_in, verbose=v)
        dir_out = ensembles.predict(direct, x_out, verbose=v)
        hist = ensembles.predict(model, h_x, n=FLAGS.histogram_networks, seed=2, verbose=v)
    single_acc = hist.member_accuracy(h_y)

    rows = {
        f"generated ensemble (n={FLAGS.ensemble_size})": (ens_in, ens_out),
        "direct network": (dir_in, dir_out),
    }
    results = {}
    for name, (pin, pout) in rows.items():
        summary = metrics.classification_summary(pin.mean_probs, y_in)
        summary.update({f"ood_{k}": v for k, v in metrics.ood_scores(pin.predictive_entropy, pout.predictive_entropy).items()})
        results[name] = summary
    results["generated single networks"] = {
        "accuracy_mean": float(single_acc.mean()), "accuracy_min": float(single_acc.min()),
        "accuracy_max": float(single_acc.max()), "networks": int(len(single_acc)), "test_images": int(len(h_y)),
    }

    # Figures.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    direct_acc = results["direct network"]["accuracy"]
    axes[0].hist(single_acc * 100, bins=30, color="tab:orange", alpha=0.8, label="generated networks")
    axes[0].axvline(direct_acc * 100, color="k", ls="--", label="direct network")
    axes[0].axvline(results[f"generated ensemble (n={FLAGS.ensemble_size})"]["accuracy"] * 100, color="tab:red",
                    label="generated ensemble")
    axes[0].set(xlabel="test accuracy (%)", ylabel="networks", title=f"{len(single_acc)} generated networks ({len(h_y)} test images)")
    axes[0].legend()
    for (name, (pin, pout)), color in zip(rows.items(), ("tab:red", "k")):
        for scores, ls, label in ((pin.predictive_entropy, "-", "in"), (pout.predictive_entropy, "--", "out")):
            s = np.sort(scores)
            axes[1].plot(s, np.arange(1, len(s) + 1) / len(s), color=color, ls=ls, label=f"{name}: {label}")
    axes[1].set(xlabel="predictive entropy (nats)", ylabel="empirical CDF",
                title=f"classes {FLAGS.in_classes} in-distribution, others OOD")
    axes[1].legend(fontsize=7)
    save_figure(fig, ctx.path("demo.png"))

    # 4. Serving.
    common.save_model(model, ctx.path("hypernetwork.keras"))
    export_path = hk.export.export_generator(model, ctx.path("saved_model"))
    served = tf.saved_model.load(export_path)
    check = served.predict(x=tf.constant(x_in[:8]), n=tf.constant(4), seed=tf.constant(0, tf.int64))
    if not np.all(np.isfinite(check["mean_probs"].numpy())):
        raise RuntimeError("the exported SavedModel returned non-finite probabilities")

    total_s = time.time() - t_start
    out = {
        "dataset": dataset, "in_classes": list(in_classes), "steps": ctx.steps, "results": results,
        "hypernetwork_train_s": round(hyper_train_s, 1), "direct_train_s": round(direct_train_s, 1),
        "total_s": round(total_s, 1), "saved_model": export_path,
        "generator_params": int(sum(int(np.prod(v.shape)) for v in model.generator.trainable_variables)), "target_params": target.num_params,
    }
    table = common.markdown_table(
        [{"model": k, **{m: v for m, v in r.items() if m in ("accuracy", "nll", "ece", "ood_auroc", "ood_auprc")}}
         for k, r in results.items() if "accuracy" in r],
        ["model", "accuracy", "nll", "ece", "ood_auroc", "ood_auprc"],
    )
    s = results["generated single networks"]
    report = f"""# hyperkeras demo: generated ensemble vs direct training

Dataset **{dataset}**, trained on classes {FLAGS.in_classes}; OOD = classes {",".join(map(str, out_classes))}.
{ctx.steps} steps for both the hypernetwork (K = {FLAGS.networks_per_step} networks × {ctx.batch_size // FLAGS.networks_per_step}
images per step, λ = {FLAGS.lam:g}) and the direct network (batch {ctx.batch_size // FLAGS.networks_per_step}).
Generator: {out['generator_params']:,} parameters; target: {target.num_params:,} weights.

{table}

Single generated networks ({s['networks']}, on {s['test_images']} test images): mean accuracy {s['accuracy_mean']:.4f}
(min {s['accuracy_min']:.4f}, max {s['accuracy_max']:.4f}).

![demo](demo.png)

Training time: hypernetwork {hyper_train_s:.0f} s, direct {direct_train_s:.0f} s; whole demo {total_s:.0f} s.

Serve the exported generator (TensorFlow only):

```python
import tensorflow as tf
m = tf.saved_model.load("{export_path}")
out = m.predict(x=images, n=tf.constant(100), seed=tf.constant(0, tf.int64))
out["mean_probs"], out["predictive_entropy"], out["probs"]
```
"""
    common.write_results(ctx, out, report)
    print(table)
    print(f"demo finished in {total_s:.0f} s -> {ctx.output_dir}/report.md")


if __name__ == "__main__":
    app.run(main)
