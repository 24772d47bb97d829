"""Keras layers: static hypernetwork layers (HyperConv2D, HyperDense, KernelGenerator) and the dynamic HyperLSTMCell."""
