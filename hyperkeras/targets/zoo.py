"""Target architectures buildable by name: the papers' networks and a zoo beyond them.

`build_model(name, **kwargs)` returns a plain, built `keras.Model`; `register_target(name)` adds your own.
"""

from __future__ import annotations

from typing import Callable

import keras

# ---------------------------------------------------------------------- architectures from the papers
_BUILDERS: dict[str, Callable[..., keras.Model]] = {}


def register_target(name: str):
    """Decorator: registers a function ``(**kwargs) -> keras.Model`` under `name` for `build_model`."""

    def wrap(fn):
        _BUILDERS[name] = fn
        return fn

    return wrap


def available_targets() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs) -> keras.Model:
    """Builds a registered target architecture (see `available_targets()`) as a plain keras.Model."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown target {name!r}; available: {available_targets()}.")
    return _BUILDERS[name](**kwargs)


@register_target("deutsch_mnist")
def deutsch_mnist(input_shape=(28, 28, 1), num_classes=10, seed=None) -> keras.Model:
    """Deutsch (2018) Table 1: conv 5×5×32 SAME + ReLU + max-pool 2, conv 5×5×16 SAME + ReLU +
    max-pool 2, dense 8 + ReLU, dense 10 (logits). 20,018 weights for 28×28×1 inputs."""
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 5, padding="same", activation="relu", kernel_initializer=init, name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 5, padding="same", activation="relu", kernel_initializer=init, name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="dense1"),
            keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"),
        ],
        name="deutsch_mnist",
    )


@register_target("mlp")
def mlp(input_shape=(64,), hidden=(64, 32), num_classes=10, activation="relu", dropout=0.0, seed=None):
    """A plain multi-layer perceptron (Flatten, then Dense layers; optional dropout after each)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input(input_shape), keras.layers.Flatten(name="flatten")]
    for i, width in enumerate(hidden):
        layers.append(keras.layers.Dense(width, activation=activation, kernel_initializer=init, name=f"dense{i + 1}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"))
    return keras.Sequential(layers, name="mlp")


# ---------------------------------------------------------------------- HyperGAN (Ratzlaff & Fuxin) targets
def _hypergan_stack(name, input_shape, convs, denses, num_classes, negative_slope, dropout, seed):
    """Conv (VALID) + leaky ReLU + 2×2 max-pool blocks, Flatten, Dense + leaky ReLU layers, Dense logits.
    `dropout` > 0 adds a Dropout after every pooling / hidden dense layer (MC-dropout baseline)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input(input_shape)]
    for i, (filters, size) in enumerate(convs):
        layers += [
            keras.layers.Conv2D(filters, size, padding="valid", kernel_initializer=init, name=f"conv{i + 1}"),
            keras.layers.LeakyReLU(negative_slope, name=f"lrelu{i + 1}"),
            keras.layers.MaxPooling2D(2, name=f"pool{i + 1}"),
        ]
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{i + 1}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    for i, width in enumerate(denses):
        layers += [
            keras.layers.Dense(width, kernel_initializer=init, name=f"linear{i + 1}"),
            keras.layers.LeakyReLU(negative_slope, name=f"lrelu_linear{i + 1}"),
        ]
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_linear{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"))
    return keras.Sequential(layers, name=name)


@register_target("hypergan_mnist")
def hypergan_mnist(input_shape=(28, 28, 1), num_classes=10, negative_slope=0.01, dropout=0.0, seed=None):
    """HyperGAN Table 5 (MNIST): conv 32×1×5×5, leaky ReLU, 2×2 max-pool, conv 32×32×5×5, leaky ReLU,
    2×2 max-pool, linear 512×10. VALID convolutions: 28 → 24 → 12 → 8 → 4, so the flattened features
    are 4·4·32 = 512. 31,594 weights. The paper does not give the leaky-ReLU slope; 0.01 (PyTorch's
    default) is used."""
    return _hypergan_stack("hypergan_mnist", input_shape, [(32, 5), (32, 5)], [], num_classes, negative_slope, dropout, seed)


@register_target("hypergan_cifar10")
def hypergan_cifar10(input_shape=(32, 32, 3), num_classes=10, negative_slope=0.01, dropout=0.0, seed=None):
    """HyperGAN Table 6 (CIFAR-10): conv 16×3×3×3, conv 32×16×3×3, conv 64×32×3×3 (each VALID + leaky
    ReLU + 2×2 max-pool: 32 → 30 → 15 → 13 → 6 → 4 → 2), linear 256×128 + leaky ReLU, linear 128×10.
    The table prints conv 3 as "32 × 64 × 3 × 3"; only 64 output channels from 32 inputs are
    consistent with conv 2's 32 outputs and linear 1's 256 = 2·2·64 inputs. 57,770 weights
    (the paper's "50,000+")."""
    return _hypergan_stack(
        "hypergan_cifar10", input_shape, [(16, 3), (32, 3), (64, 3)], [128], num_classes, negative_slope, dropout, seed
    )


@register_target("hypergan_regression")
def hypergan_regression(input_shape=(1,), hidden=100, outputs=1, dropout=0.0, seed=None):
    """HyperGAN §4.3 (after Hernández-Lobato & Adams): one hidden layer of 100 ReLU units, linear output."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input(input_shape), keras.layers.Dense(hidden, activation="relu", kernel_initializer=init, name="hidden")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    layers.append(keras.layers.Dense(outputs, kernel_initializer=init, name="output"))
    return keras.Sequential(layers, name="hypergan_regression")
