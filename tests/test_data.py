"""hyperkeras.data against fixture files written here in the real formats."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from hyperkeras import data


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb")) as f:
        f.write(payload)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.RandomState(0)
    arrays = {}
    for split, n in (("train", 30), ("test", 12)):
        x = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        img, lbl = data._IDX_FILES[split]
        _write_idx(str(tmp_path / (img + ".gz")), x)
        _write_idx(str(tmp_path / (lbl + ".gz")), y)
        arrays[split] = (x, y)
    return tmp_path, arrays


def test_idx_fixture_loads_exactly(idx_dir):
    folder, arrays = idx_dir
    x, y = data.load_arrays("mnist", "test", data_dir=str(folder))
    np.testing.assert_array_equal(x[..., 0], arrays["test"][0] / np.float32(255))
    np.testing.assert_array_equal(y, arrays["test"][1])
    assert x.dtype == np.float32 and x.shape == (12, 28, 28, 1) and y.dtype == np.int32


def test_class_and_train_subsets(idx_dir):
    folder, arrays = idx_dir
    x, y = data.load_arrays("mnist", "train", data_dir=str(folder), classes="0-4")
    assert set(y) == {0, 1, 2, 3, 4} and len(y) == 15
    x2, y2 = data.load_arrays("mnist", "train", data_dir=str(folder), subset=7, seed=3)
    assert len(y2) == 7
    x3, y3 = data.load_arrays("mnist", "train", data_dir=str(folder), subset=7, seed=3)
    np.testing.assert_array_equal(y2, y3)
    assert data.parse_classes("0,2,5-7") == (0, 2, 5, 6, 7)
    with pytest.raises(ValueError, match="classes"):
        data.parse_classes("a-b")


def test_truncated_and_corrupted_files_raise(idx_dir, tmp_path):
    folder, _ = idx_dir
    path = str(folder / "t10k-images-idx3-ubyte.gz")
    raw = gzip.open(path).read()
    with gzip.open(path, "wb") as f:  # valid gzip, truncated payload
        f.write(raw[:-100])
    with pytest.raises(data.CorruptDataError, match="truncated"):
        data.load_arrays("mnist", "test", data_dir=str(folder))
    with open(path, "wb") as f:  # truncated gzip stream
        f.write(gzip.compress(raw)[:200])
    with pytest.raises(data.CorruptDataError, match="cannot be read"):
        data.load_arrays("mnist", "test", data_dir=str(folder))
    bad = str(tmp_path / "bad.idx")
    with open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04abcd")
    with pytest.raises(data.CorruptDataError, match="magic"):
        data.read_idx(bad)


def test_missing_dataset_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERKERAS_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_arrays("mnist", "train", data_dir=str(tmp_path / "flag"))
    msg = str(err.value)
    assert str(tmp_path / "flag") in msg and str(tmp_path / "env") in msg and "/usr/share/datasets/mnist" in msg
    assert "TFDS" in msg and "To get it" in msg


def test_cifar_batches_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    expected = []
    for name in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]:
        d = rng.randint(0, 256, size=(4, 3072)).astype(np.uint8)
        labels = list(rng.randint(0, 10, size=4))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": d, b"labels": labels}, f)
        expected.append((d, labels))
    x, y = data.load_arrays("cifar10", "test", data_dir=str(tmp_path))
    d, labels = expected[-1]
    assert x.shape == (4, 32, 32, 3)
    # Channel c of pixel (i, j) is stored at c*1024 + i*32 + j in the CIFAR-10 row format.
    assert x[2, 5, 7, 1] == np.float32(d[2, 1024 + 5 * 32 + 7]) / np.float32(255)
    np.testing.assert_array_equal(y, labels)
    x, _ = data.load_arrays("cifar10", "train", data_dir=str(tmp_path))
    assert x.shape == (20, 32, 32, 3)
    with open(folder / "test_batch", "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(data.CorruptDataError, match="test_batch"):
        data.load_arrays("cifar10", "test", data_dir=str(tmp_path))


def test_digits_offline_and_resized():
    x, y = data.load_arrays("digits", "train")
    xt, yt = data.load_arrays("digits", "test")
    assert x.shape == (1437, 8, 8, 1) and xt.shape == (360, 8, 8, 1)
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(y) == set(range(10))
    x28, _ = data.load_arrays("digits", "test", resize=28)
    assert x28.shape == (360, 28, 28, 1)
    np.testing.assert_allclose(x28.mean(), xt.mean(), atol=0.02)


def test_dataset_pipeline_batches_and_is_seeded():
    ds = data.load("digits", "train", batch_size=32, seed=5)
    xb, yb = next(iter(ds))
    assert xb.shape == (32, 8, 8, 1) and yb.dtype.name == "int32"
    xb2, _ = next(iter(data.load("digits", "train", batch_size=32, seed=5)))
    np.testing.assert_array_equal(xb.numpy(), xb2.numpy())
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("nope")
    with pytest.raises(ValueError, match="split"):
        data.load("digits", "validation")


def test_toy_sets_match_their_definitions():
    x, y = data.cubic_regression(n=2000, seed=1)
    assert x.min() >= -4 and x.max() <= 4
    resid = y - x**3
    assert abs(resid.std() - 3.0) < 0.2 and abs(resid.mean()) < 0.2
    gm = data.GaussianMixture2D()
    grid = np.linspace(-2, 2, 401, dtype=np.float32)
    xx, yy = np.meshgrid(grid, grid)
    pts = np.stack([xx, yy], -1)
    integral = gm.density(pts).sum() * (grid[1] - grid[0]) ** 2
    assert abs(integral - 1.0) < 1e-3
    np.testing.assert_allclose(gm.density(pts[:3, :3]), gm.density(tf_points(pts[:3, :3])).numpy(), rtol=1e-5)


def tf_points(p):
    import tensorflow as tf

    return tf.constant(p)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Debian dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_when_installed():
    x, y = data.load_arrays("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and np.bincount(y).tolist() == [1000] * 10
