"""`CKAEnergy`: generated networks pushed apart in what their hidden layers compute, on probe inputs.

Weight-space repulsion can be fooled by trivial symmetries, and prediction-space repulsion sees only the
last layer. This loss term compares the K networks layer by layer through their feature kernels: for
network k and a hidden layer, the P × P Gram matrix of its features on P probe inputs, centred. Linear CKA
(Kornblith et al. 2019) between two networks is the cosine between their centred Gram matrices — invariant
to rotations and isotropic scalings of the features, hence to permutations of hidden units. Treating each
network's normalised centred Gram matrix as a point on the unit hypersphere, the term minimises the
hyperspherical energy of the K points (Liu et al. 2018): pairs of networks with similar feature kernels
(CKA near 1) cost much, dissimilar ones little. That is the repulsion of HE-CKA (Smerkous, Bai & Li,
NeurIPS 2024), there applied to deep ensembles and hypernetworks, on training inputs and synthetic
outliers alike.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from hyperkeras.objectives.base import LossTerm, RegularizerTerms, StepInputs
from hyperkeras.probes import PROBE_KINDS, make_probes

ENERGIES = ("hyperspherical", "cka")


def centered_gram(features):
    """``[K, P, P]`` centred linear Gram matrices H F_k F_kᵀ H (H = I − 11ᵀ/P) of features ``[K, P, D]``."""
    f = features - tf.reduce_mean(features, axis=1, keepdims=True)  # centring the features centres the Gram
    return tf.einsum("kpd,kqd->kpq", f, f)


def cka_matrix(features, eps=1e-12):
    """``[K, K]`` linear CKA between every pair of K networks' features ``[K, P, D]`` on the same P inputs:
    ⟨G_k, G_l⟩_F / (‖G_k‖_F ‖G_l‖_F) of the centred Gram matrices (`centered_gram`); 1 on the diagonal."""
    g = centered_gram(features)
    k = tf.shape(g)[0]
    flat = tf.reshape(g, [k, -1])
    unit = flat / tf.sqrt(tf.reduce_sum(flat * flat, axis=1, keepdims=True) + eps)
    return tf.matmul(unit, unit, transpose_b=True)


def hyperspherical_energy(cka, s=2.0, eps=1e-6):
    """Mean over pairs k ≠ l of ``d_kl^(−s)``, with ``d_kl = sqrt(2 − 2·CKA_kl)`` the chord distance between the
    two networks' unit-norm centred Gram matrices (`cka_matrix`). `eps` keeps it finite for equal kernels."""
    k = tf.shape(cka)[0]
    dist2 = tf.maximum(2.0 - 2.0 * cka, 0.0) + eps
    off = 1.0 - tf.eye(k, dtype=cka.dtype)
    pairs = tf.cast(k * (k - 1), cka.dtype)
    return tf.reduce_sum(off * dist2 ** (-0.5 * s)) / pairs


@keras.saving.register_keras_serializable(package="hyperkeras")
class CKAEnergy(LossTerm):
    """Repels the K networks' hidden-layer feature kernels on probes: ``weight · mean_l E_l``.

    Each step: P = ``probe_size`` probes (``probe="batch"``: the first P examples of the batch; or a kind of
    `hyperkeras.probes.make_probes`, e.g. ``"smooth_noise"``, seeded by the step), the K networks' features
    on them at each layer in ``layers`` (`TargetNetwork.features`: by default every Conv/Dense layer but the
    output layer; inference mode; K·P extra forward passes), per layer the K × K linear CKA of their centred
    Gram matrices (`cka_matrix`), and

    - ``energy="hyperspherical"`` (default): E_l = `hyperspherical_energy` (exponent ``s``);
    - ``energy="cka"``: E_l = the mean off-diagonal CKA.

    Metric ``feature_cka``: the mean off-diagonal CKA over layers (1 = the same features up to rotation and
    scale). Needs K >= 2 networks and a Functional or Sequential target. Computed in float32 (at least).

    Args:
        weight: factor of the energy (>= 0).
        probe: ``"batch"`` or a kind of `hyperkeras.probes.make_probes`.
        probe_size: P, probes per step (>= 2: a Gram matrix of one input is 0 once centred).
        layers: Keras layer names, or None for `TargetNetwork.feature_layers`.
        energy: ``"hyperspherical"`` or ``"cka"``.
        s: exponent of the hyperspherical energy (> 0).

    Reference:
        Smerkous, Bai & Li, "Enhancing Diversity in Bayesian Deep Learning via Hyperspherical Energy
        Minimization of CKA" (NeurIPS 2024); Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network
        Representations Revisited" (ICML 2019); Liu et al., "Learning towards Minimum Hyperspherical Energy"
        (NeurIPS 2018).
    """

    def __init__(self, weight=1.0, probe="batch", probe_size=16, layers=None, energy="hyperspherical", s=2.0, **kwargs):
        super().__init__(**kwargs)
        if not float(weight) >= 0:
            raise ValueError(f"CKAEnergy: weight must be >= 0, got {weight!r}.")
        if probe != "batch" and probe not in PROBE_KINDS:
            raise ValueError(f"CKAEnergy: probe must be 'batch' or one of {PROBE_KINDS}, got {probe!r}.")
        if isinstance(probe_size, bool) or int(probe_size) != probe_size or probe_size < 2:
            raise ValueError(f"CKAEnergy: probe_size must be an int >= 2, got {probe_size!r}.")
        if energy not in ENERGIES:
            raise ValueError(f"CKAEnergy: energy must be one of {ENERGIES}, got {energy!r}.")
        if not float(s) > 0:
            raise ValueError(f"CKAEnergy: s must be > 0, got {s!r}.")
        self.weight, self.probe, self.probe_size = float(weight), probe, int(probe_size)
        self.layers = None if layers is None else tuple(layers)
        self.energy, self.s = energy, float(s)

    @property
    def metric_names(self):
        return ("feature_cka",)

    def setup(self, target, generator, num_networks, task="classification"):
        if num_networks < 2:
            raise ValueError(f"CKAEnergy compares networks: it needs num_networks >= 2, got {num_networks}.")
        target.features(target.get_params(), tf.zeros([2, *target.input_shape], target.input_dtype), self.layers)
        self.built = True

    def compute(self, step: StepInputs) -> RegularizerTerms:
        if step.inputs is None:
            raise ValueError("CKAEnergy needs the batch inputs (step.inputs).")
        if self.probe == "batch":
            probes = step.inputs[: self.probe_size]
        else:
            seed = tf.constant([0, 0], tf.int32) if step.seed is None else step.seed
            probes = make_probes(self.probe, step.inputs, self.probe_size, seed)
        energies, similarities = [], []
        for f in step.target.features(step.params, tf.stop_gradient(probes), self.layers, training=False):
            if f.dtype.size < 4:
                f = tf.cast(f, tf.float32)
            cka = cka_matrix(f)
            k = tf.shape(cka)[0]
            mean_cka = (tf.reduce_sum(cka) - tf.linalg.trace(cka)) / tf.cast(k * (k - 1), cka.dtype)
            similarities.append(mean_cka)
            energies.append(hyperspherical_energy(cka, self.s) if self.energy == "hyperspherical" else mean_cka)
        energy = tf.add_n(energies) / len(energies)
        return RegularizerTerms(self.weight * energy, {"feature_cka": tf.add_n(similarities) / len(similarities)})

    def get_config(self):
        config = super().get_config()
        config.update(
            weight=self.weight,
            probe=self.probe,
            probe_size=self.probe_size,
            layers=None if self.layers is None else list(self.layers),
            energy=self.energy,
            s=self.s,
        )
        return config
