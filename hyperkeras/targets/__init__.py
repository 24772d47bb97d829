"""Target networks: ordinary Keras models run with externally supplied weights, K samples at once.

- `TargetNetwork` (network.py): parameter specification, `apply`, flatten/unflatten, state.
- zoo.py: architectures buildable by name (`build_model`, `register_target`, `available_targets`).
"""

from hyperkeras.targets.network import LayerSpec, ParamSpec, TargetNetwork
from hyperkeras.targets.specs import Params  # noqa: F401
from hyperkeras.targets.zoo import (
    PositionEmbedding,
    available_targets,
    build_model,
    deutsch_mnist,
    gru_text,
    hypergan_cifar10,
    hypergan_mnist,
    hypergan_regression,
    mlp,
    register_target,
    resnet20,
    transformer_text,
)

__all__ = [
    "TargetNetwork",
    "ParamSpec",
    "LayerSpec",
    "build_model",
    "register_target",
    "available_targets",
    "deutsch_mnist",
    "mlp",
    "hypergan_mnist",
    "hypergan_cifar10",
    "hypergan_regression",
    "resnet20",
    "gru_text",
    "transformer_text",
    "PositionEmbedding",
]
