"""keras.Model subclasses with custom train_step: EntropyHypernetwork, HyperGAN."""
