"""Adversarial examples against generated networks (Ratzlaff & Fuxin §4.5, Figs. 4–5; Deutsch Fig. 6).

For any hypernetwork with ``.target`` and ``.sample(n, seed)`` (``--hypernetwork=hypergan`` or ``deutsch``):

1. **Transfer to fresh networks (HyperGAN Fig. 4).** FGSM and PGD examples are made against ONE
   generated network and tested on fresh ensembles of ``--test_sizes`` networks (5, 10, 100, 1,000):
   ensemble accuracy and the fraction of fresh networks each example fools.
2. **Attacking ensembles (§4.5).** Examples are made against an ensemble of N generated networks
   (``--attack_sizes``) and tested on a fresh ensemble of the same size; the baselines (one directly
   trained network, deep ensembles of 5 and 10, MC dropout) are attacked white-box and tested as they are.
   As in the paper, the attacked ensemble fuses its members' logits (``--ensemble_loss=fused_logits``;
   ``mean_probs`` attacks the mean probability instead) and PGD runs until the ensemble is fooled, at
   most ``--pgd_steps`` steps (``--until_fooled``); FGSM is one step of size ε. Accuracies are reported
   under both rules (``adv_accuracy``: mean probabilities, ``adv_accuracy_fused``: fused logits).
3. **Detection (Fig. 5).** The predictive entropy of the testing ensemble flags an input when it
   exceeds the 95th percentile of its entropy on the clean examples (5% false positives); we report the
   detection rate on adversarial inputs and the clean-vs-adversarial AUROC.
4. **Deutsch's protocol (his Fig. 6).** One generated network θ; test examples it classifies correctly;
   a random target class y' ≠ y; targeted fast gradient sign steps x − ε·sign(∇ₓCE(θ; x, y')) for ε in
   [0, 0.24]; success = the prediction becomes y', for θ itself (dashed) and for a fresh ensemble of
   ``--deutsch_ensemble`` (100) generated networks (solid).

    python -m experiments.adversarial --output_dir=runs/adversarial --load_from=runs/hypergan_classify
    python -m experiments.adversarial --hypernetwork=deutsch --target=deutsch_mnist --load_from=runs/deutsch

Writes metrics.json, report.md, transfer.png, detection.png, deutsch_fgsm.png.
"""

from absl import flags

from experiments import common
from experiments import hypergan_common as hc

common.define_flags(dataset="fashion_mnist", steps=5000, batch_size=32)
hc.define_flags(hypernetwork_choice=True)
flags.DEFINE_integer("num_examples", 1000, "Test examples to attack.", lower_bound=1)
flags.DEFINE_string("epsilons", "0.05,0.1,0.2,0.3", "L∞ sizes of the FGSM/PGD perturbations.")
flags.DEFINE_list("attacks", ["fgsm", "pgd"], "Attacks to run: fgsm, pgd.")
flags.DEFINE_integer("pgd_steps", 40, "PGD iterations.", lower_bound=1)
flags.DEFINE_string("attack_sizes", "5,10,100", "Sizes of the generated ensembles that are attacked directly.")
flags.DEFINE_string(
    "test_sizes", "5,10,100,1000", "Sizes of the fresh ensembles that single-network attacks are tested on."
)
flags.DEFINE_enum(
    "ensemble_loss",
    "fused_logits",
    ["fused_logits", "mean_probs"],
    "Loss the ensemble attacks of §4.5 maximise: fused logits (the paper) or the mean probability.",
)
flags.DEFINE_bool("until_fooled", True, "§4.5: PGD stops moving an example once the attacked ensemble is fooled.")
flags.DEFINE_integer("mc_attack_samples", 10, "Dropout passes per gradient when attacking MC dropout.", lower_bound=1)
flags.DEFINE_float(
    "deutsch_max_eps", 0.24, "Deutsch protocol: largest ε (fraction of the pixel range).", lower_bound=0.0
)
flags.DEFINE_integer(
    "deutsch_points", 13, "Deutsch protocol: number of ε values in [0, deutsch_max_eps].", lower_bound=2
)
flags.DEFINE_integer("deutsch_ensemble", 100, "Deutsch protocol: size of the fresh ensemble.", lower_bound=1)
flags.DEFINE_bool("deutsch_protocol", True, "Also run Deutsch's targeted FGSM protocol.")
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
    num_examples=200,
    epsilons="0.1,0.2",
    pgd_steps=5,
    attack_sizes="5",
    test_sizes="5,20",
    mc_attack_samples=4,
    deutsch_points=5,
    deutsch_ensemble=20,
)
FLAGS = flags.FLAGS


def _detection(h_clean, h_adv):
    import numpy as np

    from hyperkeras import metrics

    threshold = float(np.quantile(h_clean, 0.95))
    return {"detect_at_fpr5": float(np.mean(h_adv > threshold)), "auroc": metrics.ood_scores(h_clean, h_adv)["auroc"]}


def _evaluate(source, x_clean, x_adv, y, n=None, seed=None):
    """Accuracy on clean/adversarial inputs, detection by entropy and per-example fooled fraction."""
    import numpy as np

    from hyperkeras import ensembles, metrics

    kw = dict(n=n, seed=seed, batch_size=FLAGS.eval_batch_size, verbose=common.verbose())
    clean = ensembles.predict(source, x_clean, **kw)
    adv = ensembles.predict(source, x_adv, **kw)
    fooled = np.mean(adv.member_predictions != y[None], axis=0)  # per example: fraction of networks fooled
    row = {
        "clean_accuracy": metrics.accuracy(clean.mean_probs, y),
        "adv_accuracy": metrics.accuracy(adv.mean_probs, y),
        "adv_accuracy_fused": float(np.mean(adv.fused_prediction == y)),
        "fooled_networks": float(np.mean(fooled)),
        **_detection(clean.predictive_entropy, adv.predictive_entropy),
    }
    return row, fooled


def deutsch_protocol(gen, x, y, seed):
    """Deutsch (2018) Fig. 6: targeted fast gradient sign against one generated network
    (`hyperkeras.attacks.deutsch_fgsm_curve`; the fresh ensemble decides by majority vote)."""
    import numpy as np

    from hyperkeras import attacks, ensembles

    eps_values = np.linspace(0.0, FLAGS.deutsch_max_eps, FLAGS.deutsch_points)
    with common.stage("Deutsch protocol: %d ε values, fresh ensemble of %d", len(eps_values), FLAGS.deutsch_ensemble):
        res = attacks.deutsch_fgsm_curve(
            ensembles.as_members(gen, n=1, seed=seed),
            ensembles.as_members(gen, n=FLAGS.deutsch_ensemble, seed=seed + 1),
            x,
            y,
            eps_values,
            seed=seed,
            batch_size=FLAGS.eval_batch_size,
        )
    if not res["examples"]:
        from absl import logging

        logging.warning(
            "Deutsch protocol skipped: the sampled network classifies none of the %d examples correctly.", len(y)
        )
    return res["curve"], res["examples"]


def main(argv):
    ctx = common.setup(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hyperkeras import attacks, data, ensembles, io

    bad = set(FLAGS.attacks) - {"fgsm", "pgd"}
    if bad:
        raise flags.ValidationError(f"--attacks must be fgsm and/or pgd, got {sorted(bad)}.")
    epsilons = hc.float_list(FLAGS.epsilons)
    attack_sizes, test_sizes = hc.int_list(FLAGS.attack_sizes), hc.int_list(FLAGS.test_sizes)
    resize = 28 if FLAGS.dataset == "digits" and FLAGS.target in ("hypergan_mnist", "deutsch_mnist") else None
    x, y = data.load_arrays(FLAGS.dataset, "train", data_dir=FLAGS.data_dir, resize=resize, seed=ctx.seed)
    xt, yt = data.load_arrays(FLAGS.dataset, "test", data_dir=FLAGS.data_dir, resize=resize, seed=ctx.seed)
    xs, ys = xt[: FLAGS.num_examples], yt[: FLAGS.num_examples]
    num_classes = int(max(y.max(), yt.max())) + 1
    gen = hc.train_hypernetwork(ctx, x, y, FLAGS.hypernetwork, num_classes=num_classes, load_from=FLAGS.load_from)
    label = "HyperGAN" if FLAGS.hypernetwork == "hypergan" else "Deutsch"
    seed_attack, seed_test = ctx.seed + 101, ctx.seed + 202

    def make(attack, source, eps, n=None, seed=None, ensemble=False):
        """`ensemble`: the §4.5 protocol (--ensemble_loss, PGD --until_fooled); else one network's loss."""
        loss = FLAGS.ensemble_loss if ensemble else "mean_probs"
        if attack == "fgsm":
            return attacks.fgsm(source, xs, ys, eps, n=n, seed=seed, batch_size=FLAGS.eval_batch_size, loss=loss)
        return attacks.pgd(
            source,
            xs,
            ys,
            eps,
            steps=FLAGS.pgd_steps,
            n=n,
            seed=seed,
            batch_size=FLAGS.eval_batch_size,
            loss=loss,
            until_fooled=ensemble and FLAGS.until_fooled,
        )

    transfer, direct_rows, fooled_hist = [], [], {}
    total = len(FLAGS.attacks) * len(epsilons)
    for i, (attack, eps) in enumerate((a, e) for a in FLAGS.attacks for e in epsilons):
        with common.stage(
            "%s attacks %d/%d (%s, ε=%g) on %s networks, %d examples",
            label,
            i + 1,
            total,
            attack,
            eps,
            "1 and " + ",".join(map(str, attack_sizes)),
            len(ys),
        ):
            # 1. one generated network attacked, fresh ensembles tested (Fig. 4)
            x_adv = make(attack, ensembles.as_members(gen, n=1, seed=seed_attack), eps)
            for m in test_sizes:
                row, fooled = _evaluate(gen, xs, x_adv, ys, n=m, seed=seed_test)
                transfer.append({"attack": attack, "eps": eps, "test_networks": m, **row})
                if m == max(test_sizes):
                    fooled_hist[(attack, eps)] = fooled
            # 2. ensembles attacked directly; generated ones tested on a fresh ensemble of equal size
            for n in attack_sizes:
                x_adv = make(attack, ensembles.as_members(gen, n=n, seed=seed_attack), eps, ensemble=True)
                row, _ = _evaluate(gen, xs, x_adv, ys, n=n, seed=seed_test)
                direct_rows.append({"attack": attack, "eps": eps, "method": f"{label} {n} (fresh)", **row})
    if FLAGS.baselines:
        models = hc.train_baselines(ctx, x, y, num_classes=num_classes, load_from=FLAGS.load_from)
        sources = {"single net": models["direct"][:1]}
        for k in hc.deep_ensemble_sizes(len(models["direct"]), (5, FLAGS.deep_ensemble_size)):
            sources[f"deep ensemble {k}"] = models["direct"][:k]
        for i, (attack, eps) in enumerate((a, e) for a in FLAGS.attacks for e in epsilons):
            with common.stage(
                "baseline attacks %d/%d (%s, ε=%g) on %s and MC dropout", i + 1, total, attack, eps, ", ".join(sources)
            ):
                for name, source in sources.items():
                    x_adv = make(attack, source, eps, ensemble=True)
                    row, _ = _evaluate(source, xs, x_adv, ys)
                    direct_rows.append({"attack": attack, "eps": eps, "method": name, **row})
                mc = ensembles.MCDropout(models["dropout"])
                x_adv = make(attack, mc, eps, n=FLAGS.mc_attack_samples, ensemble=True)
                row, _ = _evaluate(mc, xs, x_adv, ys, n=FLAGS.mc_samples)
                direct_rows.append({"attack": attack, "eps": eps, "method": "MC dropout", **row})

    deutsch_rows, deutsch_n = [], 0
    if FLAGS.deutsch_protocol:
        deutsch_rows, deutsch_n = deutsch_protocol(gen, xs, ys, ctx.seed + 303)

    # ------------------------------------------------------------------ figures
    if fooled_hist:
        fig, axes = plt.subplots(1, len(fooled_hist), figsize=(3.2 * len(fooled_hist), 3), sharey=True)
        for ax, ((attack, eps), fooled) in zip(np.atleast_1d(axes), fooled_hist.items()):
            ax.hist(fooled, bins=20, range=(0, 1))
            ax.set_title(f"{attack.upper()} ε={eps}", fontsize=9)
            ax.set_xlabel(f"fraction of {max(test_sizes)} fresh nets fooled", fontsize=8)
        np.atleast_1d(axes)[0].set_ylabel("examples")
        io.save_figure(fig, ctx.path("transfer.png"))
        plt.close(fig)
    fig, axes = plt.subplots(1, len(FLAGS.attacks), figsize=(5.5 * len(FLAGS.attacks), 4), squeeze=False)
    for ax, attack in zip(axes[0], FLAGS.attacks):
        methods = list(dict.fromkeys(r["method"] for r in direct_rows))
        for method in methods:
            pts = [
                (r["eps"], r["detect_at_fpr5"]) for r in direct_rows if r["method"] == method and r["attack"] == attack
            ]
            ax.plot(*zip(*pts), "o-", label=method)
        ax.set_xlabel("ε")
        ax.set_ylabel("detected at 5% false positives")
        ax.set_title(f"{attack.upper()}: detection by predictive entropy")
        ax.legend(fontsize=7)
    io.save_figure(fig, ctx.path("detection.png"))
    plt.close(fig)
    if deutsch_rows:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        e = [r["eps"] for r in deutsch_rows]
        ax.plot(e, [r["single_success"] for r in deutsch_rows], "--", label="single generated network")
        ax.plot(e, [r["ensemble_success"] for r in deutsch_rows], "-", label=f"ensemble of {FLAGS.deutsch_ensemble}")
        ax.set_xlabel("ε (fraction of the pixel range)")
        ax.set_ylabel("targeted attack success")
        ax.set_title(f"Deutsch protocol, {label} generator")
        ax.legend()
        io.save_figure(fig, ctx.path("deutsch_fgsm.png"))
        plt.close(fig)

    out = {
        "generator": FLAGS.hypernetwork,
        "dataset": FLAGS.dataset,
        "num_examples": int(len(ys)),
        "transfer": transfer,
        "direct": direct_rows,
        "deutsch_protocol": deutsch_rows,
        "deutsch_protocol_examples": deutsch_n,
    }
    report = (
        f"# Adversarial examples ({label} generator, {FLAGS.target} on {FLAGS.dataset}, {len(ys)} test examples)\n\n"
        "## Attacks on one generated network, tested on fresh ensembles (Fig. 4)\n\n"
        + common.markdown_table(transfer)
        + "\n\n## Attacks on ensembles; generated ones tested on a fresh ensemble of the same size (Fig. 5)\n\n"
        "`detect_at_fpr5`: adversarial inputs whose predictive entropy exceeds the clean 95th percentile.\n\n"
        + common.markdown_table(direct_rows)
        + (
            f"\n\n## Deutsch's targeted FGSM protocol ({deutsch_n} correctly classified examples)\n\n"
            + common.markdown_table(deutsch_rows)
            if deutsch_rows
            else ""
        )
        + "\n\n![transfer](transfer.png)\n![detection](detection.png)\n"
        + ("![deutsch](deutsch_fgsm.png)\n" if deutsch_rows else "")
    )
    common.write_results(ctx, out, report)
    print(report)


if __name__ == "__main__":
    common.run(main)
