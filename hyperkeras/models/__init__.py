"""keras.Models: `Hypernetwork` (generator × task loss × regularisers, one train_step) and its presets
`EntropyHypernetwork` (Deutsch 2018) and `HyperGAN` (Ratzlaff & Fuxin)."""

from hyperkeras.models.entropy_hypernetwork import EntropyHypernetwork  # noqa: E402,F401
from hyperkeras.models.hypergan import HyperGAN  # noqa: E402,F401
from hyperkeras.models.hypernetwork import Hypernetwork, TrainingDivergedError  # noqa: E402,F401
