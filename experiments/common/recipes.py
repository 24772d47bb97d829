"""Recipes several binaries share, each a small function of explicit arguments (no flags read here):

- `build_hypernetwork`: a hypernetwork of one of `HYPERNETWORKS` for a target, compiled when given a rate;
- `train_classifier`, `train_direct_networks`: the baselines (directly trained networks, resumably);
- `load_ood`: an out-of-distribution set of the models' input shape;
- `at_least_as_good`: the equal-budget verdict of a model against a reference (the deep ensemble).

A binary still reads top to bottom: it maps its flags onto these arguments where it uses them.
"""

from __future__ import annotations

from absl import flags

from experiments.common.runs import Context
from experiments.common.training import array_stream, train

# What `build_hypernetwork` builds (``deutsch`` is another name of ``entropy``):
#   entropy        Deutsch's EntropyHypernetwork (λ·CE − Ĥ of gauge-fixed weights)
#   hypergan       HyperGAN (mixer + layer generators + latent discriminator)
#   svgd_weight    a HyperGAN generator trained by SVGD in weight space
#   svgd_function  ... by SVGD in function space (every network sees the batch)
#   fs_entropy     ... by CE − fs_weight·Ĥ of the networks' log-probabilities on a probe batch
#   svgd_mixup     svgd_weight + mixup_weight·Ĥ of predictions on mixed pairs of batch examples
#   svgd_outlier   svgd_weight + outlier_weight·OutlierEntropy on synthetic outliers
#   svgd_cka       svgd_weight + cka_weight·CKAEnergy (hidden-layer feature kernels on probes)
HYPERNETWORKS = (
    "entropy",
    "deutsch",
    "hypergan",
    "svgd_weight",
    "svgd_function",
    "fs_entropy",
    "svgd_mixup",
    "svgd_outlier",
    "svgd_cka",
)


def _units(units) -> tuple:
    return (int(units),) if isinstance(units, int) else tuple(int(u) for u in units)


def build_hypernetwork(
    method: str,
    target,
    *,
    num_networks: int,
    seed: int,
    shared_batch: bool | None = None,
    noise_dim: int = 64,
    code_dim: int = 32,
    mixer_units=256,
    generator_units=256,
    discriminator_units=256,
    beta: float = 1.0,
    task: str = "classification",
    lam: float = 1e3,
    gauge: str = "transform",
    repulsion: float = 0.1,
    svgd_weight_decay: float = 0.0,
    generator_init: str = "default",
    fs_weight: float = 1e-3,
    mixup_weight: float = 0.01,
    outlier_weight: float = 0.1,
    outlier_probe: str = "smooth_noise",
    outlier_mode: str = "mean",
    cka_weight: float = 0.1,
    cka_probe: str = "batch",
    cka_energy: str = "hyperspherical",
    probe_size: int = 8,
    learning_rate: float | None = None,
    discriminator_learning_rate: float | None = None,
    name: str | None = None,
):
    """A hypernetwork of kind `method` (one of `HYPERNETWORKS`) generating `num_networks` networks of
    `target` per step; compiled with `hyperkeras.optimizers.FusedAdam` at `learning_rate` if it is given
    (a HyperGAN's latent discriminator at `discriminator_learning_rate`, default `learning_rate`).

    Build it in ``ctx.strategy.scope()``. `shared_batch` (True: every network sees the whole batch; False:
    each its share) defaults to the method's own: True for svgd_function, False for entropy and the other
    SVGD and function-space methods; a HyperGAN always shares the batch (no `shared_batch` for it).
    `noise_dim`, `code_dim` and the units (an int or a tuple of layer widths) are the HyperGAN generator's
    (every method but entropy); `lam` and `gauge` the EntropyHypernetwork's; `beta`, `task` and
    `discriminator_units` HyperGAN's; `repulsion`, `svgd_weight_decay` (a Gaussian prior on the generated
    weights, `hyperkeras.objectives.SVGD`'s `weight_decay`; weight-space SVGD only), `generator_init` (the
    HyperGAN generator's `init` for the generic methods: "default", "hyperfan_in", "hyperfan_out"), the weights, the probes (`outlier_probe`, `cka_probe`:
    kinds of `hyperkeras.probes`), `outlier_mode` (`OutlierEntropy`'s `mode`), `probe_size` and `cka_energy`
    those of the SVGD and function-space methods.
    """
    from hyperkeras.generators import HyperGANGenerator
    from hyperkeras.models import EntropyHypernetwork, HyperGAN, Hypernetwork
    from hyperkeras.objectives import SVGD, CKAEnergy, FunctionSpaceEntropy, OutlierEntropy
    from hyperkeras.optimizers import FusedAdam

    if method not in HYPERNETWORKS:
        raise ValueError(f"build_hypernetwork: unknown method {method!r}; choose from {', '.join(HYPERNETWORKS)}.")
    named = {"name": name} if name else {}
    if method in ("entropy", "deutsch"):
        model = EntropyHypernetwork(
            target,
            lam=lam,
            gauge=gauge,
            num_networks=num_networks,
            shared_batch=bool(shared_batch),
            seed=seed,
            **named,
        )
    elif method == "hypergan":
        if shared_batch is not None:
            raise ValueError("build_hypernetwork: a HyperGAN's networks always share the batch; pass no shared_batch.")
        model = HyperGAN(
            target,
            noise_dim=noise_dim,
            code_dim=code_dim,
            mixer_units=_units(mixer_units),
            generator_units=_units(generator_units),
            discriminator_units=_units(discriminator_units),
            beta=beta,
            num_networks=num_networks,
            task=task,
            seed=seed,
            **named,
        )
    else:
        generator = HyperGANGenerator.from_target(
            target,
            noise_dim=noise_dim,
            code_dim=code_dim,
            mixer_units=_units(mixer_units),
            generator_units=_units(generator_units),
            init=generator_init,
        )

        def svgd():
            if method == "svgd_function":
                if svgd_weight_decay:
                    raise ValueError("svgd_weight_decay is a prior on weights; svgd_function has none.")
                return SVGD("function", repulsion=repulsion)
            return SVGD("weight", repulsion=repulsion, weight_decay=svgd_weight_decay)

        regularizers = {  # built for `method` only
            "svgd_weight": lambda: [svgd()],
            "svgd_function": lambda: [svgd()],
            "fs_entropy": lambda: [FunctionSpaceEntropy(weight=fs_weight, probe_size=probe_size)],
            "svgd_mixup": lambda: [
                svgd(),
                FunctionSpaceEntropy(weight=mixup_weight, probe="mixup", probe_size=probe_size),
            ],
            "svgd_outlier": lambda: [
                svgd(),
                OutlierEntropy(weight=outlier_weight, probe=outlier_probe, probe_size=probe_size, mode=outlier_mode),
            ],
            "svgd_cka": lambda: [
                svgd(),
                CKAEnergy(weight=cka_weight, probe=cka_probe, probe_size=probe_size, energy=cka_energy),
            ],
        }[method]()
        shared = method == "svgd_function" if shared_batch is None else bool(shared_batch)
        model = Hypernetwork(
            target, generator, regularizers, num_networks=num_networks, shared_batch=shared, seed=seed, **named
        )
    if learning_rate is not None:
        if method == "hypergan":
            rate = learning_rate if discriminator_learning_rate is None else discriminator_learning_rate
            model.compile(optimizer=FusedAdam(learning_rate), discriminator_optimizer=FusedAdam(rate))
        else:
            model.compile(optimizer=FusedAdam(learning_rate))
    return model


def train_classifier(
    model,
    x,
    y,
    ctx: Context,
    *,
    seed: int,
    steps: int,
    name: str,
    learning_rate: float,
    batch_size: int | None = None,
    wrap=None,
):
    """Compiles a plain Keras classifier (Adam, sparse cross-entropy on its logits or probabilities) and
    trains it resumably with `train` on the arrays, shuffled with `seed`: the baselines' one recipe.

    `wrap` (optional): ``model -> keras.Model`` that is trained in its place, e.g.
    ``lambda m: hyperkeras.baselines.OutlierExposure(m, ...)``; built on `x`'s shape. Returns `model`."""
    import keras

    from hyperkeras import ensembles

    trained = model
    if wrap is not None:
        trained = wrap(model)
        trained.build((None, *x.shape[1:]))
    from_logits = ensembles.output_kind(model) == "logits"
    trained.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
    )
    train(trained, array_stream(x, y, batch_size or ctx.batch_size, seed), ctx, steps=steps, name=name, verbose=0)
    return model


def train_direct_networks(
    build,
    x,
    y,
    ctx: Context,
    *,
    seeds,
    names,
    steps: int,
    learning_rate: float,
    batch_size: int | None = None,
    wrap=None,
) -> list:
    """One directly trained network per seed (a deep ensemble, or one network): for each seed ``s`` and
    name, Keras's global seed is set to ``s``, ``build(s)`` makes the network and `train_classifier`
    trains it resumably under ``checkpoints/<name>`` (`wrap`: ``(model, s) -> keras.Model`` trained in its
    place, see `train_classifier`). Returns the networks."""
    import keras

    models = []
    for seed, name in zip(seeds, names, strict=True):
        keras.utils.set_random_seed(seed)
        models.append(
            train_classifier(
                build(seed),
                x,
                y,
                ctx,
                seed=seed,
                steps=steps,
                name=name,
                learning_rate=learning_rate,
                batch_size=batch_size,
                wrap=None if wrap is None else (lambda model, s=seed: wrap(model, s)),
            )
        )
    return models


def load_ood(
    name: str,
    shape,
    seed: int,
    *,
    subset: int | None = None,
    data_dir: str | None = None,
    in_dataset: str | None = None,
    splits=("test", "train"),
    flag: str = "--ood_dataset",
):
    """An out-of-distribution set of examples of `shape` (the models' input shape): ``uniform_noise``
    (`subset` or 1,000 examples in [0, 1)), ``bernoulli_noise`` (as many of 0s and 1s), or every example of dataset `name` in `splits` (a split that is
    missing is skipped if an earlier one was found), resized to ``shape[0]``, given a channel axis if it
    lacks one, and shuffled with `seed` (its first `subset` kept).

    `name` equal to `in_dataset` is refused unless its files come from `data_dir`; a shape the models cannot
    take raises ValueError. `flag` names the flag in these messages.
    """
    import numpy as np

    from hyperkeras import data

    rng = np.random.RandomState(seed)
    if name == "uniform_noise":
        return rng.rand(subset or 1000, *shape).astype("float32")
    if name == "bernoulli_noise":
        return (rng.rand(subset or 1000, *shape) < 0.5).astype("float32")
    if name == in_dataset and not data_dir:
        raise flags.ValidationError(f"{flag} must differ from --dataset (or give its files with --ood_data_dir).")
    parts = []
    for split in splits:
        try:
            parts.append(data.load_arrays(name, split, data_dir=data_dir, resize=shape[0], seed=seed)[0])
        except FileNotFoundError:
            if not parts and split == splits[-1]:
                raise
    x = np.concatenate(parts)
    if x.shape[1:] != tuple(shape) and x.shape[1:] == tuple(shape[:-1]):
        x = x[..., None]
    if x.shape[1:] != tuple(shape):
        raise ValueError(f"{flag}={name} gives examples of shape {x.shape[1:]}; the models expect {tuple(shape)}.")
    return x[rng.permutation(len(x))[:subset]]


_HIGHER, _LOWER = ("accuracy", "acc", "auroc", "auprc"), ("nll", "ece", "brier", "fpr", "fpr95")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is better, from the first metric word in its ``_``-separated name:
    accuracy and OOD AUROC/AUPRC yes (``auroc_<set>``, ``ood_auroc``); NLL, ECE, Brier and FPR at 95 % TPR
    no (``nll_ts``, ``single_nll_mean``, ``fpr95_<set>``). A name with none of them raises ValueError."""
    for word in metric.split("_"):
        if word in _HIGHER or word in _LOWER:
            return word in _HIGHER
    raise ValueError(f"higher_is_better: {metric!r} names none of {', '.join(_HIGHER + _LOWER)}.")


def at_least_as_good(row: dict, reference: dict, metrics) -> dict:
    """The equal-budget verdict: on which of `metrics` `row` is at least as good as `reference` (e.g. the deep
    ensemble), ties counting as good. Returns ``{"at_least_as_good_on": [metric, ...], "missing": [metric,
    ...], "all": bool}``, in the order of `metrics`; a metric absent from either side is listed as missing
    and never counts as a win, so ``all`` means every one of `metrics` was compared and won."""
    missing = [m for m in metrics if m not in row or m not in reference]
    wins = {
        m: (row[m] >= reference[m]) if higher_is_better(m) else (row[m] <= reference[m])
        for m in metrics
        if m not in missing
    }
    return {
        "at_least_as_good_on": [m for m, won in wins.items() if won],
        "missing": missing,
        "all": not missing and all(wins.values()),
    }
