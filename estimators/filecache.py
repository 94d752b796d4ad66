"""Files computed once and shared: an exclusive lock per file, atomic writes.

Oracle truths (:func:`estimators.problems.oracle_truth`) and trained digits checkpoints
(:func:`estimators.digits.load_or_train`) are cached on disk and read by every process that
needs them: several Dask workers on one machine, or on several machines sharing the cache folder.
:func:`compute_once` makes the first process compute and write the file while the others wait on
its lock and then read it, so the work is done once and no reader ever sees a half-written file:

* the lock is ``flock`` on ``<file>.lock``, removed by its holder when done, and released by
  the kernel when its holder dies (so a killed worker never leaves the others waiting); NFS
  honours ``flock`` through ``fcntl`` locks on Linux >= 2.6.12;
* the write goes to a unique temporary file in the same folder (``tempfile.mkstemp``: unique
  across hosts, unlike a pid), is flushed to disk, then renamed over the target
  (``os.replace``, atomic within a file system).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")


@contextlib.contextmanager
def exclusive(path: str | os.PathLike):
    """Hold an exclusive ``flock`` on ``<path>.lock`` (blocking) for the duration of the block.

    The holder removes the lock file when it leaves, so no lock files pile up in the cache; a
    waiter that then gets the lock of the removed file sees that its inode is gone and locks
    the new file instead (the same protocol as :func:`analysis.sweep.output_lock`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)                      # the previous holder removed it meanwhile: lock anew
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)                      # closing the descriptor releases the lock


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a unique temporary file, fsynced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def compute_once(path: str | os.PathLike, compute: Callable[[], T], *,
                 save: Callable[[T, Path], None] = atomic_save,
                 load: Callable[[Path], T] = lambda p: torch.load(p, weights_only=True)) -> T:
    """The content of ``path``, computing and writing it first if no process has yet.

    Without the lock two racing processes would both compute (minutes for a trained model) and
    both write; with it the second waits, then loads what the first wrote. ``compute()`` runs at
    most once per file among all processes sharing the folder; its value is returned as loaded
    back from the file, so every process gets the same bits whoever computed them.
    """
    path = Path(path)
    if path.exists():
        return load(path)
    with exclusive(path):
        if not path.exists():
            save(compute(), path)
    return load(path)
