"""Weight generators: Deutsch extractor + filter generators; HyperGAN mixer + layer generators + latent discriminator."""
from hyperkeras.generators.deutsch import DeutschGenerator  # noqa: E402,F401
from hyperkeras.generators.hypergan import LatentDiscriminator, LayerGenerator, Mixer  # noqa: E402,F401
