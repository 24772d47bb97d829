"""Data: datasets as `tf.data` pipelines with offline-first loading, and the experiments' data helpers.

- datasets.py: image and toy datasets, ``load`` / ``load_arrays`` (re-exported here: ``hyperkeras.data.load``).
- augmentation.py: in-graph image augmentation (`augment`: pad, random crop, random flip).
- text.py: character corpora for language modelling (`load_corpus`, `Vocabulary`).
- strokes.py: pen-stroke sequences (IAM-OnDB) and the handwriting model's mixture-density loss.

The names here are datasets.py's: to change its module state (``NETWORK_TIMEOUT_S``, or
``network_available`` in a test), set it on `hyperkeras.data.datasets`.
"""

from hyperkeras.data import augmentation, strokes, text  # noqa: F401
from hyperkeras.data.datasets import (
    DATASETS,
    IMAGE_DATASETS,
    KNOWN_IDX_SHA256,
    LOCAL_SPLITS,
    NETWORK_TIMEOUT_S,
    OFFLINE_FALLBACKS,
    TFDS_DOWNLOAD_HOST,
    TOY_DATASETS,
    CorruptDataError,
    DatasetMismatchError,
    DatasetMismatchWarning,
    DatasetNotFoundError,
    GaussianMixture2D,
    check_idx_files,
    cubic_regression,
    frame_ink_fraction,
    load,
    load_arrays,
    network_available,
    num_classes,
    offline_requested,
    parse_classes,
    read_idx,
)

__all__ = [
    "DATASETS",
    "IMAGE_DATASETS",
    "TOY_DATASETS",
    "LOCAL_SPLITS",
    "OFFLINE_FALLBACKS",
    "KNOWN_IDX_SHA256",
    "TFDS_DOWNLOAD_HOST",
    "NETWORK_TIMEOUT_S",
    "DatasetNotFoundError",
    "CorruptDataError",
    "DatasetMismatchError",
    "DatasetMismatchWarning",
    "GaussianMixture2D",
    "load",
    "load_arrays",
    "num_classes",
    "parse_classes",
    "cubic_regression",
    "read_idx",
    "check_idx_files",
    "frame_ink_fraction",
    "network_available",
    "offline_requested",
]
