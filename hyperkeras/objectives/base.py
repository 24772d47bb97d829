"""The regulariser contract: a term added to a hypernetwork's loss, computed from the generated networks."""

from __future__ import annotations

import inspect
from typing import NamedTuple

import keras


class RegularizerTerms(NamedTuple):
    """What a regulariser contributes to one step.

    Attributes:
        loss: scalar added to the hypernetwork's loss (already weighted).
        metrics: ``{name: scalar}`` for the names in `Regularizer.metric_names`.
        own_loss: scalar the regulariser's own optimizer minimises over its own variables (e.g. a
            discriminator's loss), or None.
    """

    loss: object
    metrics: dict
    own_loss: object = None


@keras.saving.register_keras_serializable(package="hyperkeras")
class Regularizer(keras.layers.Layer):
    """Base class of the regularisers of `hyperkeras.models.Hypernetwork`.

    A regulariser sees the params ``{name: [K, *shape]}`` of the K networks generated in a step and the
    generator's auxiliary outputs, never how the generator is built, and returns its loss term and named
    metrics (`RegularizerTerms`); the hypernetwork adds the terms to the task loss. A regulariser may own
    variables trained by its own optimizer (`LatentGAN`'s discriminator): it then implements
    `build_optimizer`, which the hypernetwork calls from ``compile`` (never lazily: lazy optimizer builds
    break under `tf.distribute`), and returns ``own_loss``.

    Subclasses implement `terms`, and may override `setup` (checks and weights, once the target,
    generator and task are known), `metric_names`, `canonical` and `build_optimizer`.
    """

    @property
    def metric_names(self) -> tuple:
        """Names of the metrics `terms` reports (shown in the Keras progress line)."""
        return ()

    @property
    def particle_space(self):
        """None, or ``"weight"``/``"function"`` for a particle method (`SVGD`): the hypernetwork then passes
        `terms` the K particles (flattened weights, or predictions on the batch) and the gradients of the
        per-network log-likelihood at them (``particles=``, ``particle_grads=``), and the regulariser's
        loss replaces the task loss in the generator's gradient."""
        return None

    @property
    def has_optimizer(self) -> bool:
        """True if this regulariser trains variables of its own with its own optimizer."""
        return False

    def setup(self, target, generator, num_networks, task="classification"):
        """Called once by the hypernetwork (through `run_setup`): check that the regulariser applies and
        create its weights.

        Args:
            target: the `hyperkeras.TargetNetwork`.
            generator: the `hyperkeras.generators.Generator`.
            num_networks: K, networks generated per step.
            task: the hypernetwork's task, ``"classification"`` (outputs are logits or probabilities) or
                ``"regression"``. Overrides may leave this argument out (the signature of hyperkeras
                0.1): it is then not passed.
        """
        self.built = True

    def run_setup(self, target, generator, num_networks, task="classification"):
        """Calls `setup`, with ``task=`` only if the subclass's `setup` accepts it (a ``task`` parameter or
        ``**kwargs``), so regularisers written for the older signature keep working."""
        params = inspect.signature(self.setup).parameters.values()
        if any(p.name == "task" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return self.setup(target, generator, num_networks, task=task)
        return self.setup(target, generator, num_networks)

    def terms(self, target, params, aux, training=False, seed=None, **inputs) -> RegularizerTerms:
        """The regulariser's contribution for the generated `params` (and the generator's `aux` outputs).

        Args:
            target: the `hyperkeras.TargetNetwork`.
            params: ``{name: [K, *shape]}``.
            aux: the generator's auxiliary outputs ``{name: [K, ...]}``.
            training: training mode of the regulariser's own layers.
            seed: a stateless seed pair for any randomness of the term (fixed per step).
            **inputs: optional inputs a regulariser understands; others ignore them. The hypernetwork
                passes ``inputs`` (the batch), ``task``, ``predictions`` (the K networks'
                log-probabilities ``[K, B, C]`` on the batch, or outputs for regression; None when the
                networks saw different examples), and ``particles``/``particle_grads`` to particle
                methods; users may add more (e.g. `LatentGAN`'s ``prior``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement terms(target, params, aux, ...).")

    def canonical(self, target, params):
        """The networks in the form in which the hypernetwork returns them from ``sample`` (default: as
        generated). `Entropy` with ``gauge="transform"`` returns the gauge-fixed networks."""
        return params

    def build_optimizer(self, optimizer=None):
        """Creates and builds this regulariser's optimizer (from ``compile``); returns it, or None."""
        return None
