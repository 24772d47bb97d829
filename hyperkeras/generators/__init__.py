"""Weight generators: Deutsch extractor + filter generators; HyperGAN mixer + layer generators + latent discriminator."""
