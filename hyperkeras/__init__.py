"""hyperkeras: hypernetworks for TensorFlow / Keras 3.

Static and dynamic hypernetworks (Ha, Dai & Le), entropy-regularised weight generation (Deutsch) and
HyperGAN (Ratzlaff & Fuxin), built on one idea: a target network is an ordinary Keras model whose
weights can be supplied from outside, for K weight samples at once (`TargetNetwork`).

Importing hyperkeras changes no environment variable; to quieten TensorFlow's C++ logging, set
``TF_CPP_MIN_LOG_LEVEL`` before TensorFlow is imported (the experiment binaries do, in experiments/).
"""

from hyperkeras import (
    attacks,
    baselines,
    calibration,
    checkpoints,
    data,
    ensembles,
    export,
    generators,
    layers,
    metrics,
    models,
    objectives,
    optimizers,
    probabilities,
    probes,
    targets,
)
from hyperkeras.targets import TargetNetwork

__version__ = "0.1.0"
__all__ = [
    "TargetNetwork",
    "data",
    "generators",
    "layers",
    "models",
    "objectives",
    "optimizers",
    "targets",
    "attacks",
    "baselines",
    "checkpoints",
    "ensembles",
    "export",
    "metrics",
    "probabilities",
    "probes",
    "calibration",
]
