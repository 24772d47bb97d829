"""Deprecated: moved to `hyperkeras.data.text`. This module only re-exports it, and warns once when imported."""

import warnings

from hyperkeras.data.text import CORPORA, UNK, Vocabulary, as_text, load_corpus

__all__ = ["CORPORA", "UNK", "Vocabulary", "as_text", "load_corpus"]

warnings.warn("hyperkeras.text is deprecated: use hyperkeras.data.text.", DeprecationWarning, stacklevel=2)
