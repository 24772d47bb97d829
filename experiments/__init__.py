"""Experiment binaries (absl); run as python -m experiments.<name>."""

import os

# The binaries' one entry point: this package is imported before any binary imports TensorFlow, and
# TensorFlow reads TF_CPP_MIN_LOG_LEVEL when it is imported. 2 keeps its C++ INFO and WARNING lines
# (CPU instruction sets, oneDNN, ...) off the console; errors still show. An explicit setting wins.
# (The library itself sets nothing: `import hyperkeras` changes no environment variable.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
