"""Keras layers: static hypernetwork layers (HyperConv2D, HyperDense, KernelGenerator) and the dynamic HyperLSTMCell."""
from hyperkeras.layers.hyper_lstm_cell import HyperLSTMCell  # noqa: E402,F401
