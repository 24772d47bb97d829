"""Datasets as `tf.data` pipelines, with offline-first loading.

``load(name, split, ...)`` returns a batched, seeded `tf.data.Dataset` of ``(x, y)``;
``load_arrays(name, split, ...)`` returns the same examples as NumPy arrays.

Images are float32 in [0, 1], channels last; labels are int32. Sources, in order of preference:

* ``fashion_mnist`` / ``mnist``: IDX ``.gz`` (or raw) files in `data_dir` when it is given, and nowhere
  else (a `data_dir` without the files is an error, never a silent switch to another copy); without
  it, in ``$HYPERKERAS_DATA_DIR``, then ``/usr/share/datasets/<name with ->`` (Debian's
  ``dataset-fashion-mnist`` package), then TFDS. The files are checked to be the dataset named (both
  use the same file names): see `check_idx_files`.
* ``cifar10``: a ``cifar-10-batches-py`` folder in those places (the same rule for `data_dir`), then TFDS.
* ``digits``: scikit-learn's bundled 8×8 digits (always offline), 1,437 train / 360 test examples from
  a fixed permutation; ``resize=28`` gives 28×28×1 images for MNIST-shaped targets.
* ``gaussian_mixture_2d``: the 2-D toy of Deutsch Fig. 2 (see `GaussianMixture2D`).
* ``cubic``: HyperGAN §4.3, y = x³ + ε, ε ~ N(0, 3²), x ~ U[−4, 4] (20 training points).
* any other name (``cifar100``, ``kmnist``, ``svhn_cropped``, ``mnist_corrupted/shot_noise``…) and any
  TFDS split (``"train[:10%]"``, ``"train+test"``): TensorFlow Datasets, ``as_supervised``, in TFDS's
  data folder (``$TFDS_DATA_DIR``, default ``~/tensorflow_datasets``), downloaded and prepared there
  if missing — unless offline is asked for (``offline=True`` or ``HYPERKERAS_OFFLINE=1``), or there is
  no network (`network_available`: checked once per process, in at most 2 s), when only already
  prepared data is read. Local files serve the splits ``"train"`` and ``"test"`` only.

When a dataset cannot be had, `DatasetNotFoundError` lists every place tried and the offline
fallbacks (`OFFLINE_FALLBACKS`).
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import os
import pickle
import socket
import struct
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

IMAGE_DATASETS = ("fashion_mnist", "mnist", "cifar10", "digits")
TOY_DATASETS = ("gaussian_mixture_2d", "cubic")
DATASETS = IMAGE_DATASETS + TOY_DATASETS

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_COUNTS = {"train": 60000, "test": 10000}


LOCAL_SPLITS = ("train", "test")

OFFLINE_FALLBACKS = (
    "Offline alternatives: the 'digits' dataset (--dataset=digits: scikit-learn's bundled digits, always "
    "available; resize=28 for MNIST-shaped networks), for static_wrn --dataset=random, or a folder of files "
    "given as --data_dir (data_dir=): the four MNIST-format IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) or CIFAR-10's "
    "'cifar-10-batches-py' folder."
)


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is in none of the places looked at; the message lists them all and ends
    with the offline fallbacks (`OFFLINE_FALLBACKS`), so every binary's error suggests them."""

    def __init__(self, message: str):
        super().__init__(f"{message.rstrip()} {OFFLINE_FALLBACKS}")


class CorruptDataError(ValueError):
    """Raised when a data file exists but is truncated or malformed."""


class DatasetMismatchError(ValueError):
    """Raised when the files found are a known release of another dataset (e.g. Fashion-MNIST as MNIST)."""


class DatasetMismatchWarning(UserWarning):
    """Warned when files of unknown checksum look like another dataset (see `check_idx_files`)."""


def offline_requested(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``$HYPERKERAS_OFFLINE`` is set to 1/true/yes/on."""
    if offline is not None:
        return bool(offline)
    return os.environ.get("HYPERKERAS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# Where TFDS downloads from (its mirror of prepared datasets, and the source of MNIST-style files).
TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
NETWORK_TIMEOUT_S = 2.0
_network = {}  # network_available's answer, once per process


def network_available() -> bool:
    """Whether a TFDS download could start: the TFDS download host (`TFDS_DOWNLOAD_HOST`; with an HTTPS
    proxy set, the proxy) resolves and accepts a TCP connection within `NETWORK_TIMEOUT_S` seconds.

    Checked once per process and cached. Without network TFDS would retry each file for minutes before
    failing (212 s for mnist measured), so `load_arrays` then reads only already prepared TFDS data, as
    with ``offline=True``, and says so in its `DatasetNotFoundError`. The check runs in a daemon thread,
    so that a hanging name lookup also ends after the timeout."""
    if "up" not in _network:
        host, port = TFDS_DOWNLOAD_HOST
        proxy = urllib.request.getproxies().get("https")
        if proxy and not urllib.request.proxy_bypass(host):
            parsed = urllib.parse.urlsplit(proxy if "//" in proxy else "//" + proxy)
            host, port = parsed.hostname or host, parsed.port or 80
        result = []

        def connect():
            try:
                socket.create_connection((host, port), timeout=NETWORK_TIMEOUT_S).close()
                result.append(True)
            except OSError:
                result.append(False)

        thread = threading.Thread(target=connect, name="hyperkeras-network-check", daemon=True)
        thread.start()
        thread.join(NETWORK_TIMEOUT_S)
        _network["up"] = bool(result and result[0])
    return _network["up"]


# ---------------------------------------------------------------------- IDX (MNIST-style) files
def _read_file_bytes(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise CorruptDataError(f"{path}: cannot be read as {'gzip' if opener is gzip.open else 'IDX'} ({e}).") from e


def _parse_idx(path: str, data: bytes) -> np.ndarray:
    if len(data) < 4:
        raise CorruptDataError(f"{path}: too short for an IDX header ({len(data)} bytes).")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes or not 1 <= ndim <= 4:
        raise CorruptDataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()}).")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{path}: truncated IDX header.")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(dtypes[dtype_code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise CorruptDataError(
            f"{path}: IDX header announces shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(data) - header} bytes: truncated or corrupted."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (optionally gzipped) into a NumPy array, validating header and length."""
    return _parse_idx(path, _read_file_bytes(path))


# ---------------------------------------------------------------------- which dataset the IDX files are
_TITLES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}

# sha256 of the *decompressed* IDX files of known releases -> (dataset, file). Fashion-MNIST: computed
# from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1, which packages
# zalandoresearch/fashion-mnist's files (recompressed: the .gz bytes differ from upstream's, so the
# hashes are taken after decompression and hold for .gz and raw copies alike). MNIST's files were not
# on the machine these were computed on, so MNIST has no entry and is recognised by content.
KNOWN_IDX_SHA256 = {
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888": ("fashion_mnist", "train-images-idx3-ubyte"),
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9": ("fashion_mnist", "train-labels-idx1-ubyte"),
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b": ("fashion_mnist", "t10k-images-idx3-ubyte"),
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34": ("fashion_mnist", "t10k-labels-idx1-ubyte"),
}

# Content check for files of unknown checksum (subsets, other copies): the fraction of images with
# ink (a pixel > 0) within 2 pixels of the border. Every Fashion-MNIST image has some (all ten classes,
# train and test: 100% of images, measured on the release above). MNIST digits are scaled into a
# 20 × 20 box and centred by centre of mass in the 28 × 28 field, so most leave that frame blank (not
# measured: no MNIST files on this machine); hence wide thresholds, and a warning rather than an error.
_FRAME = 2
_MIN_IMAGES_FOR_CONTENT_CHECK = 20
_FASHION_MIN_FRAME_INK = 0.5  # "fashion_mnist" files below this look like MNIST
_MNIST_MAX_FRAME_INK = 0.9  # "mnist" files at or above this look like Fashion-MNIST


def frame_ink_fraction(images: np.ndarray) -> float:
    """Fraction of ``images`` [N, H, W] with a pixel > 0 within 2 pixels of the border."""
    frame = np.ones(images.shape[1:3], bool)
    frame[_FRAME:-_FRAME, _FRAME:-_FRAME] = False
    return float((images[:, frame] > 0).any(axis=1).mean())


def check_idx_files(name: str, files: dict, images: np.ndarray) -> None:
    """Checks that IDX files are the dataset `name` (``"mnist"`` or ``"fashion_mnist"``).

    MNIST and Fashion-MNIST use the same file names, so the files are identified:

    * by checksum: a file whose decompressed sha256 is that of a known release of *another* dataset
      raises `DatasetMismatchError` (e.g. ``load("mnist", data_dir=<Fashion-MNIST folder>)``); a known
      release of the dataset named passes (`KNOWN_IDX_SHA256`);
    * by content, when the images file's checksum is unknown (a user's subset, another copy): if its
      frame-ink fraction (`frame_ink_fraction`; Fashion-MNIST: 1.0, MNIST: low) points to the other
      dataset, a `DatasetMismatchWarning` — not an error, since a modified or partial set may be
      legitimate. Fewer than 20 images are not judged.

    Args:
        name: the dataset asked for.
        files: ``{path: decompressed bytes}`` of the files read.
        images: the images read, ``[N, H, W]`` uint8.
    """
    images_known = False
    for path, raw in files.items():
        known = KNOWN_IDX_SHA256.get(hashlib.sha256(raw).hexdigest())
        if known is None:
            continue
        dataset, release_file = known
        if dataset != name:
            raise DatasetMismatchError(
                f"{path} is {_TITLES[dataset]}'s {release_file} (its sha256 is that of the released file), "
                f"not {_TITLES.get(name, name)}: both datasets use the same file names. Point data_dir "
                f"(--data_dir) at a folder of {_TITLES.get(name, name)} files, or load {dataset!r}."
            )
        images_known = images_known or release_file.endswith("idx3-ubyte")
    if images_known or len(images) < _MIN_IMAGES_FOR_CONTENT_CHECK:
        return
    ink = frame_ink_fraction(images)
    where = os.path.dirname(next(iter(files)))
    if name == "mnist" and ink >= _MNIST_MAX_FRAME_INK:
        warnings.warn(
            DatasetMismatchWarning(
                f"{where}: loading as MNIST files that look like Fashion-MNIST: {ink:.0%} of the images have ink "
                f"within {_FRAME} pixels of the border (Fashion-MNIST: all; MNIST's centred digits: a minority). "
                f"Their checksum is not a known release, so they are loaded anyway."
            ),
            stacklevel=4,
        )
    elif name == "fashion_mnist" and ink < _FASHION_MIN_FRAME_INK:
        warnings.warn(
            DatasetMismatchWarning(
                f"{where}: loading as Fashion-MNIST files that look like MNIST: only {ink:.0%} of the images "
                f"have ink within {_FRAME} pixels of the border (every Fashion-MNIST image has). Their checksum "
                f"is not a known release, so they are loaded anyway."
            ),
            stacklevel=4,
        )


def _search_dirs(name: str, data_dir: str | None) -> list[str]:
    """Folders to look in: `data_dir` and its ``<name>`` subfolders only, when given; else those of
    ``$HYPERKERAS_DATA_DIR``, then Debian's folder."""

    def under(base):
        base = os.fspath(base)
        return [base, os.path.join(base, name), os.path.join(base, name.replace("_", "-"))]

    if data_dir:
        return list(dict.fromkeys(under(data_dir)))
    env = os.environ.get("HYPERKERAS_DATA_DIR")
    dirs = under(env) if env else []
    dirs.append(os.path.join("/usr/share/datasets", name.replace("_", "-")))
    return list(dict.fromkeys(dirs))


def _data_dir_error(name: str, split: str, data_dir, wanted: str, looked: list[str], partial: list[str]):
    """The error for a `data_dir` that does not hold the files of `name` (no other place is tried)."""
    data_dir = os.fspath(data_dir)
    if not os.path.exists(data_dir):
        state = "does not exist"
    elif not os.path.isdir(data_dir):
        state = "is not a folder"
    else:
        state = "does not hold the files"
    found = f" Found only: {'; '.join(partial)}." if partial else ""
    return DatasetNotFoundError(
        f"data_dir={data_dir!r} {state}: dataset {name!r} ({split}) needs {wanted}, looked for in "
        f"{', '.join(looked)}.{found} Nothing else was tried, so that no other copy is loaded in its place: "
        "correct data_dir (--data_dir), or leave it out to use $HYPERKERAS_DATA_DIR, /usr/share/datasets or TFDS."
    )


def _find_idx(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _how_to_get(name: str) -> str:
    if name == "fashion_mnist":
        return "apt-get install dataset-fashion-mnist (Debian), or put the four IDX .gz files in --data_dir"
    if name == "mnist":
        return "put train-images-idx3-ubyte.gz etc. (the four MNIST IDX files) in --data_dir or $HYPERKERAS_DATA_DIR"
    return "put the 'cifar-10-batches-py' folder (python version of CIFAR-10) in --data_dir or $HYPERKERAS_DATA_DIR"


def _tfds_arrays(name: str, split: str, offline: bool, tried: list[str]):
    """``(x, y)`` of a TFDS dataset, or None with the reason appended to `tried`. Without network
    (`network_available`) it reads only prepared data, as offline."""
    if offline:
        how = "offline: download=False"
    elif not network_available():
        offline = True
        how = (
            f"no network ({TFDS_DOWNLOAD_HOST[0]} unreachable within {NETWORK_TIMEOUT_S:g} s): download=False, "
            "prepared data only"
        )
    else:
        how = "download=True"
    download = not offline
    attempt = f"TFDS {name!r} split {split!r} ({how})"
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        tried.append(f"{attempt}: tensorflow_datasets is not installed ({e})")
        return None
    try:
        ds = tfds.load(name, split=split, as_supervised=True, batch_size=-1, download=download)
        x, y = tfds.as_numpy(ds)
    except Exception as e:  # noqa: BLE001 - any TFDS failure means "not available here"; the reason is reported
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        tried.append(f"{attempt}: {type(e).__name__}: {reason}")
        return None
    return x, y


def _check_tfds_name(name: str) -> None:
    """Raises ValueError for a name that is neither built in nor a TFDS dataset (TFDS installed)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return  # reported by _tfds_arrays
    try:
        tfds.builder(name)
    except tfds.core.DatasetNotFoundError:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        raise ValueError(
            f"unknown dataset {name!r}: not one of hyperkeras's ({', '.join(DATASETS)}) nor a TensorFlow "
            f"Datasets name (https://www.tensorflow.org/datasets/catalog)."
            + (f" Did you mean {' or '.join(map(repr, close))}?" if close else "")
        ) from None
    except Exception:  # noqa: BLE001 - e.g. a config name tfds.builder cannot resolve offline: let tfds.load report it
        return


def _not_found(name: str, split: str, tried: list[str], how: str = "") -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"dataset {name!r} ({split}) not found. Tried: {'; '.join(tried)}." + (f" To get it: {how}." if how else "")
    )


def _load_idx_dataset(name: str, split: str, data_dir: str | None, offline: bool):
    looked, partial = [], []
    for d in _search_dirs(name, data_dir):
        img = _find_idx(d, _IDX_FILES[split][0])
        lbl = _find_idx(d, _IDX_FILES[split][1])
        partial += [p for p in (img, lbl) if p]
        if img and lbl:
            raw = {img: _read_file_bytes(img), lbl: _read_file_bytes(lbl)}
            x, y = _parse_idx(img, raw[img]), _parse_idx(lbl, raw[lbl])
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise CorruptDataError(
                    f"{img} / {lbl}: images {x.shape} and labels {y.shape} do not form an image set."
                )
            if y.size and (y.min() < 0 or y.max() > 9):
                raise CorruptDataError(f"{lbl}: labels outside 0..9.")
            check_idx_files(name, raw, x)
            return x[..., None], y
        looked.append(d)
    if data_dir:
        img, lbl = _IDX_FILES[split]
        raise _data_dir_error(
            name, split, data_dir, f"the IDX files {img}.gz and {lbl}.gz (or uncompressed)", looked, partial
        )
    arrays = _tfds_arrays(name, split, offline, looked)
    if arrays is not None:
        return arrays
    raise _not_found(name, split, looked, _how_to_get(name))


def _load_cifar10(split: str, data_dir: str | None, offline: bool):
    looked, partial = [], []
    for d in _search_dirs("cifar10", data_dir):
        folder = (
            d if os.path.basename(d.rstrip("/")) == "cifar-10-batches-py" else os.path.join(d, "cifar-10-batches-py")
        )
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        paths = [os.path.join(folder, f) for f in files]
        if all(os.path.isfile(p) for p in paths):
            xs, ys = [], []
            for p in paths:
                try:
                    with open(p, "rb") as f:
                        batch = pickle.load(f, encoding="bytes")
                    data = np.asarray(batch[b"data"], dtype=np.uint8)
                    labels = np.asarray(batch[b"labels"], dtype=np.int64)
                except Exception as e:  # noqa: BLE001
                    raise CorruptDataError(f"{p}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}).") from e
                if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
                    raise CorruptDataError(f"{p}: data {data.shape} / labels {labels.shape} are not CIFAR-10 shaped.")
                xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                ys.append(labels)
            return np.concatenate(xs), np.concatenate(ys)
        looked.append(folder)
        partial += [p for p in paths if os.path.isfile(p)]
    if data_dir:
        raise _data_dir_error(
            "cifar10", split, data_dir, f"a 'cifar-10-batches-py' folder with {', '.join(files)}", looked, partial
        )
    arrays = _tfds_arrays("cifar10", split, offline, looked)
    if arrays is not None:
        return arrays
    raise _not_found("cifar10", split, looked, _how_to_get("cifar10"))


def _load_digits(split: str):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.RandomState(0).permutation(len(y))
    n_train = int(0.8 * len(y))
    idx = perm[:n_train] if split == "train" else perm[n_train:]
    return x[idx], y[idx]


# ---------------------------------------------------------------------- toy problems
class GaussianMixture2D:
    """The 2-D Gaussian mixture of the Deutsch toy problem (Fig. 2).

    The paper does not list its components; we use five isotropic components with standard deviation
    0.1 and equal weights, at fixed positions in [−1, 1]², so that a 1-D generated path must visit
    separated peaks.
    """

    def __init__(self, means=None, std: float = 0.1, weights=None):
        self.means = np.asarray(
            means if means is not None else [[-0.6, -0.5], [0.5, -0.6], [0.0, 0.1], [-0.55, 0.6], [0.6, 0.55]],
            dtype=np.float32,
        )
        self.std = float(std)
        n = len(self.means)
        self.weights = np.asarray(weights if weights is not None else np.full(n, 1.0 / n), dtype=np.float32)

    def density(self, points):
        """Mixture density at ``points`` [..., 2]; works on NumPy arrays and TF tensors."""
        if isinstance(points, np.ndarray):
            d2 = np.sum((points[..., None, :] - self.means) ** 2, axis=-1)
            comp = np.exp(-0.5 * d2 / self.std**2) / (2 * np.pi * self.std**2)
            return np.sum(comp * self.weights, axis=-1)
        points = tf.convert_to_tensor(points, tf.float32)
        d2 = tf.reduce_sum(tf.square(points[..., None, :] - self.means), axis=-1)
        comp = tf.exp(-0.5 * d2 / self.std**2) / (2 * np.pi * self.std**2)
        return tf.reduce_sum(comp * self.weights, axis=-1)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.RandomState(seed)
        comp = rng.choice(len(self.means), size=n, p=self.weights / self.weights.sum())
        return (self.means[comp] + self.std * rng.randn(n, 2)).astype(np.float32)


def cubic_regression(n: int = 20, noise_std: float = 3.0, low: float = -4.0, high: float = 4.0, seed: int = 0):
    """HyperGAN §4.3: x ~ U[low, high], y = x³ + ε with ε ~ N(0, noise_std²). Returns ([n, 1], [n, 1])."""
    rng = np.random.RandomState(seed)
    x = rng.uniform(low, high, size=(n, 1)).astype(np.float32)
    y = (x**3 + noise_std * rng.randn(n, 1)).astype(np.float32)
    return x, y


# ---------------------------------------------------------------------- public API
def parse_classes(classes) -> tuple[int, ...] | None:
    """Accepts None, an iterable of ints, or a string like ``"0-4"`` / ``"0,2,5-7"``."""
    if classes is None or classes == "" or classes == "all":
        return None
    if isinstance(classes, str):
        out = []
        for part in classes.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo, hi = (int(v) for v in part.split("-"))
                    out.extend(range(lo, hi + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise ValueError(f"classes={classes!r}: expected e.g. '0-4' or '0,2,5-7'.") from None
        return tuple(out)
    return tuple(int(c) for c in classes)


def load_arrays(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    classes: Sequence[int] | str | None = None,
    subset: int | None = None,
    resize: int | None = None,
    seed: int = 0,
    offline: bool | None = None,
):
    """Loads a dataset split as NumPy ``(x, y)``.

    Args:
        name: one of `DATASETS`, or any TensorFlow Datasets name (``"cifar100"``, ``"kmnist"``…) with
            ``(image, label)`` supervised keys.
        split: ``"train"`` or ``"test"``; for TFDS names (and for ``fashion_mnist`` / ``mnist`` /
            ``cifar10`` read through TFDS) any TFDS split, e.g. ``"train[:10%]"`` or ``"train+test"``.
        data_dir: the folder of the dataset's files (``fashion_mnist`` / ``mnist``: the IDX files;
            ``cifar10``: ``cifar-10-batches-py``), directly in it or in a ``<name>`` subfolder. When
            given it is the only place looked at, for the splits ``"train"`` and ``"test"``: a folder that
            does not exist or lacks the files raises `DatasetNotFoundError` (no other copy is loaded
            instead). Other names and TFDS splits do not read it.
        classes: keep only these labels (e.g. ``"0-4"`` for the OOD protocol). Labels are not renumbered.
        subset: keep the first `subset` examples after a seeded shuffle (e.g. 5000).
        resize: resize images to ``resize × resize`` (bilinear), e.g. ``digits`` to 28.
        seed: seed of the subset selection (and of toy-set sampling).
        offline: never download: TFDS reads only data already prepared. Default: ``$HYPERKERAS_OFFLINE``
            (``1`` = offline), else TFDS downloads what it lacks.

    Raises:
        DatasetNotFoundError: the dataset is in none of the places tried (all named in the message,
            with the offline fallbacks), or not in `data_dir` when that is given (the message names the
            folder and the files looked for).
        DatasetMismatchError: the files found are a known release of another dataset (`check_idx_files`).
        CorruptDataError: a file found is truncated or malformed.
        ValueError: an unknown name, or a split the dataset does not have.
    """
    offline = offline_requested(offline)
    local_split = split in LOCAL_SPLITS
    if name in ("fashion_mnist", "mnist") and local_split:
        x, y = _load_idx_dataset(name, split, data_dir, offline)
    elif name == "cifar10" and local_split:
        x, y = _load_cifar10(split, data_dir, offline)
    elif name in ("digits", *TOY_DATASETS) and not local_split:
        raise ValueError(f"split must be 'train' or 'test' for {name!r} (not a TFDS dataset), got {split!r}.")
    elif name == "digits":
        x, y = _load_digits(split)
    elif name == "gaussian_mixture_2d":
        x = GaussianMixture2D().sample(2000 if split == "train" else 500, seed=seed + (split == "test"))
        y = np.zeros(len(x), np.int32)
    elif name == "cubic":
        x, y = cubic_regression(n=20 if split == "train" else 200, seed=seed + (split == "test"))
        if split == "test":
            order = np.argsort(x[:, 0])
            x, y = x[order], y[order]
        return x, y
    else:  # any other name, or a TFDS split of fashion_mnist / mnist / cifar10
        if name not in DATASETS:
            _check_tfds_name(name)
        tried = []
        if name in DATASETS:
            tried.append(f"local files serve only the splits {LOCAL_SPLITS}, not {split!r}")
        arrays = _tfds_arrays(name, split, offline, tried)
        if arrays is None:
            raise _not_found(name, split, tried)
        x, y = arrays
        if not (np.issubdtype(np.asarray(x).dtype, np.number) and np.issubdtype(np.asarray(y).dtype, np.integer)):
            raise ValueError(
                f"TFDS {name!r} gives features of dtype {np.asarray(x).dtype} and labels of dtype "
                f"{np.asarray(y).dtype}: hyperkeras.data loads numeric (image) classification sets."
            )
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    y = y.astype(np.int32)
    keep = parse_classes(classes)
    if keep is not None:
        mask = np.isin(y, keep)
        if not mask.any():
            raise ValueError(f"classes={keep}: no example of {name}/{split} has these labels.")
        x, y = x[mask], y[mask]
    if subset is not None:
        if subset <= 0:
            raise ValueError(f"subset must be a positive number of examples, got {subset}.")
        idx = np.random.RandomState(seed).permutation(len(y))[: int(subset)]
        x, y = x[np.sort(idx)], y[np.sort(idx)]
    if resize is not None and x.ndim == 4 and x.shape[1] != resize:
        x = tf.image.resize(x, [resize, resize], method="bilinear").numpy().clip(0.0, 1.0)
    return x, y


def load(
    name: str,
    split: str = "train",
    batch_size: int | None = 32,
    shuffle: bool | None = None,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    **kwargs,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of ``(x, y)`` batches: shuffled (seeded) for ``split="train"`` by default.

    Extra keyword arguments go to `load_arrays` (`data_dir`, `classes`, `subset`, `resize`, `offline`);
    `name` and `split` are as there (any TFDS name and split).
    """
    x, y = load_arrays(name, split, seed=seed, **kwargs)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle is None:
        shuffle = split.startswith("train")
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def num_classes(name: str) -> int:
    """Number of classes: 10 for the built-in image sets, TFDS's label count for other TFDS names, else 1."""
    if name in IMAGE_DATASETS:
        return 10
    if name not in TOY_DATASETS:
        try:
            import tensorflow_datasets as tfds

            return int(tfds.builder(name).info.features["label"].num_classes)
        except Exception:  # noqa: BLE001 - not a TFDS classification set
            pass
    return 1
