"""hyperkeras: hypernetworks for TensorFlow / Keras 3."""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


# Ranges, not the exact pins of requirements.txt (those are the tested environment), and no TensorFlow:
# `pip install .` keeps the TensorFlow you have (CPU, GPU or a custom build); the extras install one.
# tf-keras (needed by TensorFlow Probability) is not listed either: its own requirement is the full
# `tensorflow` wheel, which would land beside a `tensorflow-cpu`; install it with
# `pip install --no-deps tf-keras==<your TensorFlow version>` (hyperkeras says so when it is missing).
INSTALL_REQUIRES = [
    "keras>=3.10,<4",
    "tensorflow-probability>=0.25",
    "tensorflow-datasets>=4.9",
    "absl-py>=2.0",
    "numpy>=1.26,<3",
    "scipy>=1.11",
    "scikit-learn>=1.4",
    "matplotlib>=3.8",
]
EXTRAS = {
    "cpu": ["tensorflow-cpu>=2.18"],
    "gpu": ["tensorflow[and-cuda]>=2.18"],
    "test": ["pytest>=8", "hypothesis>=6.100"],
}


setup(
    name="hyperkeras",
    version="0.1.0",
    description="Hypernetworks for TensorFlow/Keras 3: static and dynamic hypernetworks (Ha et al.), "
    "entropy-regularised weight generation (Deutsch) and HyperGAN (Ratzlaff & Fuxin).",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hyperkeras", "hyperkeras.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
