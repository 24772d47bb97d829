"""What `hyperkeras.ensembles.predict` returns: the predictions of N networks, fused several ways."""

from __future__ import annotations

import dataclasses

import numpy as np

from hyperkeras.probabilities import entropy

__all__ = ["EnsemblePrediction", "RegressionPrediction"]


@dataclasses.dataclass
class EnsemblePrediction:
    """Predictions of N networks on B examples with C classes (NumPy arrays).

    Attributes:
        num_networks: N.
        mean_probs: ``[B, C]`` mean over networks of the softmax probabilities.
        fused_logits: ``[B, C]`` mean over networks of the logits (logit fusion).
        vote_counts: ``[B, C]`` number of networks predicting each class.
        member_predictions: ``[N, B]`` int32, each network's predicted class.
        member_probs: ``[N, B, C]`` float32 probabilities of each network, or None when not kept.
        expected_entropy: ``[B]`` mean over networks of each network's predictive entropy.
        labels: ``[B]`` labels found in the dataset (``(x, y)`` elements), else None.
    """

    num_networks: int
    mean_probs: np.ndarray
    fused_logits: np.ndarray
    vote_counts: np.ndarray
    member_predictions: np.ndarray
    member_probs: np.ndarray | None
    expected_entropy: np.ndarray
    labels: np.ndarray | None = None

    @property
    def fused_probs(self) -> np.ndarray:
        """``[B, C]`` softmax of the fused (mean) logits."""
        z = self.fused_logits - self.fused_logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @property
    def mean_prediction(self) -> np.ndarray:
        """``[B]`` argmax of `mean_probs`."""
        return self.mean_probs.argmax(axis=1)

    @property
    def fused_prediction(self) -> np.ndarray:
        """``[B]`` argmax of `fused_logits`."""
        return self.fused_logits.argmax(axis=1)

    @property
    def majority_vote(self) -> np.ndarray:
        """``[B]`` most frequent per-network class (ties go to the lowest class index)."""
        return self.vote_counts.argmax(axis=1)

    @property
    def predictive_entropy(self) -> np.ndarray:
        """``[B]`` entropy (nats) of `mean_probs`: total predictive uncertainty."""
        return entropy(self.mean_probs, axis=1)

    @property
    def mutual_information(self) -> np.ndarray:
        """``[B]`` predictive entropy minus expected entropy (disagreement between networks)."""
        return np.maximum(self.predictive_entropy - self.expected_entropy, 0.0)

    @property
    def agreement(self) -> np.ndarray:
        """``[B]`` fraction of networks voting for the majority class."""
        return self.vote_counts.max(axis=1) / float(self.num_networks)

    def member_accuracy(self, labels) -> np.ndarray:
        """``[N]`` accuracy of each network."""
        labels = np.asarray(labels)
        return np.mean(self.member_predictions == labels[None, :], axis=1)


@dataclasses.dataclass
class RegressionPrediction:
    """Outputs of N regression networks on B examples (NumPy arrays).

    Attributes:
        num_networks: N.
        mean: ``[B, *output_shape]`` mean over networks.
        std: ``[B, *output_shape]`` standard deviation over networks (population, ddof = 0).
        member_outputs: ``[N, B, *output_shape]`` or None when not kept.
    """

    num_networks: int
    mean: np.ndarray
    std: np.ndarray
    member_outputs: np.ndarray | None
    labels: np.ndarray | None = None


# ---------------------------------------------------------------------- sources of networks
