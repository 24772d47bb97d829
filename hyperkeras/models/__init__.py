"""keras.Model subclasses with custom train_step: EntropyHypernetwork, HyperGAN."""
from hyperkeras.models.entropy_hypernetwork import EntropyHypernetwork  # noqa: E402,F401
from hyperkeras.models.hypergan import HyperGAN  # noqa: E402,F401
