"""`.keras` files written by hyperkeras 0.1 (tests/fixtures/legacy_0_1, made by make_legacy_0_1.py at
commit 1bab324) still load and sample the same networks."""

import os

import keras
import numpy as np
import pytest

import hyperkeras  # noqa: F401  (registers the serializable classes)

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_0_1")


@pytest.mark.parametrize("name", ["entropy_hypernetwork", "hypergan"])
def test_legacy_keras_files_load_and_sample_the_same_networks(name):
    model = keras.models.load_model(os.path.join(HERE, f"{name}.keras"))
    expected = np.load(os.path.join(HERE, f"{name}_sample.npz"))
    sample = model.sample(4, seed=0)
    assert sorted(sample) == sorted(expected.files)
    for key in expected.files:
        np.testing.assert_allclose(np.asarray(sample[key]), expected[key], rtol=1e-6, atol=1e-7, err_msg=key)
