"""hyperkeras: hypernetworks for TensorFlow / Keras 3."""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def _requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#") and not l.startswith("pytest")]


setup(
    name="hyperkeras",
    version="0.1.0",
    description="Hypernetworks for TensorFlow/Keras 3: static and dynamic hypernetworks (Ha et al.), "
    "entropy-regularised weight generation (Deutsch) and HyperGAN (Ratzlaff & Fuxin).",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hyperkeras", "hyperkeras.*"]),
    python_requires=">=3.10",
    install_requires=_requirements(),
    license="Apache-2.0",
)
