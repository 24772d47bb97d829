"""What the HyperGAN experiment binaries share: flags, training of the hypernetwork and of the baselines
(one direct network, deep ensembles, MC dropout), saving/reloading them, and evaluation helpers.

The hypernetwork side is generic: anything with ``.target`` (a `hyperkeras.TargetNetwork`) and
``.sample(n, seed)`` works (HyperGAN, or Deutsch's EntropyHypernetwork with ``--hypernetwork=deutsch``).
"""

from __future__ import annotations

import os
import warnings

from absl import flags, logging

from experiments import common

FLAGS = flags.FLAGS

# The flags `define_flags` defines belong to the calling binary: its --help lists them.
flags.disclaim_key_flags()

HYPERNETWORKS = ("hypergan", "deutsch")
GENERATORS = HYPERNETWORKS  # its name before 0.2 ("generator" is the noise -> params layer only)


def define_flags(
    target="hypergan_mnist",
    hypernetwork_choice=False,
    noise_dim=256,
    code_dim=128,
    units=512,
    ensembles="1,5,10,100",
    generator_choice=None,
):
    """HyperGAN and baseline flags (defaults: the paper's MNIST HyperGAN, §4.1 and Table 5).

    `hypernetwork_choice` adds ``--hypernetwork`` (hypergan or deutsch) and Deutsch's ``--lam``;
    `generator_choice` is its deprecated name (0.2)."""
    if generator_choice is not None:
        warnings.warn(
            "hypergan_common.define_flags(generator_choice=) is deprecated: use hypernetwork_choice=.",
            DeprecationWarning,
            stacklevel=2,
        )
        hypernetwork_choice = generator_choice
    flags.DEFINE_string("target", target, "Target architecture (hyperkeras.targets.available_targets()).")
    if hypernetwork_choice:
        flags.DEFINE_enum(
            "hypernetwork",
            "hypergan",
            HYPERNETWORKS,
            "Hypernetwork: hypergan, or deutsch (EntropyHypernetwork, Deutsch 2018).",
        )
        common.renamed_flag("generator", "hypernetwork", "which hypernetwork: hypergan or deutsch")
        flags.DEFINE_float("lam", 1e3, "--hypernetwork=deutsch: λ, the cross-entropy weight.")
    flags.DEFINE_integer("noise_dim", noise_dim, "HyperGAN: size j of the noise s.", lower_bound=1)
    flags.DEFINE_integer("code_dim", code_dim, "HyperGAN: size d of each layer code.", lower_bound=1)
    flags.DEFINE_integer("mixer_units", units, "Hidden units of the mixer.", lower_bound=1)
    flags.DEFINE_integer("generator_units", units, "Hidden units of each layer generator.", lower_bound=1)
    flags.DEFINE_integer("discriminator_units", units, "Hidden units of the latent discriminator.", lower_bound=1)
    flags.DEFINE_float("beta", 1.0, "β, the weight of the adversarial term.", lower_bound=0.0)
    flags.DEFINE_integer("networks_per_step", 32, "K: networks sampled per training step.", lower_bound=1)
    flags.DEFINE_float(
        "hyper_learning_rate", 1e-4, "Adam learning rate of the hypernetwork (mixer and generators).", lower_bound=0.0
    )
    common.renamed_flag(
        "learning_rate",
        "hyper_learning_rate",
        "the hypernetwork's rate; the baselines' is --baseline_learning_rate",
    )
    flags.DEFINE_float("d_learning_rate", 1e-4, "Adam learning rate of the discriminator.", lower_bound=0.0)
    flags.DEFINE_integer(
        "pretrain_steps", 500, "Mixer pretraining steps (mean/covariance towards N(0, I)).", lower_bound=0
    )
    flags.DEFINE_integer("baseline_steps", None, "Training steps of each baseline network (default: --steps).")
    flags.DEFINE_float("baseline_learning_rate", 1e-3, "Adam learning rate of the baseline networks.", lower_bound=0.0)
    flags.DEFINE_integer(
        "deep_ensemble_size", 10, "Directly trained networks (deep ensembles of 5 and of this size).", lower_bound=1
    )
    flags.DEFINE_float("dropout", 0.5, "Dropout rate of the MC-dropout baseline.", lower_bound=0.0, upper_bound=0.95)
    flags.DEFINE_integer("mc_samples", 100, "Stochastic passes of the MC-dropout baseline.", lower_bound=1)
    flags.DEFINE_bool("baselines", True, "Train and report the baselines.")
    flags.DEFINE_string(
        "load_from",
        None,
        "Output folder of an earlier run (e.g. hypergan_classify) whose saved generator.keras is "
        "reused instead of training, and its baselines/*.keras where present (missing ones are trained).",
    )
    flags.DEFINE_integer("eval_batch_size", 500, "Examples per evaluation step.", lower_bound=1)


def target_kwargs(x, num_classes, task="classification"):
    kw = {"input_shape": tuple(x.shape[1:])}
    if task == "classification":
        kw["num_classes"] = int(num_classes)
    return kw


def make_dataset_fn(x, y, ctx, batch_size=None):
    """``start_step -> infinite batched dataset`` positioned at `start_step` (see common.train)."""
    return common.array_stream(x, y, batch_size or ctx.batch_size, ctx.seed)


def build_hypernetwork(kind, target, task="classification"):
    """A compiled HyperGAN (or, `kind` ``deutsch``, an EntropyHypernetwork whose networks share the batch
    out) for `target` from the flags: `common.build_hypernetwork`."""
    deutsch = kind == "deutsch"
    return common.build_hypernetwork(
        kind,
        target,
        num_networks=max(2, FLAGS.networks_per_step) if deutsch else FLAGS.networks_per_step,
        seed=FLAGS.seed,
        shared_batch=True if deutsch else None,
        noise_dim=FLAGS.noise_dim,
        code_dim=FLAGS.code_dim,
        mixer_units=FLAGS.mixer_units,
        generator_units=FLAGS.generator_units,
        discriminator_units=FLAGS.discriminator_units,
        beta=FLAGS.beta,
        task=task,
        **({"lam": FLAGS.lam} if deutsch else {}),
        learning_rate=FLAGS.hyper_learning_rate,
        discriminator_learning_rate=FLAGS.d_learning_rate,
    )


def train_hypernetwork(
    ctx,
    x,
    y,
    kind="hypergan",
    task="classification",
    name="generator",
    target_name=None,
    num_classes=10,
    load_from=None,
):
    """Builds, (mixer-)pretrains and trains a hypernetwork with checkpoints; saves ``<name>.keras``
    (`name` keeps its pre-0.2 default, ``generator``, so that earlier runs resume and load).

    With `load_from`, loads ``<load_from>/<name>.keras`` instead of training.
    """
    from hyperkeras import TargetNetwork, targets

    if load_from:
        path = os.path.join(load_from, f"{name}.keras")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"--load_from={load_from}: no {name}.keras there (run the training experiment first)."
            )
        logging.info("loading %s", path)
        return common.load_model(path)
    with ctx.strategy.scope():
        model_kw = target_kwargs(x, num_classes, task)
        target = TargetNetwork(targets.build_model(target_name or FLAGS.target, seed=ctx.seed, **model_kw))
        model = build_hypernetwork(kind, target, task)
    if kind == "hypergan" and FLAGS.pretrain_steps:
        with common.stage("mixer pretraining (%d steps)", FLAGS.pretrain_steps):
            stats = model.pretrain_mixer(steps=FLAGS.pretrain_steps, seed=ctx.seed, verbose=common.verbose())
        logging.info("mixer pretraining: %s", stats)
    common.train(model, make_dataset_fn(x, y, ctx), ctx, name=name)
    common.save_model(model, ctx.path(f"{name}.keras"))
    return model


def _deprecated(old, new):
    def alias(*args, **kwargs):
        warnings.warn(
            f"experiments.hypergan_common.{old} is deprecated: use {new.__name__}.", DeprecationWarning, stacklevel=2
        )
        return new(*args, **kwargs)

    alias.__name__ = old
    alias.__doc__ = f"Deprecated (0.2): `{new.__name__}`."
    return alias


build_generator = _deprecated("build_generator", build_hypernetwork)
train_generator = _deprecated("train_generator", train_hypernetwork)


def train_baselines(
    ctx, x, y, task="classification", num_classes=10, target_name=None, load_from=None, prefix="baselines"
):
    """Directly trained networks (deep ensemble; member 0 is the single-network baseline) and an MC-dropout
    network, saved under ``<output_dir>/<prefix>/``. Networks already saved there or in
    ``<load_from>/<prefix>/`` are loaded instead of trained (reuse, or resume after a restart).

    Returns ``{"direct": [keras.Model, ...], "dropout": keras.Model}``.
    """
    from hyperkeras import baselines

    folders = [ctx.path(prefix)] + ([os.path.join(load_from, prefix)] if load_from else [])

    def existing(filename):  # a network saved earlier (by --load_from's run, or by this run before a restart)
        for folder in folders:
            path = os.path.join(folder, filename)
            if os.path.exists(path):
                logging.info("loading %s", path)
                return common.load_model(path)
        return None

    os.makedirs(ctx.path(prefix), exist_ok=True)
    steps = FLAGS.baseline_steps or ctx.steps
    kw = dict(
        steps=steps,
        batch_size=ctx.batch_size,
        learning_rate=FLAGS.baseline_learning_rate,
        task=task,
        build_kwargs=target_kwargs(x, num_classes, task),
        verbose=common.verbose(),
    )
    name = target_name or FLAGS.target
    direct = []
    for i in range(FLAGS.deep_ensemble_size):
        model = existing(f"direct_{i}.keras")
        if model is None:
            with common.stage("baseline: direct network %d/%d (%d steps)", i + 1, FLAGS.deep_ensemble_size, steps):
                model = baselines.train_direct(name, x, y, seeds=[ctx.seed + 1000 + i], **kw)[0]
            common.save_model(model, ctx.path(prefix, f"direct_{i}.keras"))
        direct.append(model)
    dropout = existing("mc_dropout.keras")
    if dropout is None:
        kw["build_kwargs"] = dict(kw["build_kwargs"], dropout=FLAGS.dropout)
        with common.stage("baseline: MC-dropout network (rate %.2f, %d steps)", FLAGS.dropout, steps):
            dropout = baselines.train_direct(name, x, y, seeds=[ctx.seed + 2000], **kw)[0]
        common.save_model(dropout, ctx.path(prefix, "mc_dropout.keras"))
    return {"direct": direct, "dropout": dropout}


def int_list(text):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise flags.ValidationError(f"expected a comma-separated list of ints, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise flags.ValidationError(f"expected positive ints, got {text!r}")
    return values


def float_list(text):
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise flags.ValidationError(f"expected a comma-separated list of numbers, got {text!r}") from None


def deep_ensemble_sizes(available, sizes=(5, 10)):
    """The deep-ensemble sizes to report: each of `sizes` capped at the `available` directly trained
    networks, without repeats and without 1 (the single net); e.g. 5 and 10, or only 3 of 3 networks."""
    return sorted({min(int(n), available) for n in sizes} - {0, 1})


def baseline_predictions(models, x, mc_samples, batch_size, ensemble_sizes=(5, 10)):
    """EnsemblePredictions of the baselines on `x`: ``{"single net": ..., "deep ensemble 5": ..., "MC dropout": ...}``
    (deep ensembles of the `deep_ensemble_sizes` the trained networks allow)."""
    from hyperkeras import ensembles

    kw = dict(batch_size=batch_size, verbose=common.verbose())
    with common.stage("baselines: predicting %d examples", len(x)):
        out = {"single net": ensembles.predict(models["direct"][:1], x, **kw)}
        for n in deep_ensemble_sizes(len(models["direct"]), ensemble_sizes):
            out[f"deep ensemble {n}"] = ensembles.predict(models["direct"][:n], x, **kw)
        out["MC dropout"] = ensembles.predict(ensembles.MCDropout(models["dropout"]), x, n=mc_samples, **kw)
    return out
