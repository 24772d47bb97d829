"""Shared pytest set-up: quiet TensorFlow, deterministic seeds, a repo-root fixture."""

import os
import pathlib
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def repo_root():
    return REPO_ROOT


# Lines a run must not print (issue 24, item 6), each a symptom of a cause fixed in the library or the
# binaries: a tf.function made anew per call or retraced per batch shape; fit(dataset) with Keras's default
# shuffle=True; grappler's remapper giving up on a graph; a checkpoint restore left half done.
NOISE = re.compile(
    r"triggered tf\.function retracing|`shuffle=True` was passed|remapper failed|Value in checkpoint could not be found"
)


@pytest.fixture
def noise_lines():
    """``noise_lines(stdout, stderr, ...)``: the lines of a subprocess's outputs that match `NOISE`."""
    return lambda *outputs: [line for out in outputs for line in out.splitlines() if NOISE.search(line)]
