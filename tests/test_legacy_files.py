"""`.keras` files written by hyperkeras 0.1 (tests/fixtures/legacy_0_1, made by make_legacy_0_1.py at
commit 1bab324) and by the version before issue 22's contract changes (tests/fixtures/legacy_0_2_dev, made by
make_legacy_0_2_dev.py at commit 631c17c: a generic Hypernetwork with SVGD and FunctionSpaceEntropy, an
EntropyHypernetwork, a HyperGAN) still load and sample the same networks."""

import os

import keras
import numpy as np
import pytest

import hyperkeras  # noqa: F401  (registers the serializable classes)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FILES = [
    ("legacy_0_1", "entropy_hypernetwork"),
    ("legacy_0_1", "hypergan"),
    ("legacy_0_2_dev", "svgd_hypernetwork"),
    ("legacy_0_2_dev", "entropy_hypernetwork"),
    ("legacy_0_2_dev", "hypergan"),
]


@pytest.mark.parametrize("folder,name", FILES)
def test_legacy_keras_files_load_and_sample_the_same_networks(folder, name):
    model = keras.models.load_model(os.path.join(FIXTURES, folder, f"{name}.keras"))
    expected = np.load(os.path.join(FIXTURES, folder, f"{name}_sample.npz"))
    sample = model.sample(4, seed=0)
    assert sorted(sample) == sorted(expected.files)
    for key in expected.files:
        # The same networks, up to float32 rounding: the generator's products summed in another order on
        # another CPU's kernels (seen: 7e-7 absolute on weights of magnitude 1.7, where 1e-7 was asked).
        scale = float(np.abs(expected[key]).max())
        np.testing.assert_allclose(np.asarray(sample[key]), expected[key], rtol=1e-5, atol=1e-5 * scale, err_msg=key)
