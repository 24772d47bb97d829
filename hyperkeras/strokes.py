"""Deprecated: moved to `hyperkeras.data.strokes`. This module only re-exports it, and warns once when imported."""

import warnings

from hyperkeras.data.strokes import load_strokes, mdn_nll, mdn_split, read_iam_xml, synthetic_strokes

__all__ = ["load_strokes", "mdn_nll", "mdn_split", "read_iam_xml", "synthetic_strokes"]

warnings.warn("hyperkeras.strokes is deprecated: use hyperkeras.data.strokes.", DeprecationWarning, stacklevel=2)
