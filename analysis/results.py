"""Reading result files into tidy frames, with one clear error when something is wrong.

Analysis functions take a ``pandas.DataFrame``; the command-line commands read files through
:func:`read_csv`, which turns a missing file or missing columns into a one-line ``ValueError``
(the command line prints it and exits non-zero).
"""
from __future__ import annotations

import os
from typing import Iterable

import pandas as pd

from gradnoise.engine import TEXT_COLUMNS

#: columns every fit / plot / report needs from a sweep CSV
SWEEP_REQUIRED = ("problem", "estimator", "param", "budget", "replicates", "variance",
                  "variance_ci_low", "variance_ci_high", "snr", "seconds_per_estimate")
#: columns a fits CSV must have for plotting
FITS_REQUIRED = ("problem", "estimator", "param", "a", "b")


def require_columns(df: pd.DataFrame, required: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the missing columns of ``df`` (``what`` names the input)."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks required column(s) {', '.join(missing)}")


def read_csv(path: str | os.PathLike, required: Iterable[str] = SWEEP_REQUIRED, what: str | None = None) -> pd.DataFrame:
    """Read a CSV and check it has the ``required`` columns; one-line ``ValueError`` otherwise."""
    what = what or str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, expected a CSV file")
    try:
        df = pd.read_csv(path, dtype={"code_version": str})
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} is not a readable CSV ({str(err).splitlines()[0]})") from None
    require_columns(df, required, what)
    if df.empty:
        raise ValueError(f"{what} has no rows")
    check_values(df, required, what)
    return df


def check_values(df: pd.DataFrame, required: Iterable[str], what: str) -> None:
    """Refuse text in a numeric column and empty cells in required columns (a truncated file):
    one ``ValueError`` naming the column and the first offending row (1-based, as in the file)."""
    for column in required:
        values = df[column]
        if column in TEXT_COLUMNS:
            bad = values.isna()
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            text = numbers.isna() & values.notna()
            if text.any():
                row = int(text.to_numpy().nonzero()[0][0])
                raise ValueError(f"{what}: column {column!r} must be numeric, but row {row + 2} holds "
                                 f"{values.iloc[row]!r}")
            df[column] = numbers
            bad = numbers.isna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(f"{what}: column {column!r} is empty in row {row + 2} "
                             f"({int(bad.sum())} rows in all; a truncated file?)")
