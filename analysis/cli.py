"""The ``gradnoise`` command line (``python -m gradnoise.analysis`` works the same).

Each command lives in its own module exposing ``add_parsers(subparsers)``; this file only wires
them together and turns bad input into one clear line and a non-zero exit.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from gradnoise import cluster, plugins
from gradnoise.plugins import PluginError

# modules that contribute sub-commands, in --help order
COMMAND_MODULES = [
    "gradnoise.analysis.sweep",
    "gradnoise.analysis.fit",
    "gradnoise.analysis.plot",
    "gradnoise.analysis.compare",
    "gradnoise.analysis.history",
    "gradnoise.analysis.report",
    "gradnoise.analysis.train",
    "gradnoise.analysis.studies.cli",
]

#: errors that are the user's input or environment, printed as one line (exit 2), not a traceback
USER_ERRORS = (KeyError, ValueError, OSError, FloatingPointError, MemoryError, PluginError)


def add_plugin_argument(p: argparse.ArgumentParser) -> None:
    """``--plugin MODULE_OR_FILE`` (repeatable): every command has it (:func:`build_parser` adds it
    to each sub-command, those added later included); :func:`main` imports them before the command."""
    p.add_argument("--plugin", action="append", dest="plugins", metavar="MODULE_OR_FILE", default=None,
                   help="import a plugin first: a module (my_package.estimators) or a file (path/to/plugin.py) "
                        "that registers estimators, problems or studies (repeatable; also $GRADNOISE_PLUGINS, "
                        "and installed entry points: docs/plugins.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradnoise",
        description="Statistical benchmarking of Monte Carlo gradient estimators.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    for command in dict.fromkeys(sub.choices.values()):     # aliases share a parser
        add_plugin_argument(command)
    return parser


class _ReaderMayLeave:
    """``sys.stdout`` for a reader that may stop reading (``gradnoise compare ... | head -1``).

    At the first ``BrokenPipeError`` the standard output's file descriptor is pointed at
    ``os.devnull``, as Python's documentation recommends (the note on SIGPIPE in :mod:`signal`),
    and the command goes on: it still writes its files, and its exit status (1 from
    ``--fail-on-regression``) is kept, not turned into an error about the pipe. Everything else is
    the wrapped stream's.
    """

    def __init__(self, stream):
        self._stream = stream

    def _divert(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._divert()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._divert()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    if hasattr(stdout, "fileno"):
        try:
            stdout.fileno()
        except (OSError, ValueError):    # a stream without a descriptor (e.g. captured by a test)
            pass
        else:
            sys.stdout = _ReaderMayLeave(stdout)
    try:
        plugins.load_all(getattr(args, "plugins", None))
        # the command's process is gradnoise's: glibc keeps the memory blocks free for the next
        # block (its forked local workers inherit it); a third off a large cell's time
        cluster.keep_freed_memory()
        status = args.func(args)
        sys.stdout.flush()
        return status
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"gradnoise {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradnoise {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


def run() -> None:
    """The ``gradnoise`` executable and ``python -m gradnoise.analysis``: :func:`main`, then exit
    without tearing the interpreter down.

    Python's finalisation of the 2,000 modules a command imports (torch's among them) takes
    0.4-0.7 s on 2 cores after every command, for nothing a command needs: everything it writes
    is closed by then. So once :func:`main` returns (or raises: the traceback is printed as
    Python would), non-daemon threads are waited for, the exit handlers run (``atexit``:
    logging's flush, multiprocessing's, ``weakref.finalize``'s), stdout and stderr are flushed,
    and the process ends with ``os._exit`` and the command's status. :func:`main` itself returns
    normally, for callers in Python (tests, notebooks)."""
    import atexit
    import threading
    import traceback

    try:
        status = main()
    except SystemExit as exc:                # argparse's --help and usage errors
        status = exc.code
    except BaseException:                    # noqa: BLE001 -- printed as Python would
        traceback.print_exc()
        status = 1
    if status is None:
        status = 0
    elif not isinstance(status, int):        # SystemExit("message"): printed, exit 1
        print(status, file=sys.stderr)
        status = 1
    for thread in threading.enumerate():    # as Python's shutdown does: wait for non-daemon threads
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):       # a reader that left (gradnoise ... | head)
            pass
    os._exit(status)
