"""Atomic file writes: a reader never sees a half-written report, figure or metrics file.

Files get the permissions of any newly created file (``0o666`` minus the process umask, as ``open(path,
"w")`` would give them), so reports, metrics, flags and figures are readable by whoever may read the
folder; `tempfile.mkstemp` would make them private (0600).
"""

from __future__ import annotations

import json
import os
import secrets


def _create_temp(folder: str, name: str):
    """Creates a new, empty, uniquely named file beside the target, with umask-respecting permissions."""
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(6)}-{name}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Writes `data` to `path` via a temporary file in the same folder and an atomic rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable (best effort: not every platform can open a folder)
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> str:
    """JSON with NaN/Inf rejected (they are not JSON) and NumPy scalars converted."""

    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=default, allow_nan=False) + "\n")


def save_figure(fig, path: str, dpi: int = 120) -> str:
    """Saves a matplotlib figure as PNG atomically and closes it."""
    import io as _io

    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
