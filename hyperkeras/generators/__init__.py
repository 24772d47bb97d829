"""Weight generators: Deutsch extractor + filter generators; HyperGAN mixer + layer generators + latent discriminator.

Both generate every trainable weight of any target: Conv/Dense kernels and biases in their own way, and
the other tensors (``TargetNetwork.plain_specs``) as ``initial value + plain_scale · output``."""
from hyperkeras.generators.deutsch import DeutschGenerator  # noqa: E402,F401
from hyperkeras.generators.hypergan import (  # noqa: E402,F401
    LatentDiscriminator,
    LayerGenerator,
    Mixer,
    plain_initial_values,
    plain_scale,
)
