"""hyperkeras: hypernetworks for TensorFlow / Keras 3. Metadata and dependencies live in pyproject.toml."""

from setuptools import setup

setup()
