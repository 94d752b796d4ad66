"""Files: atomic writes, locks, the cache folder, and markdown tables. One home for each.

* :func:`atomic_write` and its forms for text, CSV and torch files: a temporary file in the same
  folder, flushed and fsynced, then ``os.replace``; a reader (or a crash) sees the old file or
  the new one, never half of one. Concurrent writers of the same content (two workers computing
  one cached oracle) each replace the file whole.
* :func:`exclusive_lock`: ``flock`` on a lock file, released with its holder's process;
  :func:`compute_once`: a cache file computed by one process while the others wait for it.
* :func:`cache_dir`: ``$GRADNOISE_CACHE/<kind>``; unset or empty means ``~/.cache/gradnoise``.
* :func:`fmt`, :func:`fmt_ci` and :func:`markdown_table`: how every report prints numbers.
* :func:`claim_outputs`, :func:`claim_file` and :meth:`Outputs.record`: a command never
  overwrites a file it did not write (see "Outputs" below); :func:`atomic_write_markdown` marks
  the markdown it writes.
"""
from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import math
import re
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Mapping, TypeVar

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


# ---------------------------------------------------------------------------------------------
# Outputs: a command never overwrites, and never deletes, a file it did not write
# ---------------------------------------------------------------------------------------------
#: the manifest a command keeps in each folder it writes into: ``{"files": {name: {"command",
#: "sha256", "written"}}}``, one entry per file gradnoise wrote there (written atomically, under a lock)
MANIFEST = ".gradnoise-written.json"
#: how the line that :func:`atomic_write_markdown` appends to every markdown file begins
MARKDOWN_MARK = "<!-- written by gradnoise"


@dataclass(frozen=True)
class Columns:
    """A CSV whose header holds ``columns`` (a gradnoise table of that kind, whoever wrote it)."""

    columns: tuple[str, ...]
    what: str = "a gradnoise CSV"

    def matches(self, path: str) -> bool:
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (ValueError, UnicodeDecodeError, OSError):      # pandas' parser errors are ValueErrors
            return False
        return set(self.columns) <= {str(c) for c in header}


@dataclass(frozen=True)
class Markdown:
    """Markdown that gradnoise wrote: it holds the :data:`MARKDOWN_MARK` line, or (written before
    the mark existed) one of its first five lines matches the regular expression ``legacy``."""

    legacy: str = ""
    what: str = "markdown written by gradnoise"

    def matches(self, path: str) -> bool:
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read(1 << 22).splitlines()
        except (UnicodeDecodeError, OSError):
            return False
        if any(line.startswith(MARKDOWN_MARK) for line in lines):
            return True
        return bool(self.legacy) and any(re.search(self.legacy, line) for line in lines[:5])


@dataclass(frozen=True)
class Json:
    """A JSON object whose keys include ``keys``, with the given values where not None."""

    keys: tuple[tuple[str, object], ...]
    what: str = "a gradnoise JSON file"

    def matches(self, path: str) -> bool:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (ValueError, OSError):
            return False
        return isinstance(data, dict) and all(k in data and (v is None or data[k] == v) for k, v in self.keys)


@dataclass(frozen=True)
class Figure:
    """A PNG, SVG or PDF figure written by matplotlib, as every gradnoise figure is: matplotlib
    embeds its name (PNG and SVG near the start, PDF in the trailing Info dictionary). Figures
    written before the manifest carry no other mark of gradnoise, so a matplotlib figure that
    has the exact name a command writes is taken for that command's."""

    what: str = "a figure written by matplotlib"

    def matches(self, path: str) -> bool:
        try:
            with open(path, "rb") as fh:
                head = fh.read(4096)
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
                tail = fh.read()
        except OSError:
            return False
        return b"matplotlib" in head.lower() or b"matplotlib" in tail.lower()


@dataclass(frozen=True)
class Beside:
    """A file in a folder whose ``anchor`` file matches ``signature``: a study's own tables in a
    study folder written before the manifest (its ``summary.json`` names the study)."""

    anchor: str
    signature: object
    what: str = "a file of a gradnoise output folder"

    def matches(self, path: str) -> bool:
        return self.signature.matches(os.path.join(os.path.dirname(path), self.anchor))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as fh:
            data = json.load(fh)
    except (ValueError, OSError):          # absent, unreadable or torn: lists nothing
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def written_by_gradnoise(path: str | os.PathLike, signature=None) -> bool:
    """Whether gradnoise may replace the existing file ``path``: it is empty, or its folder's
    :data:`MANIFEST` lists it with its present content (sha256), or ``signature`` recognises it
    (:class:`Columns`, :class:`Markdown`, :class:`Json`, :class:`Figure`, :class:`Beside`)."""
    path = os.fspath(path)
    if os.path.getsize(path) == 0:
        return True
    entry = _read_manifest(os.path.dirname(os.path.abspath(path))).get(os.path.basename(path))
    if isinstance(entry, dict) and entry.get("sha256") == _sha256(path):
        return True
    return signature is not None and signature.matches(path)


def _refuse_unless_ours(path: str, signature, command: str, instead: str) -> None:
    if os.path.isdir(path):
        raise ValueError(f"{command} writes the file {path!r}, but it is a folder; {instead}")
    if os.path.lexists(path) and not written_by_gradnoise(path, signature):
        what = f"is not {signature.what}" if signature is not None else "gradnoise did not write"
        raise ValueError(f"{command} would overwrite {path!r}, which {what}; the file is left as it is: {instead}")


@dataclass(frozen=True)
class Outputs:
    """The files a command may write into ``folder``: names (or glob patterns) relative to it,
    each with the signature that recognises a file of that kind written before the manifest.
    Returned by :func:`claim_outputs`; :meth:`record` lists them in the manifest once written."""

    command: str
    folder: str
    targets: tuple[tuple[str, object], ...]

    def paths(self) -> dict[str, object]:
        """The existing files the targets name (a pattern: every match) -> their signature; a
        file named exactly takes that target's signature, not a pattern's."""
        found: dict[str, object] = {}
        for name, signature in self.targets:
            if glob.has_magic(name):
                for path in sorted(glob.glob(os.path.join(glob.escape(self.folder), name))):
                    found.setdefault(path, signature)
        for name, signature in self.targets:
            if not glob.has_magic(name):
                found[os.path.join(self.folder, name)] = signature
        return found

    def record(self) -> None:
        """List every target file that now exists in its folder's :data:`MANIFEST` (with its
        sha256 and this command), and drop entries whose file is gone. Atomic, under a lock, so
        commands writing into one folder at once keep each other's entries."""
        by_folder: dict[str, list[str]] = {}
        for path in self.paths():
            if os.path.isfile(path):
                by_folder.setdefault(os.path.dirname(os.path.abspath(path)), []).append(path)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        for folder, paths in by_folder.items():
            manifest = os.path.join(folder, MANIFEST)
            with exclusive_lock(manifest + ".lock", wait=True):
                files = {name: entry for name, entry in _read_manifest(folder).items()
                         if os.path.isfile(os.path.join(folder, name))}
                for path in paths:
                    files[os.path.basename(path)] = {"command": self.command, "sha256": _sha256(path), "written": now}
                atomic_write_text(manifest, json.dumps({"files": dict(sorted(files.items()))}, indent=1) + "\n")


def claim_outputs(command: str, folder: str | os.PathLike, targets: Mapping[str, object]) -> Outputs:
    """Before computing anything: check that ``command`` (e.g. ``"gradnoise report"``) may write
    ``targets`` into ``folder``, and return them as :class:`Outputs` (call :meth:`Outputs.record`
    after writing).

    ``targets`` maps a file name relative to ``folder`` (``"summary.md"``, ``"figures/a.png"``) or
    a glob pattern (``"history-*.png"``: every existing match) to the signature of its kind
    (:class:`Columns`, :class:`Markdown`, :class:`Json`, :class:`Figure`, :class:`Beside`) or
    None. An existing target may be replaced only when :func:`written_by_gradnoise`; otherwise
    one ``ValueError`` line names it and says what to do, and nothing is written. Commands write
    only their targets and delete nothing in the folder.
    """
    outputs = Outputs(command, os.fspath(folder), tuple(targets.items()))
    for path, signature in outputs.paths().items():
        _refuse_unless_ours(path, signature, command, "move it away or choose another output folder")
    return outputs


def claim_file(command: str, path: str | os.PathLike, signature, option: str = "--out") -> None:
    """Before computing anything: ``command`` may write the single file ``path`` (it is absent,
    empty, or recognised by ``signature``, e.g. a gradnoise fits CSV by its columns); one
    ``ValueError`` line otherwise. Single files are recognised by their content alone: no
    manifest is written beside them."""
    _refuse_unless_ours(os.fspath(path), signature, command, f"move it away or give {option} another file name")


def atomic_write_markdown(path: str | os.PathLike, text: str, command: str) -> None:
    """:func:`atomic_write_text` of ``text`` with a last line (an HTML comment, invisible when
    rendered) saying that ``command`` wrote it: how a later run recognises the file as its own
    without the manifest (:class:`Markdown`)."""
    atomic_write_text(path, text.rstrip("\n") + f"\n\n{MARKDOWN_MARK} {command}; a re-run replaces this file -->\n")
