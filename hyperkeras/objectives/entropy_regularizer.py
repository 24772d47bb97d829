"""`Entropy`: Deutsch's entropy term −Ĥ(S(θ)) (+ γ·G(θ)) as a regulariser of `Hypernetwork`."""

from __future__ import annotations

import keras
import tensorflow as tf

from hyperkeras.objectives.base import LossTerm, RegularizerTerms, StepInputs
from hyperkeras.objectives.entropy import kozachenko_leonenko_entropy
from hyperkeras.objectives.gauge import check_gauge, gauge_penalty, gauge_transform

GAUGES = ("transform", "penalty", "none")


@keras.saving.register_keras_serializable(package="hyperkeras")
class Entropy(LossTerm):
    """Rewards generated networks for being different: ``−weight · Ĥ(S(θ))`` (+ ``γ · mean_k G(θ_k)``).

    Ĥ is the Kozachenko–Leonenko entropy (eq. 14, `kozachenko_leonenko_entropy`) of the K networks of a
    step, flattened. With ``gauge="transform"`` (the paper) it is taken of the gauge-fixed networks S(θ)
    (eq. 11: scale and logit-bias symmetries removed, `gauge_transform`), and the hypernetwork's `sample`
    returns gauge-fixed networks (`canonical`); with ``gauge="penalty"`` of θ itself, plus the penalty
    ``γ · mean_k G(θ_k)`` (eq. 8, `gauge_penalty`); ``"none"`` uses θ (any target).

    The gauge follows the hypernetwork's task (passed to `setup`): for classification both symmetries
    (the target's output must be logits, or a softmax of them); for regression only the scale symmetry
    of the hidden layers — the output is a value, not logits, so shifting the output bias would change
    the networks' predictions (`sample` would return networks other than those trained) and the output
    bias stays free. Deutsch's objective
    ``λ·CE − Ĥ`` is `hyperkeras.models.Hypernetwork` with ``task_weight=λ`` and ``Entropy()``
    (`hyperkeras.models.EntropyHypernetwork` is that preset).

    Metrics: ``entropy`` (Ĥ, nats up to the estimator's constant), and ``gauge`` (mean G) with
    ``gauge="penalty"``.

    Args:
        weight: factor of −Ĥ (paper: 1, with the cross-entropy weighted by λ).
        gauge: ``"transform"``, ``"penalty"`` or ``"none"``. Gauge fixing needs symmetries only some targets
            have (`check_gauge`, called when the hypernetwork is built, raises ValueError naming the layer
            that breaks them, e.g. a classification output that is not logits).
        gamma: γ, the weight of the gauge penalty (``gauge="penalty"`` only).
        entropy_dim: d of eq. 14 (default: the generator's noise dimension, as the paper).

    Example:

    ```python
    model = hyperkeras.models.Hypernetwork(
        target, DeutschGenerator.paper_config(target), regularizers=[Entropy(gauge="transform")],
        task_weight=1e3, num_networks=32, shared_batch=False)
    ```

    Reference:
        Deutsch, "Generating neural networks with neural networks" (2018), arXiv:1801.01952, eqs. 7–14.
    """

    def __init__(self, weight=1.0, gauge="transform", gamma=1.0, entropy_dim=None, **kwargs):
        super().__init__(**kwargs)
        if gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}.")
        if not float(weight) >= 0 or not float(gamma) >= 0:
            raise ValueError(f"weight and gamma must be >= 0; got {weight}, {gamma}.")
        if entropy_dim is not None and not float(entropy_dim) > 0:
            raise ValueError(f"entropy_dim must be a positive number or None, got {entropy_dim!r}.")
        self.weight = float(weight)
        self.gauge = gauge
        self.gamma = float(gamma)
        self.entropy_dim = entropy_dim
        self._dim = entropy_dim
        self._task = "classification"  # set by `setup`

    @property
    def metric_names(self):
        return ("entropy", "gauge") if self.gauge == "penalty" else ("entropy",)

    def setup(self, target, generator, num_networks, task="classification"):
        """Checks the target's symmetries for the gauge of `task` (see the class docstring).

        Raises:
            ValueError: ``num_networks < 2``, or gauge fixing cannot be proved for this target and task
                (`check_gauge` names the layer).
        """
        if int(num_networks) < 2:
            raise ValueError(f"Entropy needs num_networks >= 2 (nearest neighbours), got {num_networks}.")
        if self.gauge != "none":
            check_gauge(target, task)  # names the layer whose symmetry cannot be proved
        self._task = task
        self._dim = self.entropy_dim if self.entropy_dim is not None else int(generator.noise_dim)
        self.built = True

    def compute(self, step: StepInputs) -> RegularizerTerms:
        target, params = step.target, step.params
        fixed = gauge_transform(target, params, task=self._task) if self.gauge == "transform" else params
        entropy = kozachenko_leonenko_entropy(target.flatten(fixed), dim=self._dim)
        loss = -self.weight * entropy
        metrics = {"entropy": entropy}
        if self.gauge == "penalty":
            gauge = tf.reduce_mean(gauge_penalty(target, params, task=self._task))
            loss = loss + self.gamma * gauge
            metrics["gauge"] = gauge
        return RegularizerTerms(loss, metrics)

    def canonical(self, target, params):
        return gauge_transform(target, params, task=self._task) if self.gauge == "transform" else params

    def get_config(self):
        config = super().get_config()
        config.update(weight=self.weight, gauge=self.gauge, gamma=self.gamma, entropy_dim=self.entropy_dim)
        return config
