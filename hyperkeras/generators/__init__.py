"""Weight generators: noise ``[K, noise_dim]`` -> params ``{name: [K, *shape]}`` of a target (+ aux outputs).

Every generator follows the `Generator` contract (base.py): it exposes `noise_dim` and its noise prior
`noise_distribution` (a TFP distribution), samples its own noise (`sample_noise`) and maps it to the full
params dict of a `hyperkeras.TargetNetwork` (`generate`), optionally with auxiliary outputs.

- `DeutschGenerator` (deutsch.py): extractor + filter generators shared across filters (Deutsch 2018).
- `HyperGANGenerator` (hypergan.py): mixer + one layer generator per target layer (Ratzlaff & Fuxin);
  its codes are an auxiliary output, for `hyperkeras.objectives.LatentGAN`'s discriminator.

- `MLPGenerator` (mlp.py): one MLP from [condition, noise] to the flat parameter vector (von Oswald et al.).
- `ChunkedGenerator` (chunked.py): one shared head emits the flat vector chunk by chunk, each chunk from its
  own learned chunk embedding, so the generator can be far smaller than its target.

All generate every trainable weight of any target: Conv/Dense kernels and biases in their own way, and
the other tensors (``TargetNetwork.plain_specs``) as ``initial value + plain_scale · output`` (plain.py).

Conditioning: a generator made with ``num_conditions=N`` (integer task ids, each a learned `TaskEmbedding`)
or ``condition_dim=d`` (float condition vectors) takes ``generate(target, noise, condition=...)``
(`Generator.condition_vectors`); `MLPGenerator`, `ChunkedGenerator` and `HyperGANGenerator` (at the mixer's
input) can be conditioned, `DeutschGenerator` cannot. Initialisation of the flat generators: hyperfan-in /
hyperfan-out and the residual form θ₀ + Δ (hyperfan.py)."""

from hyperkeras.generators.base import Generator, TaskEmbedding  # noqa: E402,F401
from hyperkeras.generators.chunked import ChunkedGenerator  # noqa: E402,F401
from hyperkeras.generators.deutsch import DeutschGenerator  # noqa: E402,F401
from hyperkeras.generators.hyperfan import hyperfan_scales  # noqa: E402,F401
from hyperkeras.generators.hypergan import (  # noqa: E402,F401
    HyperGANGenerator,
    LayerGenerator,
    Mixer,
)
from hyperkeras.generators.mlp import FlatGenerator, MLPGenerator  # noqa: E402,F401
from hyperkeras.generators.plain import plain_initial_values, plain_scale  # noqa: E402,F401

_MOVED = {"LatentDiscriminator": "hyperkeras.objectives.latent_gan"}  # old name here -> its module now


def __getattr__(name):
    """Deprecated names, resolved on first use (importing them here would tie generators to objectives)."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(
            f"hyperkeras.generators.{name} is deprecated: use {_MOVED[name]}.{name}.", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'hyperkeras.generators' has no attribute {name!r}")
