"""Deprecated: the Wide ResNet builder is `hyperkeras.targets.wrn`, its augmentation
`hyperkeras.data.augmentation`. This module only re-exports them, and warns once when imported."""

import warnings

from hyperkeras.data.augmentation import augment
from hyperkeras.targets.wrn import parameter_breakdown, wide_resnet

__all__ = ["wide_resnet", "parameter_breakdown", "augment"]

warnings.warn(
    "hyperkeras.wrn is deprecated: use hyperkeras.targets.wrn (wide_resnet, parameter_breakdown) and "
    "hyperkeras.data.augmentation (augment).",
    DeprecationWarning,
    stacklevel=2,
)
