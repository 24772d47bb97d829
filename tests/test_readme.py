"""Every ```python block of README.md runs as pasted (issue 24, item 1), so the README cannot drift.

Each block is written to a file in an empty folder (``tmp_path``) and run there as a subprocess with only
the checkout on the path (``PYTHONPATH=<repo root>``), as a user who pastes it into a file would run it.
The test asserts exit code 0 and that nothing new appears in the repo root (snippets write into
``tempfile.mkdtemp()``; ``TMPDIR`` points into ``tmp_path`` so those folders are removed afterwards).

Data: the snippets load Debian's Fashion-MNIST (``/usr/share/datasets/fashion-mnist``) or scikit-learn's
bundled digits through ``hyperkeras.data``; ``HYPERKERAS_OFFLINE=1``, so a missing dataset fails in seconds
instead of downloading.

What the test changes: only the training lengths listed in `SHRINK` (regex -> replacement, applied to
every block), so that a block can keep realistic numbers while the test stays short. Every entry must
match some block (`test_shrink_entries_still_match`): an entry that no longer matches is an error, not a
silent full-length run. Nothing else is edited. `SHRINK` is empty today: the blocks train for 20-200
steps as written, and all seven ran in 1 min 58 s wall, 2 min 29 s CPU (user + sys) on an idle 2-core
CPU (2026-12-04; the slowest, HyperGAN's, 33 s). Add an entry rather than shorten a README run that teaches
a realistic length.

Blocks preceded by a ``<!-- not run -->`` line are skipped; there are none (`NOT_RUN` lists the
expected ones with the reason, and the test fails if the README skips any other).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"

# (regex, replacement, why): applied with re.subn to every block before it runs.
SHRINK = []

# first line of a block marked <!-- not run --> -> why it cannot run here (none today).
NOT_RUN = {}

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def _blocks():
    """[(index, heading, first line, code, marked not run)] for the README's ```python blocks."""
    text = README.read_text()
    out = []
    for i, m in enumerate(_FENCE.finditer(text)):
        before = text[: m.start()].rstrip().splitlines()
        skip = bool(before) and before[-1].strip() == "<!-- not run -->"
        headings = [line for line in before if line.startswith("#")]
        code = m.group(1)
        lines = [line for line in code.splitlines() if line.strip()]
        first = next((line for line in lines if not line.startswith(("import ", "from "))), lines[0])
        out.append((i, headings[-1].lstrip("# ") if headings else "", first, code, skip))
    return out


def _id(block):
    i, _, first, _, _ = block
    return f"{i}-" + re.sub(r"\W+", "_", first).strip("_")[:50]


BLOCKS = _blocks()


def _shrink(code):
    for pattern, replacement, _ in SHRINK:
        code = re.sub(pattern, replacement, code)
    return code


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 7, [b[1] for b in BLOCKS]


def test_shrink_entries_still_match():
    codes = [b[3] for b in BLOCKS]
    stale = [p for p, _, _ in SHRINK if not any(re.search(p, c) for c in codes)]
    assert not stale, f"SHRINK entries that match no README block (update them with the README): {stale}"


def test_only_known_blocks_are_skipped():
    skipped = {b[2] for b in BLOCKS if b[4]}
    assert skipped == set(NOT_RUN), f"blocks marked <!-- not run -->: {sorted(skipped)}, expected {sorted(NOT_RUN)}"


@pytest.mark.parametrize("block", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_readme_block_runs(block, tmp_path):
    index, heading, first, code, skip = block
    if skip:
        pytest.skip(f"marked <!-- not run -->: {NOT_RUN.get(first, '?')}")
    work = tmp_path / "work"
    temp = tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    script = work / "snippet.py"
    script.write_text(_shrink(code))
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        TMPDIR=str(temp),
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        HYPERKERAS_OFFLINE="1",
    )
    before = set(os.listdir(REPO_ROOT))
    res = subprocess.run([sys.executable, script.name], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    new = sorted(set(os.listdir(REPO_ROOT)) - before)
    assert res.returncode == 0, f"README block {index} ({heading}) failed:\n{res.stderr[-4000:]}"
    assert not new, f"README block {index} ({heading}) wrote into the repo root: {new}"
    assert sorted(p.name for p in work.iterdir()) == ["snippet.py"], (
        f"README block {index} ({heading}) wrote into the current folder: {sorted(work.iterdir())}"
    )
