"""hyperkeras.data against fixture files written here in the real formats, Debian's Fashion-MNIST
release where installed, and TensorFlow Datasets (a stand-in for `tfds.load` where a download is needed:
TFDS cannot download on the test machine)."""

import gzip
import hashlib
import os
import pickle
import struct
import warnings

import numpy as np
import pytest

from hyperkeras import data


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb") as f:
        f.write(payload)


FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_debian_fashion = pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR), reason="Debian dataset-fashion-mnist not installed"
)


def _digit_like(rng, n):
    """MNIST-like images: ink only inside the central 20 × 20 box (the frame of 4 pixels stays blank)."""
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, 4:24, 4:24] = rng.randint(0, 256, size=(n, 20, 20))
    return x


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.RandomState(0)
    arrays = {}
    for split, n in (("train", 30), ("test", 12)):
        x = _digit_like(rng, n)
        y = (np.arange(n) % 10).astype(np.uint8)
        img, lbl = data.datasets._IDX_FILES[split]
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


def _assert_suggests_offline_fallbacks(msg):
    assert "--dataset=digits" in msg and "--dataset=random" in msg and "--data_dir" in msg, msg


def test_missing_dataset_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERKERAS_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("HYPERKERAS_OFFLINE", "1")  # TFDS reads only prepared data, no download
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_arrays("mnist", "train")
    msg = str(err.value)
    assert str(tmp_path / "env") in msg and "/usr/share/datasets/mnist" in msg
    assert "TFDS 'mnist'" in msg and "download=False" in msg and "To get it" in msg
    _assert_suggests_offline_fallbacks(msg)
    # The fallbacks are part of the error class, whoever raises it (e.g. a binary).
    _assert_suggests_offline_fallbacks(str(data.DatasetNotFoundError("no data.")))


class _FakeTFDS:
    """Stands in for `tensorflow_datasets.load`: records the call, returns a small image set."""

    def __init__(self):
        rng = np.random.RandomState(1)
        self.x = rng.randint(0, 256, size=(6, 5, 5, 3)).astype(np.uint8)
        self.y = np.array([0, 1, 2, 3, 4, 5], np.int64)
        self.calls = []

    def __call__(self, name, split, **kwargs):
        import tensorflow as tf

        self.calls.append(dict(name=name, split=split, **kwargs))
        return tf.constant(self.x), tf.constant(self.y)


@pytest.fixture
def fake_tfds(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    fake = _FakeTFDS()
    monkeypatch.setattr(tfds, "load", fake)
    monkeypatch.delenv("HYPERKERAS_OFFLINE", raising=False)
    monkeypatch.setattr(data.datasets, "network_available", lambda: True)
    return fake


def test_other_names_and_tfds_splits_go_to_tfds(fake_tfds, monkeypatch, idx_dir):
    x, y = data.load_arrays("kmnist", "train[:10%]")
    call = fake_tfds.calls[-1]
    assert (call["name"], call["split"], call["download"], call["as_supervised"]) == (
        "kmnist",
        "train[:10%]",
        True,
        True,
    )
    np.testing.assert_array_equal(x, fake_tfds.x / np.float32(255))
    np.testing.assert_array_equal(y, fake_tfds.y)
    assert x.dtype == np.float32 and y.dtype == np.int32
    # classes / subset apply to TFDS data as to files.
    _, y = data.load_arrays("cifar100", "test", classes="1-3")
    assert fake_tfds.calls[-1]["name"] == "cifar100" and y.tolist() == [1, 2, 3]
    # Offline: TFDS may read prepared data but not download (argument, or the environment variable).
    data.load_arrays("svhn_cropped", "train", offline=True)
    assert fake_tfds.calls[-1]["download"] is False
    monkeypatch.setenv("HYPERKERAS_OFFLINE", "1")
    data.load_arrays("svhn_cropped", "train")
    assert fake_tfds.calls[-1]["download"] is False
    data.load_arrays("svhn_cropped", "train", offline=False)
    assert fake_tfds.calls[-1]["download"] is True
    # A TFDS split of a built-in name goes to TFDS; the plain splits read the files first.
    n = len(fake_tfds.calls)
    data.load_arrays("mnist", "test", data_dir=str(idx_dir[0]))
    assert len(fake_tfds.calls) == n
    data.load_arrays("mnist", "train[:50%]", data_dir=str(idx_dir[0]))
    assert fake_tfds.calls[-1]["split"] == "train[:50%]"
    # load() passes them through and shuffles any train split.
    xb, _ = next(iter(data.load("kmnist", "train[10:16]", batch_size=6, seed=0)))
    assert fake_tfds.calls[-1]["split"] == "train[10:16]"
    assert sorted(xb.numpy().reshape(6, -1)[:, 0].tolist()) == sorted(
        (fake_tfds.x.reshape(6, -1)[:, 0] / np.float32(255)).tolist()
    )


def test_tfds_failure_is_a_clear_error(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def failing_load(name, split, **kwargs):
        raise ConnectionError("could not reach the download server")

    monkeypatch.setattr(tfds, "load", failing_load)
    monkeypatch.setattr(data.datasets, "network_available", lambda: True)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_arrays("kmnist", "train", offline=False)
    msg = str(err.value)
    assert (
        "'kmnist'" in msg and "download=True" in msg and "ConnectionError: could not reach the download server" in msg
    )
    _assert_suggests_offline_fallbacks(msg)


def test_no_network_fails_fast_with_the_offline_error(tmp_path, monkeypatch):
    """Issue 24 item 2: without network TFDS is never asked to download (it retried for 212 s); the error is
    the offline one, naming the reason, in well under a second here."""

    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []

    def load(name, split, download, **kwargs):  # real TFDS without prepared data, never a download
        assert not download, "tfds.load was asked to download without network"
        calls.append(name)
        raise AssertionError(f"Dataset {name}: could not find data in {tmp_path}.")

    monkeypatch.setattr(tfds, "load", load)
    monkeypatch.setenv("HYPERKERAS_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.delenv("HYPERKERAS_OFFLINE", raising=False)
    monkeypatch.setattr(data.datasets, "network_available", lambda: False)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_arrays("mnist", "train")
    assert calls == ["mnist"]  # one prepared-data lookup, no download attempts
    no_network = str(err.value)
    assert (
        "(no network (storage.googleapis.com unreachable within 2 s): download=False, prepared data only)" in no_network
    )
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_arrays("mnist", "train", offline=True)
    offline = str(err.value)  # the same error, only the reason differs
    assert (
        no_network.replace(
            "no network (storage.googleapis.com unreachable within 2 s): download=False, prepared data only",
            "offline: download=False",
        )
        == offline
    )
    _assert_suggests_offline_fallbacks(no_network)

    # With network, TFDS downloads; offline (argument or HYPERKERAS_OFFLINE=1) never checks the network.
    monkeypatch.setattr(tfds, "load", _FakeTFDS())
    monkeypatch.setattr(data.datasets, "network_available", lambda: True)
    data.load_arrays("kmnist", "train")
    assert tfds.load.calls[-1]["download"] is True

    def no_check():
        raise AssertionError("offline must not check the network")

    monkeypatch.setattr(data.datasets, "network_available", no_check)
    data.load_arrays("kmnist", "train", offline=True)
    monkeypatch.setenv("HYPERKERAS_OFFLINE", "1")
    data.load_arrays("kmnist", "train")
    assert [c["download"] for c in tfds.load.calls[-2:]] == [False, False]


def test_network_check_is_bounded_and_cached(monkeypatch):
    import socket
    import threading

    attempts, ended = [], []
    release = threading.Event()

    def hanging_connection(address, timeout=None):  # e.g. a name lookup that hangs (no timeout of its own)
        attempts.append((address, timeout))
        release.wait(30)
        ended.append(address)
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", hanging_connection)
    monkeypatch.setattr(data.datasets, "NETWORK_TIMEOUT_S", 0.3)
    monkeypatch.setattr(data.datasets, "_network", {})
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert data.network_available() is False
    # Bounded: the answer came while the lookup still hangs (it ends only at `release`), with its timeout.
    assert ended == [] and attempts == [(data.TFDS_DOWNLOAD_HOST, 0.3)]
    assert data.network_available() is False and len(attempts) == 1  # once per process
    release.set()

    class _Connection:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: _Connection())
    monkeypatch.setattr(data.datasets, "_network", {})
    assert data.network_available() is True
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")  # with a proxy: the proxy is checked
    monkeypatch.setattr(data.datasets, "_network", {})
    seen = []
    monkeypatch.setattr(
        socket, "create_connection", lambda address, timeout=None: seen.append(address) or _Connection()
    )
    assert data.network_available() is True and seen == [("proxy.invalid", 3128)]


def test_real_tfds_without_prepared_data_offline():
    pytest.importorskip("tensorflow_datasets")
    try:
        data.load_arrays("kmnist", "test", offline=True)
    except data.DatasetNotFoundError as err:
        msg = str(err)
    else:
        pytest.skip("kmnist is prepared in TFDS's data folder here")
    assert "TFDS 'kmnist' split 'test' (offline: download=False)" in msg
    _assert_suggests_offline_fallbacks(msg)


def test_unknown_names_and_splits():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="unknown dataset 'fashoin_mnist'.*Did you mean 'fashion_mnist'"):
        data.load_arrays("fashoin_mnist")
    for name in ("digits", "cubic", "gaussian_mixture_2d"):
        with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
            data.load_arrays(name, "train[:10%]")


def test_cifar_batches_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
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


@needs_debian_fashion
def test_debian_fashion_mnist_when_installed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known release: no content warning
        x, y = data.load_arrays("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and np.bincount(y).tolist() == [1000] * 10


@needs_debian_fashion
def test_known_checksums_are_the_debian_release():
    found = {}
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        with gzip.open(os.path.join(FASHION_DIR, stem + ".gz")) as f:
            found[hashlib.sha256(f.read()).hexdigest()] = ("fashion_mnist", stem)
    assert found == data.KNOWN_IDX_SHA256


@needs_debian_fashion
@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_files_are_not_loaded_as_mnist(split, tmp_path):
    with pytest.raises(data.DatasetMismatchError, match="is Fashion-MNIST's .* not MNIST") as err:
        data.load_arrays("mnist", split, data_dir=FASHION_DIR)
    assert FASHION_DIR in str(err.value)
    # The same files uncompressed (or recompressed) are recognised too: the checksum is of the contents.
    for stem in data.datasets._IDX_FILES[split]:
        with gzip.open(os.path.join(FASHION_DIR, stem + ".gz")) as f, open(tmp_path / stem, "wb") as out:
            out.write(f.read())
    with pytest.raises(data.DatasetMismatchError):
        data.load_arrays("mnist", split, data_dir=str(tmp_path))


def _write_set(folder, x, y):
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "test"):
        img, lbl = data.datasets._IDX_FILES[split]
        _write_idx(os.path.join(folder, img + ".gz"), x)
        _write_idx(os.path.join(folder, lbl + ".gz"), y)
    return str(folder)


def _fashion_like(rng, n):
    if os.path.isdir(FASHION_DIR):  # a subset of the real set (unknown checksum)
        return data.read_idx(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))[:n].copy()
    x = _digit_like(rng, n)
    x[:, :, :2] = rng.randint(1, 256, size=(n, 28, 2))  # garments fill the field to its edges
    return x


def _mismatch_warnings(name, folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.load_arrays(name, "test", data_dir=folder)
    return [str(w.message) for w in caught if issubclass(w.category, data.DatasetMismatchWarning)]


def test_unknown_files_get_a_content_check(tmp_path):
    rng = np.random.RandomState(0)
    y = (np.arange(100) % 10).astype(np.uint8)
    fashion = _write_set(tmp_path / "fashion_subset", _fashion_like(rng, 100), y)
    digits = _write_set(tmp_path / "digit_like", _digit_like(rng, 100), y)
    # Matching names load silently; a mismatch loads with a warning saying what the files look like.
    assert _mismatch_warnings("fashion_mnist", fashion) == []
    assert _mismatch_warnings("mnist", digits) == []
    (msg,) = _mismatch_warnings("mnist", fashion)
    assert "look like Fashion-MNIST" in msg and "100%" in msg and fashion in msg
    (msg,) = _mismatch_warnings("fashion_mnist", digits)
    assert "look like MNIST" in msg and "0%" in msg
    # The statistic itself, against images built with and without ink near the border.
    assert data.frame_ink_fraction(_digit_like(rng, 10)) == 0.0
    ink = _digit_like(rng, 10)
    ink[:3, 27, 5] = 9
    assert data.frame_ink_fraction(ink) == pytest.approx(0.3)
    # Too few images are not judged.
    few = _write_set(tmp_path / "few", _fashion_like(rng, 10), y[:10])
    assert _mismatch_warnings("mnist", few) == []


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
@pytest.mark.parametrize("kind", ["missing", "empty", "labels_only"])
def test_a_wrong_data_dir_is_an_error_not_another_copy(name, kind, idx_dir, tmp_path, monkeypatch):
    """Issue 19: a data_dir without the files was skipped and another copy loaded ($HYPERKERAS_DATA_DIR here,
    Debian's or TFDS's elsewhere), and the run recorded the wrong folder."""
    folder, _ = idx_dir
    monkeypatch.setenv("HYPERKERAS_DATA_DIR", str(folder))  # a good copy elsewhere, never to be used instead
    monkeypatch.setenv("HYPERKERAS_OFFLINE", "1")
    if name != "cifar10":  # the fallback really holds the data (so the old code loaded it silently)
        assert len(data.load_arrays(name, "test")[1]) == 12
    wrong = tmp_path / "wrong"
    if kind != "missing":
        wrong.mkdir()
    if kind == "labels_only":
        _write_idx(str(wrong / "t10k-labels-idx1-ubyte.gz"), np.zeros(3, np.uint8))
        (wrong / "cifar-10-batches-py").mkdir()
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_arrays(name, "test", data_dir=str(wrong))
    msg = str(err.value)
    state = "does not exist" if kind == "missing" else "does not hold the files"
    assert msg.startswith(f"data_dir={str(wrong)!r} {state}: dataset {name!r} (test) needs"), msg
    wanted = "test_batch" if name == "cifar10" else "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
    assert wanted in msg and str(wrong / name) in msg
    tried = msg.split("looked for in ")[1].split(". ")[0].split(", ")  # nothing but data_dir was tried
    assert tried and all(t.startswith(str(wrong)) for t in tried), tried
    assert "TFDS" not in msg.split("Nothing else")[0]
    if kind == "labels_only" and name != "cifar10":
        assert f"Found only: {wrong / 't10k-labels-idx1-ubyte.gz'}" in msg
    # a data_dir that holds the files is still read, directly or in a <name> subfolder
    if name != "cifar10":
        (tmp_path / "parent").mkdir()
        os.symlink(folder, tmp_path / "parent" / name.replace("_", "-"))
        x, y = data.load_arrays(name, "test", data_dir=str(tmp_path / "parent"))
        assert x.shape == (12, 28, 28, 1)


def test_binaries_refuse_a_wrong_data_dir(idx_dir, tmp_path):
    """experiments pass --data_dir straight to load_arrays: the binary stops with the same error (it used to
    train on $HYPERKERAS_DATA_DIR's copy and record the wrong folder in metrics.json)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        HYPERKERAS_DATA_DIR=str(idx_dir[0]),
        HYPERKERAS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    )
    wrong, out = str(tmp_path / "no_such_folder"), tmp_path / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train_direct",
            "--dataset=mnist",
            f"--data_dir={wrong}",
            "--target=mlp",
            "--steps=1",
            "--batch_size=8",
            f"--output_dir={out}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode != 0, res.stdout[-2000:]
    assert f"DatasetNotFoundError: data_dir={wrong!r} does not exist" in res.stderr, res.stderr[-4000:]
    assert not (out / "metrics.json").exists()
