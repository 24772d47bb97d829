"""Character corpora for language modelling: PTB characters, enwik8, any UTF-8 file, and an embedded default.

`load_corpus(name, ...)` returns ``(train, valid, test)`` lists of symbols; `Vocabulary` maps them to ids.

  pydoc   (no download) CPython's own ``pydoc_data.topics``, ≈465 K characters of English documentation
          (the exact text depends on the Python version); split 90% / 5% / 5% in order.
  ptb     ``ptb.char.{train,valid,test}.txt`` in `data_dir` (space-separated tokens, ``_`` between words;
          each line ends with a newline token).
  enwik8  the ``enwik8`` file in `data_dir`: bytes, first 90 M / next 5 M / next 5 M.
  text    any UTF-8 file (`text_file`); split 90% / 5% / 5% in order.
"""

from __future__ import annotations

import os

import numpy as np

UNK = "\x00"
CORPORA = ("pydoc", "ptb", "enwik8", "text")


def load_corpus(name, data_dir=None, text_file=None, max_chars=None, enwik8_sizes=(90_000_000, 5_000_000, 5_000_000)):
    """Returns ``(train, valid, test)`` as lists of symbols (characters, PTB tokens or byte values)."""
    if name == "pydoc":
        from pydoc_data.topics import topics

        return _split_fractions("".join(topics[k] for k in sorted(topics)), max_chars)
    if name == "text":
        if not text_file:
            raise ValueError("--dataset=text needs --text_file=<a UTF-8 file>.")
        if not os.path.isfile(text_file):
            raise FileNotFoundError(f"--text_file: no such file {text_file!r}.")
        with open(text_file, encoding="utf-8") as f:
            return _split_fractions(f.read(), max_chars)
    if name == "ptb":
        splits = []
        for split in ("train", "valid", "test"):
            path = os.path.join(data_dir or "", f"ptb.char.{split}.txt")
            if not data_dir or not os.path.isfile(path):
                raise FileNotFoundError(
                    f"--dataset=ptb needs ptb.char.{split}.txt in --data_dir (got {data_dir!r}); "
                    "the files come with Mikolov's simple-examples.tgz (data/ptb.char.*)."
                )
            with open(path, encoding="utf-8") as f:
                tokens = [tok for line in f for tok in line.split() + ["\n"]]
            splits.append(tokens[:max_chars] if max_chars else tokens)
        return tuple(splits)
    if name == "enwik8":
        path = os.path.join(data_dir or "", "enwik8")
        if not data_dir or not os.path.isfile(path):
            raise FileNotFoundError(
                f"--dataset=enwik8 needs the file 'enwik8' in --data_dir (got {data_dir!r}); "
                "get it from http://mattmahoney.net/dc/enwik8.zip."
            )
        with open(path, "rb") as f:
            data = f.read(sum(enwik8_sizes))
        if len(data) < sum(enwik8_sizes):
            raise ValueError(f"{path} has {len(data)} bytes; enwik8 splits need {sum(enwik8_sizes)}.")
        a, b = enwik8_sizes[0], enwik8_sizes[0] + enwik8_sizes[1]
        splits = (list(data[:a]), list(data[a:b]), list(data[b:]))
        return tuple(s[:max_chars] for s in splits) if max_chars else splits
    raise ValueError(f"--dataset must be one of pydoc, ptb, enwik8, text; got {name!r}.")


def _split_fractions(text, max_chars):
    text = text[:max_chars] if max_chars else text
    if len(text) < 100:
        raise ValueError(f"the corpus has only {len(text)} characters; need at least 100.")
    a, b = int(0.9 * len(text)), int(0.95 * len(text))
    return list(text[:a]), list(text[a:b]), list(text[b:])


class Vocabulary:
    """Symbols seen in training (sorted) plus an unknown symbol for the rest."""

    def __init__(self, train_symbols):
        self.symbols = [UNK] + sorted(set(train_symbols) - {UNK}, key=str)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self):
        return len(self.symbols)

    def encode(self, symbols):
        return np.array([self.index.get(s, 0) for s in symbols], dtype="int32")

    def decode(self, ids):
        return [self.symbols[int(i)] for i in ids]


def as_text(symbols):
    return "".join(chr(s) if isinstance(s, int) else ("_" if s == UNK else s) for s in symbols)
