"""Reading result files into tidy frames, with one clear error when something is wrong.

Analysis functions take a ``pandas.DataFrame``; the command-line commands read files through
:func:`read_csv`, which turns a missing file or missing columns into a one-line ``ValueError``
(the command line prints it and exits non-zero).
"""
from __future__ import annotations

import os
from typing import Iterable

import pandas as pd

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
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} is not a readable CSV ({str(err).splitlines()[0]})") from None
    require_columns(df, required, what)
    if df.empty:
        raise ValueError(f"{what} has no rows")
    return df
