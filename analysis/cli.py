"""The ``gradnoise`` command line (``python -m gradnoise.analysis`` works the same).

Each command lives in its own module exposing ``add_parsers(subparsers)``; this file only wires
them together and turns bad input into one clear line and a non-zero exit.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# modules that contribute sub-commands, in --help order
COMMAND_MODULES = [
    "gradnoise.analysis.sweep",
    "gradnoise.analysis.fit",
    "gradnoise.analysis.plot",
    "gradnoise.analysis.compare",
    "gradnoise.analysis.history",
    "gradnoise.analysis.report",
    "gradnoise.analysis.studies.cli",
]

#: errors that are the user's input or environment, printed as one line (exit 2), not a traceback
USER_ERRORS = (KeyError, ValueError, OSError, FloatingPointError, MemoryError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradnoise",
        description="Statistical benchmarking of Monte Carlo gradient estimators.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"gradnoise {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradnoise {args.command}: interrupted", file=sys.stderr)
        return 130
