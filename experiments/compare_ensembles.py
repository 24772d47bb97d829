"""Generated ensembles against deep ensembles, MC dropout and one network, at the same training budget.

Every method in ``--methods`` is trained on ``--dataset`` (its ``--classes``) with the same budget of
``--budget_images``: images passed forward and backward through target networks. A network trained S steps
on batches of B costs S·B, so a deep ensemble of M gets S = budget / (M·B) steps per member; a hypernetwork
whose K networks each see the whole batch of B costs K·B per step, one whose networks share the batch out
(Deutsch's protocol) B per step (plus K·probe for a function-space term on a probe batch). The generator's own
compute is not in the budget: the wall-clock training time is reported beside it.

Methods:
    single          one network (Adam)
    deep_ensemble   ``--deep_ensemble_size`` networks from different seeds (Lakshminarayanan et al., 2017)
    deep_ensemble_outlier
                    a deep ensemble whose members are each trained with svgd_outlier's outlier term
                    (`hyperkeras.baselines.OutlierExposure`: the same term on the same kind and number of
                    probes): the fair baseline for svgd_outlier
    mc_dropout      one network with dropout, ``--mc_samples`` stochastic passes (Gal & Ghahramani, 2016)
    entropy         Deutsch's EntropyHypernetwork (λ·CE − Ĥ of gauge-fixed weights; batch shared out)
    hypergan        HyperGAN (mixer + layer generators + latent discriminator; every network sees the batch)
    fs_entropy      HyperGAN generator, CE − ``--fs_weight``·Ĥ of the networks' log-probabilities on a probe batch
    svgd_weight     HyperGAN generator trained by SVGD in weight space (RBF kernel, median bandwidth)
    svgd_function   HyperGAN generator trained by SVGD in function space (predictions on the batch)
    svgd_mixup      svgd_weight + ``--mixup_weight``·Ĥ of the networks' predictions on mixtures of pairs of batch
                    examples (diversity between the training examples)
    svgd_outlier    svgd_weight + ``--outlier_weight``·OutlierEntropy: the ensemble's mean prediction pushed to high
                    entropy on ``--probe_size`` synthetic outliers per step (``--outlier_probe``, hyperkeras.probes);
                    with ``--outlier_mode=own`` each network's own entropy on its share of them (the fair baseline's
                    term and probe share)
    svgd_cka        svgd_weight + ``--cka_weight``·CKAEnergy: the networks' hidden-layer feature kernels (linear CKA)
                    on ``--probe_size`` probes (``--cka_probe``) pushed apart (HE-CKA's repulsion). Defaults from
                    smoke runs only (--quick, 9,600 digits): the hyperspherical energy (weights 1e-4 to 0.1) and
                    the mean CKA at weight >= 0.01 left the networks at chance — CKA is scale-invariant, so its
                    gradient grows as 1/(feature scale), and deutsch_mnist's hidden features start near 3e-3
                    with the first layer's kernels at CKA ≈ 0.9995; mean CKA at 0.001 trains

Evaluation, for ensembles of each size in ``--ensemble_sizes`` a method can form (one network: 1; a deep
ensemble: 1 and M; the others: all): accuracy, NLL, ECE, Brier on the test examples of ``--classes``; OOD
detection by predictive entropy (AUROC, AUPRC, FPR at 95% TPR) against the test examples of the other classes
and against ``--ood_dataset`` (any name `hyperkeras.data.load_arrays` knows, read from ``--ood_data_dir`` if
given; resized to the input size); the diversity of the members (pairwise disagreement, pairwise KL, mutual
information). Size 1 is the mean over single members (up to 10). Writes metrics.json, report.md (mean ± std
over ``--seeds``) and figures: accuracy vs ensemble size, entropy CDFs in/out, reliability diagrams.

Resumable: each (method, seed) is trained with checkpoints and its results kept in ``results/``; a restarted
run skips what is done.

    python -m experiments.compare_ensembles --quick
    python -m experiments.compare_ensembles --methods=single,deep_ensemble,svgd_function --seeds=0,1,2 \\
        --budget_images=480000 --output_dir=runs/compare
"""

import os

from absl import flags, logging

from experiments import common

common.define_flags(dataset="fashion_mnist", steps=0, batch_size=64, checkpoint_every=1000)
METHODS = (
    "single",
    "deep_ensemble",
    "deep_ensemble_outlier",
    "mc_dropout",
    "svgd_weight",
    "entropy",
    "hypergan",
    "svgd_function",
    "fs_entropy",
    "svgd_mixup",
    "svgd_outlier",
    "svgd_cka",
)
BASELINES = ("single", "deep_ensemble", "deep_ensemble_outlier", "mc_dropout")
HYPER = tuple(m for m in METHODS if m not in BASELINES)
SHIFTS = ("rotate", "blur", "contrast")  # the test set rotated 30°, Gaussian-blurred (σ = 1.5 px), contrast × 0.3
flags.DEFINE_list("methods", list(METHODS), f"Methods to train and compare: {', '.join(METHODS)}.")
flags.DEFINE_integer(
    "budget_images",
    480_000,
    "Training budget of every method: images forward and backward through target networks.",
    lower_bound=1,
)
flags.DEFINE_string("target", "deutsch_mnist", "Target architecture (hyperkeras.targets.available_targets()).")
flags.DEFINE_string("classes", "0-4", "In-distribution classes; test examples of the others are OOD ('all': none).")
flags.DEFINE_string("ood_dataset", "digits", "Second OOD set: a dataset name, or uniform_noise ('' for none).")
flags.DEFINE_string("ood_data_dir", None, "Folder with the OOD dataset's files (e.g. IDX files).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method is trained once per seed.")
flags.DEFINE_list(
    "ensemble_sizes",
    ["1", "5", "10"],
    "Ensemble sizes evaluated (100 costs ten times the evaluation of 10: about 1.6M forward passes per method "
    "and seed with every OOD and shifted set).",
)
flags.DEFINE_integer("deep_ensemble_size", 5, "M, networks of the deep ensemble.", lower_bound=1)
common.renamed_flag("ensemble_size", "deep_ensemble_size")
flags.DEFINE_integer("networks_per_step", 8, "K, networks generated per hypernetwork training step.", lower_bound=2)
flags.DEFINE_float("baseline_learning_rate", 1e-3, "Adam learning rate of the networks (baselines).", lower_bound=0.0)
flags.DEFINE_float("hyper_learning_rate", 3e-4, "Adam learning rate of the hypernetworks.", lower_bound=0.0)
common.renamed_flag(
    "learning_rate", "baseline_learning_rate", "the baselines' rate; the hypernetworks' is --hyper_learning_rate"
)
common.renamed_flag("generator_learning_rate", "hyper_learning_rate")
flags.DEFINE_float("dropout", 0.5, "Dropout rate of mc_dropout.", lower_bound=0.0, upper_bound=0.95)
flags.DEFINE_float("lam", 1e3, "entropy: λ, the weight of the cross-entropy.", lower_bound=0.0)
flags.DEFINE_float("beta", 1.0, "hypergan: β, the weight of the adversarial term.", lower_bound=0.0)
flags.DEFINE_float("fs_weight", 0.001, "fs_entropy: weight of the function-space entropy.", lower_bound=0.0)
flags.DEFINE_integer(
    "probe_size",
    8,
    "fs_entropy, svgd_mixup, svgd_outlier: probe examples per step, seen by every network (shared out among them "
    "with --outlier_mode=own); deep_ensemble_outlier: per member and step.",
    lower_bound=1,
)
flags.DEFINE_float(
    "mixup_weight", 0.01, "svgd_mixup: weight of the function-space entropy on mixed examples.", lower_bound=0.0
)
flags.DEFINE_float(
    "outlier_weight", 0.1, "svgd_outlier: weight of the outlier term (ensemble entropy on probes).", lower_bound=0.0
)
flags.DEFINE_float("cka_weight", 0.001, "svgd_cka: weight of CKAEnergy (see the module docstring).", lower_bound=0.0)
flags.DEFINE_enum("cka_energy", "hyperspherical", ["hyperspherical", "cka"], "svgd_cka: the energy of CKAEnergy.")
flags.DEFINE_enum(
    "cka_probe",
    "batch",
    ["batch", "smooth_noise", "noise", "augment", "mixup"],
    "svgd_cka: probe inputs of CKAEnergy ('batch': the first --probe_size examples of the batch).",
)
flags.DEFINE_enum(
    "outlier_probe",
    "smooth_noise",
    ["smooth_noise", "noise", "augment", "mixup"],
    "svgd_outlier, deep_ensemble_outlier: probe inputs.",
)
flags.DEFINE_enum(
    "outlier_mode",
    "mean",
    ["mean", "members", "own"],
    "svgd_outlier: OutlierEntropy's mode: the entropy of the ensemble's mean prediction on --probe_size probes "
    "('mean'), the members' mean entropy on them ('members'), or each network's entropy on its share of the "
    "--probe_size probes, shared out like the batch ('own': a deep_ensemble_outlier member's term and share).",
)
flags.DEFINE_float("repulsion", 0.1, "svgd_*: factor of the repulsive term (1 = SVGD).", lower_bound=0.0)
flags.DEFINE_float(
    "prior_std",
    0.0,
    "svgd_* in weight space: σ of a Gaussian prior N(0, σ²) on every generated weight (SVGD weight_decay "
    "1/(N σ²), N the training examples); 0 = no prior (the likelihood alone, flat along the networks' "
    "symmetries).",
    lower_bound=0.0,
)
flags.DEFINE_enum(
    "generator_init",
    "default",
    ["default", "hyperfan_in", "hyperfan_out"],
    "Generated methods but entropy/hypergan: the HyperGAN generator's initialisation (hyperfan: generated kernels "
    "start at the target initializer's variance; default: HyperGAN's, 0.04-0.07x of it here).",
)
flags.DEFINE_integer("noise_dim", 64, "Noise size of the HyperGAN generators.", lower_bound=1)
flags.DEFINE_integer("code_dim", 32, "Layer-code size of the HyperGAN generators.", lower_bound=1)
flags.DEFINE_integer("generator_units", 256, "Hidden units of the HyperGAN mixer and layer generators.", lower_bound=1)
flags.DEFINE_integer("train_subset", None, "Use only this many training examples.")
flags.DEFINE_integer("test_subset", 2000, "In-distribution test examples evaluated (None: all).")
flags.DEFINE_integer("ood_subset", 2000, "Examples of each OOD set evaluated (None: all).")
flags.DEFINE_integer("eval_batch_size", 500, "Examples per evaluation step.", lower_bound=1)
flags.DEFINE_enum(
    "synthetic_ood",
    "uniform_noise",
    ["uniform_noise", "bernoulli_noise", ""],
    "Synthetic OOD set, of a family no probe uses: pixel-wise uniform or Bernoulli noise images ('': none).",
)
flags.DEFINE_list(
    "shifts",
    list(SHIFTS),
    f"Shifted test sets (accuracy, NLL, ECE under shift): any of {', '.join(SHIFTS)} ('': none).",
)
flags.DEFINE_integer(
    "val_size", 2000, "Training examples held out of training (temperature scaling is fitted on them).", lower_bound=0
)
flags.DEFINE_bool("reevaluate", False, "Evaluate every (method, seed) again from its final checkpoint (no retraining).")
common.quick_defaults(
    dataset="digits",
    budget_images=9_600,
    seeds=["0"],
    ensemble_sizes=["1", "5"],
    methods=[
        "single",
        "deep_ensemble",
        "deep_ensemble_outlier",
        "svgd_weight",
        "fs_entropy",
        "svgd_outlier",
        "svgd_cka",
    ],
    batch_size=32,
    ood_dataset="uniform_noise",
    synthetic_ood="bernoulli_noise",
    test_subset=300,
    ood_subset=300,
    val_size=100,
    checkpoint_every=1000,
    generator_units=32,
    noise_dim=8,
    code_dim=8,
    networks_per_step=4,
    probe_size=4,
)
FLAGS = flags.FLAGS

MC_SAMPLES = 100


# ---------------------------------------------------------------------------------------------- data
def load_data(seed):
    """In-distribution train / validation / test arrays (labels renumbered 0..C−1; ``--val_size`` training
    examples held out of training, for temperature scaling and for choosing settings) and the OOD sets; with
    held-out classes, also ``val_ood``: up to ``--val_size`` *training* images of those classes, a near-OOD
    set for choosing settings that shares no image with the test sets."""
    import numpy as np

    from hyperkeras import data

    resize = 28 if FLAGS.dataset == "digits" and FLAGS.target in ("deutsch_mnist", "hypergan_mnist") else None
    load = dict(data_dir=FLAGS.data_dir, resize=resize, seed=seed)
    keep = data.parse_classes(FLAGS.classes)
    x, y = data.load_arrays(FLAGS.dataset, "train", subset=FLAGS.train_subset, **load)
    xt, yt = data.load_arrays(FLAGS.dataset, "test", **load)
    rng = np.random.RandomState(seed)
    sets, val_sets = {}, {}
    if keep is not None:
        inside = np.isin(y, keep)
        held_out_train = x[~inside]  # near-OOD images for choosing settings, never the test sets' own
        if len(held_out_train) and FLAGS.val_size:
            pick = np.random.RandomState(seed + 3).permutation(len(held_out_train))[: FLAGS.val_size]
            val_sets["held-out classes"] = held_out_train[pick]
        x, y = x[inside], y[inside]
        inside_t = np.isin(yt, keep)
        held_out = xt[~inside_t]
        if len(held_out):
            sets["held-out classes"] = held_out[rng.permutation(len(held_out))[: FLAGS.ood_subset]]
        xt, yt = xt[inside_t], yt[inside_t]
        mapping = {c: i for i, c in enumerate(sorted(set(keep)))}
        y = np.vectorize(mapping.get)(y).astype(np.int32)
        yt = np.vectorize(mapping.get)(yt).astype(np.int32)
    order = rng.permutation(len(yt))[: FLAGS.test_subset]
    xt, yt = xt[order], yt[order]
    ood = dict(subset=FLAGS.ood_subset, data_dir=FLAGS.ood_data_dir, in_dataset=FLAGS.dataset)
    if FLAGS.ood_dataset:
        sets[FLAGS.ood_dataset] = common.load_ood(FLAGS.ood_dataset, x.shape[1:], seed, **ood)
    if FLAGS.synthetic_ood:
        if FLAGS.synthetic_ood in sets:
            raise flags.ValidationError(f"--synthetic_ood={FLAGS.synthetic_ood} is already --ood_dataset.")
        sets[FLAGS.synthetic_ood] = common.load_ood(FLAGS.synthetic_ood, x.shape[1:], seed + 2, **ood)
    bad = [s for s in FLAGS.shifts if s not in SHIFTS]
    if bad:
        raise flags.ValidationError(f"--shifts: unknown {bad}; choose from {', '.join(SHIFTS)}.")
    shifted = {name: shift(xt, name) for name in FLAGS.shifts}
    if not 0 <= FLAGS.val_size < len(y):
        raise flags.ValidationError(f"--val_size={FLAGS.val_size} must leave training examples (there are {len(y)}).")
    split = np.random.RandomState(seed + 1).permutation(len(y))
    val, train = split[: FLAGS.val_size], split[FLAGS.val_size :]
    return dict(
        x=x[train],
        y=y[train],
        x_val=x[val],
        y_val=y[val],
        x_test=xt,
        y_test=yt,
        ood=sets,
        val_ood=val_sets,
        shifted=shifted,
    )


def shift(x, name):
    """The images `x` ``[N, H, W, C]`` under a distribution shift, in their own value range."""
    import numpy as np
    from scipy import ndimage

    lo, hi = float(x.min()), float(x.max())
    if name == "rotate":
        out = ndimage.rotate(x, 30.0, axes=(1, 2), reshape=False, order=1, mode="constant", cval=lo)
    elif name == "blur":
        out = ndimage.gaussian_filter(x, sigma=(0, 1.5, 1.5, 0))
    else:  # contrast
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        out = mean + 0.3 * (x - mean)
    return np.clip(out, lo, hi).astype(x.dtype)


# ---------------------------------------------------------------------------------------------- training
def steps_for(method):
    """(steps, images per step, networks trained) of `method` under the budget."""
    b, k = FLAGS.batch_size, FLAGS.networks_per_step
    per_step = {
        "single": b,
        "mc_dropout": b,
        "deep_ensemble": b,
        "deep_ensemble_outlier": b + FLAGS.probe_size,
        "entropy": b,
        "svgd_weight": b,
        "fs_entropy": b + k * FLAGS.probe_size,
        "svgd_mixup": b + k * FLAGS.probe_size,
        "svgd_outlier": b + (FLAGS.probe_size if FLAGS.outlier_mode == "own" else k * FLAGS.probe_size),
        "svgd_cka": b + k * FLAGS.probe_size,
        "hypergan": k * b,
        "svgd_function": k * b,
    }[method]
    members = FLAGS.deep_ensemble_size if method.startswith("deep_ensemble") else 1
    steps = FLAGS.budget_images // (per_step * members)
    if steps < 1:
        raise flags.ValidationError(
            f"--budget_images={FLAGS.budget_images} is less than one step of {method} ({per_step * members} images)."
        )
    return steps, per_step, members


def train_method(ctx, method, seed, x, y, num_classes):
    """Trains `method` with checkpoints under ``checkpoints/<method>_seed<seed>[_m]``; returns the ensemble
    source for `hyperkeras.ensembles` and the wall time."""
    import time

    import keras

    from hyperkeras import TargetNetwork, baselines, ensembles, targets

    steps, _, members = steps_for(method)
    kw = dict(input_shape=tuple(x.shape[1:]), num_classes=num_classes)
    t0 = time.time()
    if method in BASELINES:

        def build(s):  # mc_dropout: Dropout before every weighted layer but the first
            model = targets.build_model(FLAGS.target, seed=s, **kw)
            return baselines.with_dropout(model, FLAGS.dropout) if method == "mc_dropout" else model

        def outlier_exposure(model, s):
            return baselines.OutlierExposure(
                model, weight=FLAGS.outlier_weight, probe=FLAGS.outlier_probe, probe_size=FLAGS.probe_size, seed=s
            )

        models = common.train_direct_networks(
            build,
            x,
            y,
            ctx,
            seeds=[1000 * seed + m for m in range(members)],
            names=[f"{method}_seed{seed}_{m}" for m in range(members)],
            steps=steps,
            learning_rate=FLAGS.baseline_learning_rate,
            batch_size=FLAGS.batch_size,
            wrap=outlier_exposure if method == "deep_ensemble_outlier" else None,
        )
        source = ensembles.MCDropout(models[0]) if method == "mc_dropout" else models
        return source, time.time() - t0
    keras.utils.set_random_seed(seed)
    target = TargetNetwork(targets.build_model(FLAGS.target, seed=seed, **kw))
    model = common.build_hypernetwork(
        method,
        target,
        num_networks=FLAGS.networks_per_step,
        seed=seed,
        noise_dim=FLAGS.noise_dim,
        code_dim=FLAGS.code_dim,
        mixer_units=FLAGS.generator_units,
        generator_units=FLAGS.generator_units,
        discriminator_units=FLAGS.generator_units,
        beta=FLAGS.beta,
        lam=FLAGS.lam,
        repulsion=FLAGS.repulsion,
        svgd_weight_decay=1.0 / (len(y) * FLAGS.prior_std**2) if FLAGS.prior_std else 0.0,
        generator_init=FLAGS.generator_init,
        fs_weight=FLAGS.fs_weight,
        mixup_weight=FLAGS.mixup_weight,
        outlier_weight=FLAGS.outlier_weight,
        outlier_probe=FLAGS.outlier_probe,
        outlier_mode=FLAGS.outlier_mode,
        cka_weight=FLAGS.cka_weight,
        cka_probe=FLAGS.cka_probe,
        cka_energy=FLAGS.cka_energy,
        probe_size=FLAGS.probe_size,
        learning_rate=FLAGS.hyper_learning_rate,  # a HyperGAN's discriminator too
    )
    common.train(
        model,
        common.array_stream(x, y, FLAGS.batch_size, seed),
        ctx,
        steps=steps,
        name=f"{method}_seed{seed}",
        verbose=0,
    )
    return model, time.time() - t0


# ---------------------------------------------------------------------------------------------- evaluation
def ensemble_row(p, data, probe_p=None):
    """Metrics of one ensemble from its members' probabilities ``p[set]`` ``[n, N, C]`` (sets: "val", "test",
    ``"ood/<name>"``, ``"val_ood/<name>"``, ``"shift/<name>"``): raw, and with one temperature fitted on the
    validation split by NLL (keys ``*_ts``); ``val_accuracy``, ``val_nll``, ``val_ece`` and
    ``val_auroc_<name>`` (predictive entropy, validation split vs ``val_ood/<name>``), raw, to choose settings
    on. OOD AUROC per set and score (`hyperkeras.metrics.UNCERTAINTY_SCORES`; ``auroc_<set>`` is
    the predictive entropy's, ``auroc_<set>_<score>`` the others'), their mean over sets (``auroc_mean``);
    diversity on the test set and on every OOD set (and on `probe_p`, the probe family's images)."""
    import numpy as np

    from hyperkeras import calibration, metrics

    n = len(p["test"])
    yt, yv = data["y_test"], data["y_val"]
    temperature = 1.0
    if len(yv):
        temperature = calibration.fit_temperature(np.log(np.maximum(p["val"].mean(axis=0), 1e-12)), yv)
    row = {"temperature": temperature}
    if len(yv):  # for choosing settings (raw: the temperature is fitted on these examples)
        val = metrics.classification_summary(p["val"].mean(axis=0), yv)
        row.update(val_accuracy=val["accuracy"], val_nll=val["nll"], val_ece=val["ece"])
        val_in = metrics.entropy(p["val"].mean(axis=0))
        for name in [k[8:] for k in p if k.startswith("val_ood/")]:
            val_out = metrics.entropy(p["val_ood/" + name].mean(axis=0))
            row[f"val_auroc_{name}"] = metrics.ood_scores(val_in, val_out)["auroc"]
    ood = [k[4:] for k in p if k.startswith("ood/")]
    for tag, t in (("", 1.0), ("_ts", temperature)):

        def fused(probs, t=t):
            if t == 1.0:
                return probs.mean(axis=0)
            z = calibration.apply_temperature(np.log(np.maximum(probs.mean(axis=0), 1e-12)), t)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        summary = metrics.classification_summary(fused(p["test"]), yt)
        for key in ("nll", "ece", "brier") + (("accuracy",) if not tag else ()):
            row[key + tag] = summary[key]
        scores_in = metrics.uncertainty_scores(p["test"], t)
        for name in ood:
            scores_out = metrics.uncertainty_scores(p["ood/" + name], t)
            for score in metrics.UNCERTAINTY_SCORES:
                if score == "mutual_information" and n == 1:
                    continue
                result = metrics.ood_scores(scores_in[score], scores_out[score])
                suffix = "" if score == "entropy" else "_" + {"mutual_information": "mi"}.get(score, "maxprob")
                row[f"auroc_{name}{suffix}{tag}"] = result["auroc"]
                if score == "entropy":
                    row[f"auprc_{name}{tag}"] = result["auprc"]
                    row[f"fpr95_{name}{tag}"] = result["fpr_at_95_tpr"]
        if ood:
            row["auroc_mean" + tag] = float(np.mean([row[f"auroc_{name}{tag}"] for name in ood]))
        for name in [k[6:] for k in p if k.startswith("shift/")]:
            shifted = metrics.classification_summary(fused(p["shift/" + name]), yt)
            for key in ("nll", "ece") + (("accuracy",) if not tag else ()):
                row[f"shift_{name}_{key}{tag}"] = shifted[key]
    if n > 1:
        row["disagreement"] = metrics.disagreement(p["test"])
        row["pairwise_kl"] = metrics.pairwise_kl(p["test"])
        row["mutual_information"] = float(metrics.uncertainty_scores(p["test"])["mutual_information"].mean())
        off = {name: p["ood/" + name] for name in ood}
        if probe_p is not None:
            off["probes"] = probe_p
        for name, q in off.items():
            row[f"disagreement_{name}"] = metrics.disagreement(q)
            row[f"mutual_information_{name}"] = float(metrics.uncertainty_scores(q)["mutual_information"].mean())
    return row


def evaluate(method, source, data, seed):
    """Metrics of every ensemble size `method` can form (`ensemble_row`); plus the arrays the figures need
    (entropies and calibration bins of the largest ensemble)."""
    import numpy as np

    from hyperkeras import ensembles, metrics, probes

    sizes = sorted({int(s) for s in FLAGS.ensemble_sizes})
    if method == "single":
        sizes = [1]
    elif method.startswith("deep_ensemble"):
        sizes = sorted({1, FLAGS.deep_ensemble_size})
    n_max = max(sizes)
    n_arg = None if method in ("single", "deep_ensemble", "deep_ensemble_outlier") else n_max
    eval_seed = 7919 + seed

    def member_probs(x):
        pred = ensembles.predict(
            source,
            x,
            n=n_arg,
            seed=eval_seed,
            batch_size=FLAGS.eval_batch_size,
            keep_member_probs=True,
            verbose=common.verbose(),
        )
        return pred.member_probs.astype(np.float64)

    xt, yt = data["x_test"], data["y_test"]
    p = {"val": member_probs(data["x_val"]) if len(data["y_val"]) else None, "test": member_probs(xt)}
    p.update({"ood/" + name: member_probs(x) for name, x in data["ood"].items()})
    p.update({"val_ood/" + name: member_probs(x) for name, x in data["val_ood"].items()})
    p.update({"shift/" + name: member_probs(x) for name, x in data["shifted"].items()})
    # The probes' own family (smooth noise), at a seed no training step used: diversity only, not a test.
    probe_x = probes.make_probes("smooth_noise", xt[: FLAGS.eval_batch_size], min(500, len(xt)), [104729, seed])
    probe_p = member_probs(np.asarray(probe_x))
    available = len(p["test"])
    rows, extras = [], {}
    for n in sizes:
        if n > available:
            continue
        if n == 1:
            singles = [
                ensemble_row({k: v[i : i + 1] for k, v in p.items() if v is not None}, data)
                for i in range(min(10, available))
            ]
            row = {key: float(np.mean([r[key] for r in singles])) for key in singles[0]}
        else:
            row = ensemble_row({k: v[:n] for k, v in p.items() if v is not None}, data, probe_p[:n])
        rows.append({"method": method, "seed": seed, "size": n, **row})
        if n == max(s for s in sizes if s <= available):
            mean_in = p["test"][:n].mean(axis=0)
            extras = {
                "size": n,
                "entropy_in": metrics.entropy(mean_in).tolist(),
                "entropy_out": {
                    name: metrics.entropy(p["ood/" + name][:n].mean(axis=0)).tolist() for name in data["ood"]
                },
                "calibration": {
                    k: [None if not np.isfinite(v) else float(v) for v in np.asarray(vals, float)]
                    for k, vals in metrics.calibration_bins(mean_in, yt).items()
                },
            }
    return rows, extras


def run_one(ctx, method, seed, data):
    """Trains and evaluates (method, seed), or reads its stored result."""
    import json

    from hyperkeras.io import atomic_write_json

    path = ctx.path("results", f"{method}_seed{seed}.json")
    stored = None
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if not FLAGS.reevaluate:
            return stored
    x, y = data["x"], data["y"]
    num_classes = int(max(y.max(), data["y_test"].max())) + 1
    steps, per_step, members = steps_for(method)
    with common.stage(
        "%s, seed %d: training (%d steps x %d networks, %d images per step)", method, seed, steps, members, per_step
    ):
        source, seconds = train_method(ctx, method, seed, x, y, num_classes)
    if stored is not None:  # --reevaluate: training was restored, not run; its time is the stored one
        seconds = stored["train_seconds"]
    with common.stage("%s, seed %d: evaluation", method, seed):
        rows, extras = evaluate(method, source, data, seed)
    result = {
        "method": method,
        "seed": seed,
        "rows": rows,
        "extras": extras,
        "train_seconds": seconds,
        "steps": steps,
        "images": steps * per_step * members,
    }
    os.makedirs(ctx.path("results"), exist_ok=True)
    atomic_write_json(path, result)
    return result


# ---------------------------------------------------------------------------------------------- report
def summarise(results):
    """Mean ± std over seeds of every metric, per (method, size)."""
    import numpy as np

    groups = {}
    for res in results:
        for row in res["rows"]:
            groups.setdefault((row["method"], row["size"]), []).append(row)
        groups.setdefault((res["method"], "time"), []).append({"train_seconds": res["train_seconds"]})
    table = []
    for (method, size), rows in groups.items():
        if size == "time":
            continue
        keys = [k for k in rows[0] if k not in ("method", "seed", "size") and all(k in r for r in rows)]
        partial = sorted({k for r in rows for k in r} - set(keys) - {"method", "seed", "size"})
        if partial:  # results evaluated under different protocols: never average a metric over some seeds
            logging.warning(
                "%s, size %s: %d metrics are missing from some seeds' results and left out (e.g. %s); "
                "run again with --reevaluate to evaluate every seed alike.",
                method,
                size,
                len(partial),
                ", ".join(partial[:3]),
            )
        entry = {"method": method, "size": size, "seeds": len(rows)}
        for k in keys:
            vals = np.array([r[k] for r in rows], float)
            entry[k] = float(vals.mean())
            entry[k + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        times = [r["train_seconds"] for r in groups[(method, "time")]]
        entry["train_seconds"] = float(np.mean(times))
        table.append(entry)
    return table


def verdicts(table, ood_names):
    """For each generated ensemble (and MC dropout), the headline metrics — accuracy, NLL, ECE and the
    entropy AUROC of every OOD set — on which it is at least as good as each deep ensemble of M (means over
    seeds): raw, and with temperature scaling applied to both sides (``scaled``)."""
    refs = {
        r["method"]: r
        for r in table
        if r["method"] in ("deep_ensemble", "deep_ensemble_outlier") and r["size"] == FLAGS.deep_ensemble_size
    }
    out = {}
    for ref_name, ref in refs.items():
        for tag in ("", "_ts"):
            headline = ["accuracy", "nll" + tag, "ece" + tag, *(f"auroc_{n}{tag}" for n in ood_names)]
            for row in table:
                if row["method"] not in HYPER + ("mc_dropout",) or row["size"] == 1:
                    continue
                verdict = common.at_least_as_good(row, ref, headline)
                out.setdefault(f"{row['method']} {row['size']}", {})[ref_name + ("_scaled" if tag else "")] = verdict
    return out


def plot(results, table, ood_names, path_prefix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hyperkeras import io

    methods = list(dict.fromkeys(r["method"] for r in table))
    colors = {m: plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10] for i, m in enumerate(methods)}
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        rows = sorted((r for r in table if r["method"] == m), key=lambda r: r["size"])
        ax.errorbar(
            [r["size"] for r in rows],
            [r["accuracy"] for r in rows],
            yerr=[r["accuracy_std"] for r in rows],
            marker="o",
            capsize=3,
            label=m,
            color=colors[m],
        )
    ax.set_xscale("log")
    ax.set_xlabel("ensemble size (networks)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("Accuracy vs ensemble size at equal training budget")
    ax.legend(fontsize=7)
    io.save_figure(fig, path_prefix + "accuracy_vs_size.png")
    plt.close(fig)
    files.append("accuracy_vs_size.png")

    first = {}
    for res in results:
        if res["method"] not in first or res["seed"] < first[res["method"]]["seed"]:
            first[res["method"]] = res
    panels = len(ood_names)
    if panels:
        fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
        for ax, name in zip(axes[0], ood_names):
            for m, res in first.items():
                ex = res["extras"]
                for h, ls, tag in ((ex["entropy_out"].get(name, []), "-", "OOD"), (ex["entropy_in"], "--", "in")):
                    s = np.sort(h)
                    if len(s):
                        ax.plot(
                            s, np.arange(1, len(s) + 1) / len(s), ls, color=colors[m], label=f"{m} {ex['size']} ({tag})"
                        )
            ax.set_xlabel("predictive entropy (nats)")
            ax.set_ylabel("empirical CDF")
            ax.set_title(f"in-distribution (dashed) vs {name} (solid)")
            ax.legend(fontsize=5, ncol=2)
        io.save_figure(fig, path_prefix + "entropy_cdfs.png")
        plt.close(fig)
        files.append("entropy_cdfs.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for m, res in first.items():
        cal = res["extras"]["calibration"]
        full = np.asarray(cal["count"], float) > 0
        ax.plot(
            np.asarray(cal["confidence"], float)[full],
            np.asarray(cal["accuracy"], float)[full],
            "o-",
            color=colors[m],
            label=f"{m} {res['extras']['size']}",
        )
    ax.set_xlabel("confidence (max mean probability)")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("Reliability (first seed, largest ensemble)")
    ax.legend(fontsize=7)
    io.save_figure(fig, path_prefix + "reliability.png")
    plt.close(fig)
    files.append("reliability.png")
    return files


def report(results, table, verdict, ood_names, figures):
    def fmt(row, key):
        if key not in row:
            return "–"
        return f"{row[key]:.4f} ± {row[key + '_std']:.4f}" if row["seeds"] > 1 else f"{row[key]:.4f}"

    def section(title, keys, note="", time=False):
        present = [k for k in keys if any(k in r for r in table)]
        lines = [f"## {title}", ""] + ([note, ""] if note else [])
        lines += ["| method | size | " + " | ".join(present) + (" | train s |" if time else " |")]
        lines += ["|" + "---|" * (len(present) + 2 + int(time))]
        for row in sorted(table, key=lambda r: (METHODS.index(r["method"]), r["size"])):
            cells = " | ".join(fmt(row, k) for k in present)
            lines.append(
                f"| {row['method']} | {row['size']} | {cells} |" + (f" {row['train_seconds']:.0f} |" if time else "")
            )
        return lines + [""]

    aurocs = [f"auroc_{n}" for n in ood_names] + ["auroc_mean"]
    lines = [
        f"# Ensembles at equal training budget ({FLAGS.target} on {FLAGS.dataset}, classes {FLAGS.classes})",
        "",
        f"Budget: {FLAGS.budget_images:,} images forward and backward through target networks per method; "
        f"batch {FLAGS.batch_size}; K = {FLAGS.networks_per_step} generated networks per step; deep ensemble of "
        f"{FLAGS.deep_ensemble_size}; seeds {', '.join(str(s) for s in sorted({r['seed'] for r in results}))} of "
        f"{', '.join(FLAGS.seeds)} asked (mean ± std over the seeds each method has finished). Size 1 = mean over "
        f"single members. OOD sets: {', '.join(ood_names)}; `auroc_mean` = their mean. Temperature scaling: one "
        f"temperature per ensemble, fitted by NLL on {FLAGS.val_size} training examples held out of training.",
        "",
    ]
    lines += section(
        "Raw predictions (OOD score: predictive entropy)",
        ["accuracy", "nll", "ece", "brier"] + aurocs + ["disagreement", "pairwise_kl", "mutual_information"],
        time=True,
    )
    lines += section(
        "Validation (to choose settings on; never the test sets)",
        ["val_accuracy", "val_nll", "val_ece"]
        + sorted({k for r in table for k in r if k.startswith("val_auroc_") and not k.endswith("_std")}),
        note=f"The {FLAGS.val_size} held-out training examples, raw; `val_auroc_held-out classes`: predictive "
        "entropy on them vs training images of the held-out classes (no test image).",
    )
    lines += section(
        "Temperature-scaled (OOD score: predictive entropy of the scaled prediction)",
        ["temperature", "nll_ts", "ece_ts", "brier_ts"] + [a + "_ts" for a in aurocs],
    )
    lines += section(
        "OOD AUROC by score (raw): mutual information (`_mi`) and maximum probability (`_maxprob`)",
        [f"auroc_{n}_{s}" for n in ood_names for s in ("mi", "maxprob")],
    )
    shifts = list(FLAGS.shifts)
    lines += section(
        "Shifted test sets (raw; `_ts`: temperature-scaled)",
        [f"shift_{n}_{k}" for n in shifts for k in ("accuracy", "nll", "ece", "nll_ts", "ece_ts")],
        note="rotate: 30°; blur: Gaussian σ = 1.5 px; contrast: × 0.3 about each image's mean.",
    )
    lines += section(
        "Diversity off the data (pairwise disagreement, mean mutual information in nats)",
        [f"{k}_{n}" for n in ood_names + ["probes"] for k in ("disagreement", "mutual_information")],
        note="`probes`: 500 smooth-noise images (the probe family of svgd_outlier, at a seed no training step used).",
    )
    lines += ["Steps per method (images = steps × images per step × networks trained):", ""]
    seen = set()
    for res in results:
        if res["method"] not in seen:
            seen.add(res["method"])
            lines.append(f"- {res['method']}: {res['steps']} steps, {res['images']:,} images")
    if verdict:
        lines += [
            "",
            f"## Against the deep ensembles of {FLAGS.deep_ensemble_size} (accuracy, NLL, ECE, entropy AUROC of every OOD set)",
            "",
        ]
        for name, refs in verdict.items():
            parts = []
            for ref, v in refs.items():
                won = "**all**" if v["all"] else (", ".join(v["at_least_as_good_on"]) or "none")
                if v.get("missing"):
                    won += f" (not measured: {', '.join(v['missing'])})"
                parts.append(f"vs {ref}: {won}")
            lines.append(f"- {name}: " + "; ".join(parts))
    lines += [""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def main(argv):
    ctx = common.setup(argv)
    if FLAGS["steps"].present:
        raise flags.ValidationError(
            "compare_ensembles sets each method's steps from --budget_images; do not pass --steps."
        )
    bad = [m for m in FLAGS.methods if m not in METHODS]
    if bad or not FLAGS.methods:
        raise flags.ValidationError(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}.")
    try:
        seeds = [int(s) for s in FLAGS.seeds]
        sizes = [int(s) for s in FLAGS.ensemble_sizes]
    except ValueError:
        raise flags.ValidationError("--seeds and --ensemble_sizes are comma-separated integers.") from None
    if not seeds or not sizes or min(sizes) < 1:
        raise flags.ValidationError("--seeds and --ensemble_sizes need at least one value (sizes >= 1).")
    if "svgd_outlier" in FLAGS.methods and FLAGS.outlier_mode == "own" and FLAGS.probe_size % FLAGS.networks_per_step:
        raise flags.ValidationError(
            f"--outlier_mode=own shares --probe_size={FLAGS.probe_size} probes out among --networks_per_step="
            f"{FLAGS.networks_per_step} networks: probe_size must be a multiple of networks_per_step."
        )
    for m in FLAGS.methods:
        steps_for(m)  # a budget too small for a method fails before anything trains
    data = load_data(ctx.seed)
    ood_names = list(data["ood"])
    logging.info(
        "data: %d training, %d validation, %d test examples; OOD sets %s",
        len(data["y"]),
        len(data["y_val"]),
        len(data["y_test"]),
        {k: len(v) for k, v in data["ood"].items()},
    )
    results, figures = [], []
    for seed in seeds:  # seed-major: a run stopped early has every method at its first seeds
        for method in FLAGS.methods:
            results.append(run_one(ctx, method, seed, data))
            table = summarise(results)
            verdict = verdicts(table, ood_names)
            if method == FLAGS.methods[-1]:  # figures once per seed (metrics and report after every method)
                figures = plot(results, table, ood_names, ctx.path(""))
            common.write_results(
                ctx,
                {
                    "table": table,
                    "verdict": verdict,
                    "methods": list(FLAGS.methods),
                    "data": {
                        "train": len(data["y"]),
                        "validation": len(data["y_val"]),
                        "test": len(data["y_test"]),
                        "ood": {k: len(v) for k, v in data["ood"].items()},
                        "validation_ood": {k: len(v) for k, v in data["val_ood"].items()},
                    },
                    "seeds_done": sorted({r["seed"] for r in results}),
                    "budget_images": FLAGS.budget_images,
                },
                report(results, table, verdict, ood_names, figures),
            )
    print(report(results, summarise(results), verdicts(summarise(results), ood_names), ood_names, figures))


if __name__ == "__main__":
    common.run(main)
