"""Datasets as `tf.data` pipelines, with offline-first loading.

``load(name, split, ...)`` returns a batched, seeded `tf.data.Dataset` of ``(x, y)``;
``load_arrays(name, split, ...)`` returns the same examples as NumPy arrays.

Images are float32 in [0, 1], channels last; labels are int32. Sources, in order of preference:

* ``fashion_mnist`` / ``mnist``: IDX ``.gz`` (or raw) files in `data_dir`, then ``$HYPERKERAS_DATA_DIR``,
  then ``/usr/share/datasets/<name with ->`` (Debian's ``dataset-fashion-mnist`` package), then TFDS.
* ``cifar10``: a ``cifar-10-batches-py`` folder in those places, then TFDS.
* ``digits``: scikit-learn's bundled 8×8 digits (always offline), 1,437 train / 360 test examples from
  a fixed permutation; ``resize=28`` gives 28×28×1 images for MNIST-shaped targets.
* ``gaussian_mixture_2d``: the 2-D toy of Deutsch Fig. 2 (see `GaussianMixture2D`).
* ``cubic``: HyperGAN §4.3, y = x³ + ε, ε ~ N(0, 3²), x ~ U[−4, 4] (20 training points).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from typing import Sequence

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


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is in none of the places looked at; the message lists them all."""


class CorruptDataError(ValueError):
    """Raised when a data file exists but is truncated or malformed."""


# ---------------------------------------------------------------------- IDX (MNIST-style) files
def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (optionally gzipped) into a NumPy array, validating header and length."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise CorruptDataError(f"{path}: cannot be read as {'gzip' if opener is gzip.open else 'IDX'} ({e}).") from e
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


def _search_dirs(name: str, data_dir: str | None) -> list[str]:
    dirs = []
    for base in (data_dir, os.environ.get("HYPERKERAS_DATA_DIR")):
        if base:
            dirs += [base, os.path.join(base, name), os.path.join(base, name.replace("_", "-"))]
    dirs.append(os.path.join("/usr/share/datasets", name.replace("_", "-")))
    return list(dict.fromkeys(dirs))


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


def _tfds_arrays(name: str, split: str, looked: list[str]):
    try:
        import tensorflow_datasets as tfds

        ds = tfds.load(name, split=split, as_supervised=True, batch_size=-1, download=False)
        x, y = tfds.as_numpy(ds)
        return x, y
    except Exception as e:  # noqa: BLE001 - any TFDS failure means "not available here"
        looked.append(f"TFDS {name}:{split} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
        return None


def _load_idx_dataset(name: str, split: str, data_dir: str | None):
    looked = []
    for d in _search_dirs(name, data_dir):
        img = _find_idx(d, _IDX_FILES[split][0])
        lbl = _find_idx(d, _IDX_FILES[split][1])
        if img and lbl:
            x, y = read_idx(img), read_idx(lbl)
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise CorruptDataError(
                    f"{img} / {lbl}: images {x.shape} and labels {y.shape} do not form an image set."
                )
            if y.size and (y.min() < 0 or y.max() > 9):
                raise CorruptDataError(f"{lbl}: labels outside 0..9.")
            return x[..., None], y
        looked.append(d)
    arrays = _tfds_arrays(name, split, looked)
    if arrays is not None:
        return arrays
    raise DatasetNotFoundError(
        f"dataset {name!r} ({split}) not found. Looked in: {'; '.join(looked)}. To get it: {_how_to_get(name)}."
    )


def _load_cifar10(split: str, data_dir: str | None):
    looked = []
    for d in _search_dirs("cifar10", data_dir):
        folder = d if os.path.basename(d.rstrip("/")) == "cifar-10-batches-py" else os.path.join(d, "cifar-10-batches-py")
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
    arrays = _tfds_arrays("cifar10", split, looked)
    if arrays is not None:
        return arrays
    raise DatasetNotFoundError(
        f"dataset 'cifar10' ({split}) not found. Looked in: {'; '.join(looked)}. To get it: {_how_to_get('cifar10')}."
    )


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
):
    """Loads a dataset split as NumPy ``(x, y)``.

    Args:
        name: one of `DATASETS`.
        split: ``"train"`` or ``"test"``.
        data_dir: first place to look for files.
        classes: keep only these labels (e.g. ``"0-4"`` for the OOD protocol). Labels are not renumbered.
        subset: keep the first `subset` examples after a seeded shuffle (e.g. 5000).
        resize: resize images to ``resize × resize`` (bilinear), e.g. ``digits`` to 28.
        seed: seed of the subset selection (and of toy-set sampling).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if name in ("fashion_mnist", "mnist"):
        x, y = _load_idx_dataset(name, split, data_dir)
    elif name == "cifar10":
        x, y = _load_cifar10(split, data_dir)
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
    else:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}.")
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

    Extra keyword arguments go to `load_arrays` (`data_dir`, `classes`, `subset`, `resize`).
    """
    x, y = load_arrays(name, split, seed=seed, **kwargs)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle is None:
        shuffle = split == "train"
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def num_classes(name: str) -> int:
    return {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "digits": 10}.get(name, 1)
