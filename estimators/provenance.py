"""What a number depends on: the code that computed it, named by a hash of its source.

A finished sweep cell or a cached oracle truth is reused only when the code that would compute
it now is the code that computed it then. :func:`code_version` names that code: a hash of every
``.py`` file of the installed ``estimators`` package (relative path and bytes, in sorted order)
and of torch's version (its kernels and generators are part of the computation). Any edit of the
maths -- an estimator, a baseline, a problem, the engine, the statistics -- changes it; the
analysis and plotting code, which only reads results, does not take part.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parent


def source_hash(*files: str | Path, extra: str = "", digest_size: int = 6) -> str:
    """Hex blake2b of ``extra`` and the files' names (relative to the package) and bytes, in order."""
    h = hashlib.blake2b(extra.encode(), digest_size=digest_size)
    for path in map(Path, files):
        name = path.resolve().relative_to(PACKAGE) if path.resolve().is_relative_to(PACKAGE) else path.name
        h.update(str(name).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """12 hex digits naming the package's source and torch's version (see the module docstring)."""
    files = sorted(PACKAGE.rglob("*.py"), key=lambda p: p.relative_to(PACKAGE).as_posix())
    return source_hash(*files, extra=f"torch {torch.__version__}")
