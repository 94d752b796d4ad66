"""Files: atomic writes, locks, the cache folder, and markdown tables. One home for each.

* :func:`atomic_write` and its forms for text, CSV and torch files: a temporary file in the same
  folder, flushed and fsynced, then ``os.replace``; a reader (or a crash) sees the old file or
  the new one, never half of one. Concurrent writers of the same content (two workers computing
  one cached oracle) each replace the file whole.
* :func:`exclusive_lock`: ``flock`` on a lock file, released with its holder's process;
  :func:`compute_once`: a cache file computed by one process while the others wait for it.
* :func:`cache_dir`: ``$GRADNOISE_CACHE/<kind>``; unset or empty means ``~/.cache/gradnoise``.
* :func:`fmt`, :func:`fmt_ci` and :func:`markdown_table`: how every report prints numbers.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterator, TypeVar

import pandas as pd

T = TypeVar("T")


def cache_dir(kind: str) -> Path:
    """``$GRADNOISE_CACHE/kind`` (``~/.cache/gradnoise/kind`` when the variable is unset or empty)."""
    root = os.environ.get("GRADNOISE_CACHE") or Path.home() / ".cache" / "gradnoise"
    return Path(root) / kind


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it into place.

    The folder is created if needed; the file gets the permissions the umask gives a new file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    atomic_write(path, lambda fh: df.to_csv(fh, index=False))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "", *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created; removed on release).

    ``wait=False``: a second holder fails at once with a ``ValueError`` naming the first (its
    pid, host, start time and command, written into the file) and ``what`` is locked.
    ``wait=True``: it waits for the first to finish. A holder that dies releases the lock with
    its process. The removal on release is safe against a process that opened the file just
    before: after locking, the holder checks it still holds the file at ``path`` (and locks the
    new file otherwise). Linux honours ``flock`` on NFS through ``fcntl`` locks.
    """
    import fcntl

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(f"cannot create the lock file {path!r}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(f"{what} is being written by another gradnoise run ({holder}); "
                             f"wait for it to finish or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n").encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def compute_once(path: str | os.PathLike, compute: Callable[[], T]) -> T:
    """The torch file at ``path``, computing and writing it first if no process has yet.

    For caches shared by several processes (Dask workers on one machine, or machines sharing the
    cache folder): the first computes and writes (atomically) while the others wait on
    ``<path>.lock``, then load what it wrote; ``compute()`` runs at most once per file, and every
    process gets the same bits, as loaded back from the file.
    """
    import torch

    path = Path(path)
    if not path.exists():
        with exclusive_lock(path.with_name(path.name + ".lock"), wait=True):
            if not path.exists():
                atomic_torch_save(compute(), path)
    return torch.load(path, weights_only=True)


def fmt(value, digits: int = 3) -> str:
    """A number with ``digits`` significant figures; ``–`` for missing or NaN, ``∞`` for infinities."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}g}"


def fmt_ci(value, low, high, digits: int = 3, bound_digits: int | None = None) -> str:
    """``value [low, high]``, each with :func:`fmt` (the bounds with ``bound_digits``, default ``digits``)."""
    b = digits if bound_digits is None else bound_digits
    return f"{fmt(value, digits)} [{fmt(low, b)}, {fmt(high, b)}]"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of ``df``: floats through :func:`fmt`, everything else as text."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)
