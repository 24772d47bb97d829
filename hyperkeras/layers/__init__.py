"""Keras layers: static hypernetwork layers (HyperConv2D, HyperDense, KernelGenerator) and the dynamic HyperLSTMCell."""

from hyperkeras.layers.hyper_conv2d import HyperConv2D  # noqa: E402,F401
from hyperkeras.layers.hyper_dense import HyperDense  # noqa: E402,F401
from hyperkeras.layers.hyper_lstm_cell import HyperLSTMCell  # noqa: E402,F401
from hyperkeras.layers.kernel_generator import KernelGenerator  # noqa: E402,F401
