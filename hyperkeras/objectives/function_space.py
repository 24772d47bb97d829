"""Diversity in what the networks compute, not in their weights: `FunctionSpaceEntropy` and `SVGD`.

Weight-space diversity is cheap to fake: rescaling a ReLU layer and un-scaling the next one, or
permuting hidden units, moves a network far in weight space without changing its function. These
regularisers of `hyperkeras.models.Hypernetwork` look at the networks' predictions instead (and `SVGD`
can also work in weight space, as the particle method of the HyperGAN authors and of
HorizonRobotics/alf's hypernetwork).

The predictions a regulariser sees (``predictions``, passed by the hypernetwork) are the K networks'
log-probabilities ``[K, B, C]`` on the batch for classification (log-softmax: invariant to the logit
shift, a trivial symmetry) and their outputs for regression.
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from hyperkeras import probabilities
from hyperkeras.objectives.base import LossTerm, RegularizerTerms, StepInputs, UpdateRule
from hyperkeras.objectives.entropy import kozachenko_leonenko_entropy
from hyperkeras.probes import PROBE_KINDS, make_probes, mixup_probe  # noqa: F401 - mixup_probe's old home

SPACES = ("weight", "function")


def _check_probe_size(probe_size):
    if probe_size is not None and (isinstance(probe_size, bool) or int(probe_size) != probe_size or probe_size < 1):
        raise ValueError(f"probe_size must be a positive int or None (the whole batch), got {probe_size!r}.")
    return None if probe_size is None else int(probe_size)


def network_predictions(target, params, x, task, training=False):
    """What function-space terms compare: log-probabilities ``[K, B, C]`` (classification) or outputs."""
    outputs = target.apply(params, x, training=training)
    if task == "classification":
        return probabilities.log_softmax(outputs, target.output_kind)
    return outputs


def _probe_predictions(target, params, probe_size, predictions, inputs, task, who):
    """The networks' predictions on the first `probe_size` examples of the batch, all networks on the same
    examples: the step's own predictions when every network saw the whole batch, else a pass of the probe."""
    if predictions is None:
        if inputs is None:
            raise ValueError(f"{who} needs the batch inputs (step.inputs).")
        probe = inputs if probe_size is None else inputs[:probe_size]
        predictions = network_predictions(target, params, probe, task)
    elif probe_size is not None:
        predictions = predictions[:, :probe_size]
    k = tf.shape(predictions)[0]
    return tf.reshape(predictions, [k, -1])


@keras.saving.register_keras_serializable(package="hyperkeras")
class FunctionSpaceEntropy(LossTerm):
    """Rewards networks for computing different functions: ``−weight · Ĥ(f_1..f_K)``.

    Ĥ is the Kozachenko–Leonenko entropy (`kozachenko_leonenko_entropy`, Deutsch's eq. 14) of the K
    networks' predictions on the same examples — their class probabilities (``features="probs"``, bounded: a
    network cannot buy distance by growing confident in different wrong classes) or log-probabilities
    (``"log_probs"``) on ``probe_size`` examples of the batch, flattened to ``[K, probe_size · C]`` — instead
    of their weights. For regression, the outputs. With ``shared_batch=True`` the
    step's own predictions are used (no extra cost); otherwise every network also runs on the first
    ``probe_size`` examples of the batch (``K · probe_size`` extra forward passes per step). With
    ``probe="mixup"`` the probe is ``probe_size`` random convex combinations of pairs of batch examples
    (`mixup_probe`; always an extra pass): the networks are pushed apart between the training examples,
    where the task loss does not hold them together. The other kinds of `hyperkeras.probes.make_probes`
    (``"noise"``, ``"augment"``, ``"smooth_noise"``) push them apart off the data (an extra pass too).

    Metric: ``function_entropy``.

    Args:
        weight: factor of −Ĥ.
        features: ``"probs"`` or ``"log_probs"`` (classification): what of the predictions is compared.
            (``space=`` is its 0.1 name, deprecated: `SVGD`'s ``space`` is the particle space.)
        probe: ``"batch"`` (examples of the batch), ``"mixup"`` (mixtures of pairs of them), or another
            kind of `hyperkeras.probes.make_probes`: ``"noise"``, ``"augment"``, ``"smooth_noise"``.
        probe_size: examples of the batch whose predictions are compared (default: all of them with a
            shared batch; 32 otherwise).
        entropy_dim: d of eq. 14 (default: the generator's noise dimension, the dimension of the manifold
            the generated functions lie on, as in `Entropy`).

    Example:

    ```python
    model = hyperkeras.models.Hypernetwork(target, HyperGANGenerator.from_target(target),
                                           regularizers=[FunctionSpaceEntropy(weight=0.1)], num_networks=16)
    ```
    """

    def __init__(
        self, weight=1.0, features="probs", probe_size=None, entropy_dim=None, probe="batch", space=None, **kwargs
    ):
        super().__init__(**kwargs)
        if space is not None:
            warnings.warn(
                "FunctionSpaceEntropy(space=...) is deprecated: use features= (SVGD's space= is the particle space).",
                DeprecationWarning,
                stacklevel=2,
            )
            features = space
        if not float(weight) >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        if features not in ("probs", "log_probs"):
            raise ValueError(f"features must be 'probs' or 'log_probs', got {features!r}.")
        self.features = features
        if probe not in ("batch", *PROBE_KINDS):
            raise ValueError(f"probe must be one of {('batch', *PROBE_KINDS)}, got {probe!r}.")
        self.probe = probe
        if entropy_dim is not None and not float(entropy_dim) > 0:
            raise ValueError(f"entropy_dim must be a positive number or None, got {entropy_dim!r}.")
        self.weight = float(weight)
        self.probe_size = _check_probe_size(probe_size)
        self.entropy_dim = entropy_dim
        self._dim = entropy_dim

    @property
    def metric_names(self):
        return ("function_entropy",)

    def setup(self, target, generator, num_networks):
        if int(num_networks) < 2:
            raise ValueError(f"FunctionSpaceEntropy needs num_networks >= 2 (nearest neighbours), got {num_networks}.")
        self._dim = self.entropy_dim if self.entropy_dim is not None else int(generator.noise_dim)
        self.built = True

    def compute(self, step: StepInputs) -> RegularizerTerms:
        target, params, seed, inputs, task = step.target, step.params, step.seed, step.inputs, step.task
        predictions = step.predictions
        if self.probe != "batch":
            if inputs is None:
                raise ValueError(f"FunctionSpaceEntropy(probe={self.probe!r}) needs the batch inputs (step.inputs).")
            seed = tf.constant([0, 0], tf.int32) if seed is None else seed
            mixed = make_probes(self.probe, inputs, self.probe_size or 32, seed)
            preds = network_predictions(target, params, mixed, task)
            features = tf.reshape(preds, [tf.shape(preds)[0], -1])
        else:
            probe = self.probe_size if (self.probe_size is not None or predictions is not None) else 32
            features = _probe_predictions(target, params, probe, predictions, inputs, task, "FunctionSpaceEntropy")
        if task == "classification" and self.features == "probs":
            features = tf.exp(features)
        entropy = kozachenko_leonenko_entropy(features, dim=self._dim)
        return RegularizerTerms(-self.weight * entropy, {"function_entropy": entropy})

    def get_config(self):
        config = super().get_config()
        config.update(
            weight=self.weight,
            features=self.features,
            probe_size=self.probe_size,
            entropy_dim=self.entropy_dim,
            probe=self.probe,
        )
        return config


def rbf_kernel(particles, bandwidth=None):
    """RBF kernel ``k_ij = exp(−‖x_i − x_j‖² / h)`` of particles ``[K, D]`` and the bandwidth h.

    With ``bandwidth=None``, h is the median heuristic of Liu & Wang (2016), ``h = med² / log K`` with
    med² the median of the squared distances between distinct particles (``log K`` floored at 1, so
    K ≤ 2 gives h = med²); h carries no gradient. Squared distances come from the centred Gram matrix.
    Returns ``(k [K, K], h)``.
    """
    x = tf.convert_to_tensor(particles)
    n = tf.shape(x)[0]
    c = x - tf.reduce_mean(x, axis=0, keepdims=True)
    sq = tf.reduce_sum(tf.square(c), axis=1)
    d2 = tf.maximum(sq[:, None] + sq[None, :] - 2.0 * tf.matmul(c, c, transpose_b=True), 0.0)
    d2 = tf.where(tf.eye(n, dtype=tf.bool), tf.zeros_like(d2), d2)
    if bandwidth is None:
        off = tf.sort(tf.boolean_mask(d2, ~tf.eye(n, dtype=tf.bool)))
        m = tf.size(off)
        median = 0.5 * (off[(m - 1) // 2] + off[m // 2])
        log_n = tf.math.log(tf.cast(n, x.dtype))
        h = median / tf.maximum(log_n, tf.cast(1.0, x.dtype))
        h = tf.stop_gradient(tf.maximum(h, tf.cast(1e-12, x.dtype)))
    else:
        h = tf.constant(bandwidth, x.dtype)  # (tf.cast of a Python float would go through float32)
    return tf.exp(-tf.stop_gradient(d2) / h), h


def svgd_direction(particles, log_prob_grads, bandwidth=None, repulsion=1.0):
    """The Stein variational gradient direction of Liu & Wang (2016), eq. 8, for K particles:

        φ(x_i) = (1/K) Σ_j [ k(x_j, x_i) ∇ log p(x_j) + repulsion · ∇_{x_j} k(x_j, x_i) ]

    with the RBF kernel of `rbf_kernel` (median bandwidth by default); ``∇_{x_j} k(x_j, x_i) =
    (2/h)(x_i − x_j) k_ij``. Particles ascend φ. `repulsion` scales the second term (a temperature: 1 is
    SVGD; larger spreads the particles more). No gradient flows through the result.

    Args:
        particles: ``[K, D]``.
        log_prob_grads: ``[K, D]``, ∇ log p at each particle.
    """
    x = tf.stop_gradient(tf.convert_to_tensor(particles))
    k, h = rbf_kernel(x, bandwidth)
    return _stein_direction(x, log_prob_grads, k, h, repulsion)


def _stein_direction(x, log_prob_grads, k, h, repulsion):
    """`svgd_direction` from the kernel matrix `k` and bandwidth `h` of the particles `x` (no gradient)."""
    g = tf.stop_gradient(tf.convert_to_tensor(log_prob_grads, x.dtype))
    n = tf.cast(tf.shape(x)[0], x.dtype)
    drive = tf.matmul(k, g, transpose_a=True)  # Σ_j k_ji g_j (k is symmetric)
    repel = (2.0 / h) * (x * tf.reduce_sum(k, axis=0)[:, None] - tf.matmul(k, x, transpose_a=True))
    return (drive + tf.cast(repulsion, x.dtype) * repel) / n


@keras.saving.register_keras_serializable(package="hyperkeras")
class SVGD(UpdateRule):
    """Trains the generator by Stein variational gradient descent (amortised SVGD) on the K networks.

    The K generated networks are particles: in weight space the flattened weights θ_k, in function space
    their predictions f_k on the batch (log-probabilities; Wang et al. 2019). Each step moves the
    generator so that every particle follows the SVGD direction φ (`svgd_direction`): the
    kernel-smoothed gradient of the log-likelihood (−per-network task loss, times ``task_weight``) plus
    ``repulsion`` times the kernel's repulsive gradient, by minimising ``−Σ_k stop_gradient(φ_k)·x_k``
    (for function space the chain rule through f_k = f(θ_k) gives the generator's gradient). This term
    replaces the plain task loss in the generator's gradient: with one network (k = 1 everywhere) it is
    exactly the task loss's gradient. The hypernetwork still reports ``task_loss`` and ``accuracy``.

    Function space needs ``shared_batch=True`` (all networks on the same examples).

    **A prior in weight space.** Without one (``weight_decay=0``, the default) the target density is the
    likelihood alone, which is flat along a network's symmetries (with ReLU, scaling one layer up and the
    next down gives the same function): the repulsion then spreads the particles along them without bound.
    Measured on Deutsch's MNIST target (`experiments/compare_ensembles`, 320k images): the first conv layer's
    kernels grow to a standard deviation of 16–83 (directly trained networks: 0.1), most of its units are
    dead on test images, and the networks fall to chance under reduced contrast. ``weight_decay`` adds a
    Gaussian prior on every generated weight: ∇ log p(θ_k) gets ``−weight_decay · θ_k`` beside the task
    loss's term (so it is kernel-smoothed like the likelihood, as in Liu & Wang's Bayesian networks). With
    the task loss a mean over N training examples, ``weight_decay = 1 / (N σ²)`` is the prior N(0, σ²).

    Metrics: ``svgd_bandwidth`` (h of the median heuristic), ``svgd_kernel`` (mean off-diagonal kernel
    value: near 1, the particles have collapsed; near 0, they no longer interact).

    Args:
        space: ``"weight"`` or ``"function"``.
        repulsion: factor of the repulsive term (1 = SVGD; the posterior temperature).
        bandwidth: RBF bandwidth h, or None for the median heuristic.
        weight_decay: precision of a Gaussian prior on every generated weight, relative to the task loss
            (weight space only; 0 = no prior).

    Reference:
        Liu & Wang, "Stein Variational Gradient Descent" (NeurIPS 2016); Wang et al., "Function Space
        Particle Optimization for Bayesian Neural Networks" (ICLR 2019); Ratzlaff & Fuxin (2019), and
        HorizonRobotics/alf's hypernetwork, for SVGD of a generator.
    """

    def __init__(self, space="function", repulsion=1.0, bandwidth=None, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}.")
        if not float(repulsion) >= 0:
            raise ValueError(f"repulsion must be >= 0, got {repulsion}.")
        if not float(weight_decay) >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        if float(weight_decay) and space != "weight":
            raise ValueError(
                "weight_decay is a prior on the generated weights: it needs space='weight' (in function space "
                "the particles are predictions)."
            )
        if bandwidth is not None and not float(bandwidth) > 0:
            raise ValueError(f"bandwidth must be > 0 or None (median heuristic), got {bandwidth!r}.")
        self.space = space
        self.repulsion = float(repulsion)
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        self.weight_decay = float(weight_decay)

    @property
    def particle_space(self):
        return self.space

    @property
    def metric_names(self):
        return ("svgd_bandwidth", "svgd_kernel")

    def setup(self, target, generator, num_networks):
        if int(num_networks) < 2:
            raise ValueError(f"SVGD needs num_networks >= 2 particles, got {num_networks}.")
        self.built = True

    def compute(self, step: StepInputs) -> RegularizerTerms:
        particles, particle_grads = step.particles, step.particle_grads
        if particles is None or particle_grads is None:
            raise ValueError(
                "SVGD needs step.particles and step.particle_grads (given by Hypernetwork to its update rule)."
            )
        x = tf.stop_gradient(particles)
        if self.weight_decay:  # ∇ log of the Gaussian prior
            particle_grads = particle_grads - tf.cast(self.weight_decay, x.dtype) * x
        k, h = rbf_kernel(x, self.bandwidth)  # once, for the direction and the metrics
        phi = _stein_direction(x, particle_grads, k, h, self.repulsion)
        loss = -tf.reduce_sum(phi * particles)
        n = tf.cast(tf.shape(k)[0], k.dtype)
        mean_k = (tf.reduce_sum(k) - n) / (n * (n - 1.0))
        return RegularizerTerms(loss, {"svgd_bandwidth": h, "svgd_kernel": mean_k})

    def get_config(self):
        config = super().get_config()
        config.update(
            space=self.space, repulsion=self.repulsion, bandwidth=self.bandwidth, weight_decay=self.weight_decay
        )
        return config
