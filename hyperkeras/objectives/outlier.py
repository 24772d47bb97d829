"""`OutlierEntropy`: the generated ensemble should be unsure off the data.

The task loss makes every generated network confident on the training data, and nothing stops them
from being just as confident — and agreeing — on inputs unlike any of it. This loss term shows the
networks synthetic outliers (`hyperkeras.probes`, by default smooth multi-octave noise images) and
rewards a high entropy of the ensemble's prediction there. HE-CKA (Smerkous, Bai & Li 2024) likewise
trains on synthetic outliers (with a feature-repulsive term); Outlier Exposure (Hendrycks et al. 2019)
pushes predictions on real outliers toward the uniform distribution.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from hyperkeras import probabilities
from hyperkeras.objectives.base import LossTerm, RegularizerTerms, StepInputs
from hyperkeras.probes import PROBE_KINDS, make_probes

MODES = ("mean", "members", "own")


def outlier_entropy(log_probs, mode="mean"):
    """The entropy (nats) of K networks' predictions on probes, averaged over the probes.

    Args:
        log_probs: ``[K, P, C]`` log-probabilities of K networks on P probes.
        mode: ``"mean"`` — H(mean_k p_k), the entropy of the ensemble's mean predictive distribution;
            ``"members"`` or ``"own"`` — mean_k H(p_k), the mean entropy of the members' own predictions
            (with ``"own"`` probe b of network k is its own probe, not the same image for every network).

    Returns:
        A scalar: the mean over the P probes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode == "mean":
        k = tf.cast(tf.shape(log_probs)[0], log_probs.dtype)
        log_mean = tf.reduce_logsumexp(log_probs, axis=0) - tf.math.log(k)  # [P, C], log of mean_k p_k
        return tf.reduce_mean(-tf.reduce_sum(tf.exp(log_mean) * log_mean, axis=-1))
    return tf.reduce_mean(-tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1))


@keras.saving.register_keras_serializable(package="hyperkeras")
class OutlierEntropy(LossTerm):
    """Pushes the ensemble's prediction on synthetic outliers toward high entropy: ``−weight · H̄``.

    Each step draws ``probe_size`` probes with `hyperkeras.probes.make_probes` (``probe`` kind; shapes and
    value range from the batch, randomness from the step's seed), runs the K generated networks on them
    (inference mode: no dropout, BatchNorm with its moving statistics; ``K · probe_size`` extra forward
    passes) and computes, per probe b, with p_k(b) the softmax of network k:

    - ``mode="mean"`` (default): ``H(mean_k p_k(b))``, the entropy of the ensemble's mean predictive
      distribution — the total uncertainty, which the ensemble can raise by each member being unsure *or*
      by the members disagreeing (it is the members' mean entropy plus their mutual information); the
      mode that matches how the ensemble predicts (from the mean of the probabilities);
    - ``mode="members"``: ``mean_k H(p_k(b))`` — every member unsure by itself; no reward for disagreement;
    - ``mode="own"``: ``mean_k H(p_k(b))`` over the probes b of network k's own share: the ``probe_size``
      probes are shared out among the K networks as `Hypernetwork` shares out the batch
      (``shared_batch=False``): network k gets the contiguous block of ``probe_size / K`` probes, so the
      term costs ``probe_size`` forward passes, not ``K · probe_size``. It is the term each member of a deep
      ensemble gets from `hyperkeras.baselines.OutlierExposure`: with a batch of B shared out and
      ``probe_size`` probes shared out, every generated network sees probes and data in the ratio such a
      member sees ``probe_size`` probes per batch of B. Needs a static K that divides ``probe_size``.

    ``loss = −weight · mean_b H`` (nats; at most log C). Metric ``outlier_entropy``: mean_b H. Classification
    only. Computed in float32 (at least).

    Args:
        weight: factor of −H̄ (>= 0).
        probe: a kind of `hyperkeras.probes.make_probes`: ``"smooth_noise"`` (default), ``"noise"``,
            ``"augment"`` or ``"mixup"``. Near-data kinds (mixup, mild augmentation) can contradict the
            task loss: they are the data's neighbourhood, where the networks should be right.
        probe_size: probes drawn per step (seen by every network, or shared out with ``mode="own"``).
        mode: ``"mean"``, ``"members"`` or ``"own"`` (above).
        probe_options: keyword options of the probe source (e.g. ``{"octaves": 3}``), or None.

    Reference:
        Smerkous, Bai & Li, "Enhancing Diversity in Bayesian Deep Learning via Hyperspherical Energy
        Minimization of CKA" (NeurIPS 2024): terms on synthetically generated outliers; Hendrycks, Mazeika &
        Dietterich, "Deep Anomaly Detection with Outlier Exposure" (ICLR 2019): uncertain predictions on
        (real) outliers as a training target.

    Example:

    ```python
    model = hyperkeras.models.Hypernetwork(
        target, gen, regularizers=[OutlierEntropy(weight=0.1, probe="smooth_noise")], num_networks=8
    )
    ```
    """

    def __init__(self, weight=0.1, probe="smooth_noise", probe_size=32, mode="mean", probe_options=None, **kwargs):
        super().__init__(**kwargs)
        if not float(weight) >= 0:
            raise ValueError(f"OutlierEntropy: weight must be >= 0, got {weight!r}.")
        if probe not in PROBE_KINDS:
            raise ValueError(f"OutlierEntropy: probe must be one of {PROBE_KINDS}, got {probe!r}.")
        if isinstance(probe_size, bool) or int(probe_size) != probe_size or probe_size < 1:
            raise ValueError(f"OutlierEntropy: probe_size must be a positive int, got {probe_size!r}.")
        if mode not in MODES:
            raise ValueError(f"OutlierEntropy: mode must be one of {MODES}, got {mode!r}.")
        if probe_options is not None and not isinstance(probe_options, dict):
            raise ValueError(f"OutlierEntropy: probe_options must be a dict or None, got {probe_options!r}.")
        self.weight = float(weight)
        self.probe = probe
        self.probe_size = int(probe_size)
        self.mode = mode
        self.probe_options = dict(probe_options or {})

    @property
    def metric_names(self):
        return ("outlier_entropy",)

    def _check_share(self, k):
        if k is None:
            raise ValueError("OutlierEntropy(mode='own') needs a static number of networks K (params [K, ...]).")
        if self.probe_size % k:
            raise ValueError(
                f"OutlierEntropy(mode='own') shares probe_size={self.probe_size} probes out among K={k} networks: "
                "probe_size must be a multiple of K."
            )
        return k

    def setup(self, target, generator, num_networks, task="classification"):
        if self.mode == "own":
            self._check_share(num_networks)
        if task != "classification":
            raise ValueError(
                f"OutlierEntropy needs a classification task (an entropy of class probabilities), got {task!r}."
            )
        self.built = True

    def compute(self, step: StepInputs) -> RegularizerTerms:
        if step.task != "classification":
            raise ValueError(f"OutlierEntropy needs a classification task, got {step.task!r}.")
        if step.inputs is None:
            raise ValueError("OutlierEntropy needs the batch inputs (step.inputs) for the probes' shape and range.")
        seed = tf.constant([0, 0], tf.int32) if step.seed is None else step.seed
        probes = tf.stop_gradient(make_probes(self.probe, step.inputs, self.probe_size, seed, **self.probe_options))
        if self.mode == "own":  # network k sees probes [k·P/K, (k + 1)·P/K)
            k = self._check_share(next(iter(step.params.values())).shape[0])
            probes = tf.reshape(probes, [k, self.probe_size // k, *probes.shape[1:]])
        outputs = step.target.apply(step.params, probes, training=False)
        if outputs.dtype.size < 4:  # float16 / bfloat16 under mixed precision
            outputs = tf.cast(outputs, tf.float32)
        log_probs = probabilities.log_softmax(outputs, step.target.output_kind)
        entropy = outlier_entropy(log_probs, self.mode)
        return RegularizerTerms(-self.weight * entropy, {"outlier_entropy": entropy})

    def get_config(self):
        config = super().get_config()
        config.update(
            weight=self.weight,
            probe=self.probe,
            probe_size=self.probe_size,
            mode=self.mode,
            probe_options=dict(self.probe_options),
        )
        return config
