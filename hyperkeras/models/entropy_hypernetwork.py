"""Entropy-regularised hypernetwork (Deutsch 2018): λ·cross-entropy − Ĥ(S(θ)) (+ γ·G(θ)), a `Hypernetwork` preset."""

from __future__ import annotations

import keras

from hyperkeras.generators.deutsch import DeutschGenerator
from hyperkeras.models.hypernetwork import Hypernetwork, as_target
from hyperkeras.objectives.entropy_regularizer import GAUGES, Entropy


@keras.saving.register_keras_serializable(package="hyperkeras")
class EntropyHypernetwork(Hypernetwork):
    """Trains a weight generator so that its networks are accurate and essentially different.

    A preset of `Hypernetwork`: ``Hypernetwork(target, generator, [Entropy(gauge=..., gamma=...,
    entropy_dim=...)], task_weight=lam, shared_batch=False, target_training=False)``. Each training step
    draws K noise vectors z ~ U[−b, b]^noise_dim (the generator's prior), generates K networks θ_k, and
    minimises ``λ·CE − Ĥ`` (eqs. 11–14) where CE is the mean cross-entropy of the K networks and Ĥ the
    Kozachenko–Leonenko entropy of the flattened weights. With ``gauge="transform"`` the entropy is
    taken of the gauge-fixed weights S(θ) (scale and logit-bias symmetries removed) and `sample` returns
    gauge-fixed networks; with ``gauge="penalty"`` of θ itself plus the penalty ``γ·mean_k G(θ_k)``
    (eq. 10); ``"none"`` uses θ.

    Any target trains (BatchNorm, residual adds, embeddings, RNNs, attention): the generator emits every
    weight (`DeutschGenerator` generates the weights outside the Conv/Dense filter layout with per-tensor
    heads) and the entropy is taken of all of them, flattened. Gauge fixing needs symmetries that only
    some targets have (`hyperkeras.objectives.gauge.check_gauge`): for the others ``gauge="transform"``
    or ``"penalty"`` fails here, naming the layer, and ``gauge="none"`` is the choice.

    Metrics: ``loss``, ``task_loss`` (the cross-entropy), ``entropy``, ``gauge`` (``gauge="penalty"``
    only) and ``accuracy``, as every `Hypernetwork`; ``cross_entropy`` repeats ``task_loss`` under its
    0.1 name (deprecated).

    Args:
        target: the target architecture, a `hyperkeras.TargetNetwork` or a built keras.Model.
        generator: a `hyperkeras.generators.Generator` for the target (default
            `DeutschGenerator.from_target(target)`; use `DeutschGenerator.paper_config` for Table 2).
        lam: λ, weight of the cross-entropy (paper: 1e3 and 1e5).
        gauge: ``"transform"`` (paper), ``"penalty"`` or ``"none"``.
        gamma: γ, weight of the gauge penalty (``gauge="penalty"`` only).
        num_networks: K, networks per step (paper: 32); ``num_samples`` is its 0.1 name, still accepted.
        shared_batch: if False (paper), a training batch is shared out so that network k sees its own
            examples (B // K or B // K + 1 of them: any batch size works); if True all K networks see the
            same batch.
        entropy_dim: d of eq. 14 (default: the noise dimension, as the paper).
        noise_bound: b of z ~ U[−b, b], set on the `DeutschGenerator` (default: the generator's, 1).
        seed: seed of the noise stream of training and evaluation steps (`seed_generator`) and of the
            fixed networks of `call` (None: a random stream, and the networks of seed 0 for `call`).
        batchnorm_recalibration: at the end of every `fit`, the generator's batch-normalisation
            statistics are recomputed from this many training-mode batches of K networks
            (`recalibrate_batchnorm`); 0 keeps the moving averages of training. Without it, networks
            sampled early in training (a few hundred steps) can be far worse than those the loss saw.

    Call arguments:
        x: ``[B, *input_shape]``; returns the mean class probabilities ``[B, C]`` of the ``num_networks``
            networks ``sample(num_networks, seed)`` (see `Hypernetwork`).

    Example:

    ```python
    target = hyperkeras.TargetNetwork(hyperkeras.targets.build_model("deutsch_mnist"))
    model = EntropyHypernetwork(target, DeutschGenerator.paper_config(target), lam=1e3, num_networks=32)
    model.compile(optimizer=hyperkeras.optimizers.FusedAdam(3e-4))  # or any Keras optimizer
    model.fit(x_train, y_train, batch_size=32 * 32, epochs=1)     # 32 networks × 32 images per step
    params = model.sample(500, seed=0)           # {name: [500, *shape]}, gauge-fixed
    ```

    Reference:
        Deutsch, "Generating neural networks with neural networks" (2018), arXiv:1801.01952.
    """

    def __init__(
        self,
        target,
        generator=None,
        lam: float = 1e3,
        gauge: str = "transform",
        gamma: float = 1.0,
        num_samples=None,
        shared_batch: bool = False,
        entropy_dim=None,
        noise_bound=None,
        seed=None,
        batchnorm_recalibration: int = 50,
        num_networks=None,
        **kwargs,
    ):
        target = as_target(target)
        if gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}.")
        if num_samples is not None and num_networks is not None and int(num_samples) != int(num_networks):
            raise ValueError(f"num_networks ({num_networks}) and its old name num_samples ({num_samples}) differ.")
        k = num_networks if num_networks is not None else (num_samples if num_samples is not None else 32)
        if int(k) < 2:
            raise ValueError(f"num_networks must be >= 2 (the entropy needs nearest neighbours), got {k}.")
        if float(lam) < 0 or float(gamma) < 0 or (noise_bound is not None and float(noise_bound) <= 0):
            raise ValueError(f"lam and gamma must be >= 0 and noise_bound > 0; got {lam}, {gamma}, {noise_bound}.")
        if generator is None:
            generator = DeutschGenerator.from_target(target)
        if noise_bound is not None:
            if not hasattr(generator, "noise_bound"):
                raise ValueError(
                    f"noise_bound is a DeutschGenerator setting; {type(generator).__name__} has its own prior."
                )
            generator.noise_bound = float(noise_bound)
        entropy = Entropy(weight=1.0, gauge=gauge, gamma=gamma, entropy_dim=entropy_dim, name="entropy")
        super().__init__(
            target,
            generator,
            [entropy],
            num_networks=int(k),
            task="classification",
            task_weight=lam,
            shared_batch=shared_batch,
            target_training=False,
            seed=seed,
            batchnorm_recalibration=batchnorm_recalibration,
            **kwargs,
        )
        self.lam = float(lam)
        self.gauge = gauge
        self.gamma = float(gamma)
        self.entropy_dim = entropy_dim

    @property
    def num_samples(self) -> int:
        """0.1 name of `num_networks`."""
        return self.num_networks

    @property
    def noise_bound(self):
        """b of the noise prior z ~ U[−b, b] (the generator's)."""
        return getattr(self.generator, "noise_bound", None)

    def generate(self, z, training=False, gauge_fixed=True):
        """Params ``{name: [K, *shape]}`` for noise `z` ``[K, noise_dim]`` (gauge-fixed unless asked not to,
        or when the model uses ``gauge="none"``)."""
        return super().generate(z, training=training, canonical=gauge_fixed)

    def sample(self, n, seed=0, gauge_fixed=True):
        """`n` generated networks as params ``{name: [n, *shape]}`` (inference-mode batch norm;
        deterministic in `seed`; usable inside tf.function)."""
        return super().sample(n, seed, canonical=gauge_fixed)

    def sample_flat(self, n, seed=0, gauge_fixed=True):
        """`n` generated networks as one matrix ``[n, target.num_params]``."""
        return self.target.flatten(self.sample(n, seed, gauge_fixed))

    def get_config(self):
        return {
            "name": self.name,
            "target": keras.saving.serialize_keras_object(self.target.model),
            "generator": keras.saving.serialize_keras_object(self.generator),
            "lam": self.lam,
            "gauge": self.gauge,
            "gamma": self.gamma,
            "num_networks": self.num_networks,
            "shared_batch": self.shared_batch,
            "entropy_dim": self.entropy_dim,
            "noise_bound": self.noise_bound,
            "seed": self.seed,
            "batchnorm_recalibration": self.batchnorm_recalibration,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["target"] = keras.saving.deserialize_keras_object(config["target"])
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        return cls(**config)
