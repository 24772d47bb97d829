"""hyperkeras: hypernetworks for TensorFlow / Keras 3.

Static and dynamic hypernetworks (Ha, Dai & Le), entropy-regularised weight generation (Deutsch) and
HyperGAN (Ratzlaff & Fuxin), built on one idea: a target network is an ordinary Keras model whose
weights can be supplied from outside, for K weight samples at once (`TargetNetwork`).
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hyperkeras import (
    attacks,  # noqa: E402
    baselines,  # noqa: E402
    checkpoints,  # noqa: E402
    data,  # noqa: E402
    ensembles,  # noqa: E402
    export,  # noqa: E402
    generators,  # noqa: E402
    layers,  # noqa: E402
    metrics,  # noqa: E402
    models,  # noqa: E402
    objectives,  # noqa: E402
    optimizers,  # noqa: E402
    targets,  # noqa: E402
)
from hyperkeras.targets import TargetNetwork  # noqa: E402

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
]
