"""Reading result files into tidy frames, with one clear error when something is wrong.

Analysis functions take a ``pandas.DataFrame``; the command-line commands read files through
:func:`read_csv`, which turns a missing file or missing columns into a one-line ``ValueError``
(the command line prints it and exits non-zero). Statistics no measurement can give (a negative
variance, MSE, SNR or standard error, a variance interval whose ends are swapped or that does not
hold its variance, a p-value outside [0, 1], fewer than 2 replicates) are refused the same way
(:func:`check_statistics`), naming the column and the first such row, instead of being dropped.
"""
from __future__ import annotations

import os
from typing import Iterable

import pandas as pd

from gradnoise.engine import TEXT_COLUMNS

#: columns every fit / plot / report needs from a sweep CSV
SWEEP_REQUIRED = ("problem", "estimator", "param", "budget", "replicates", "variance",
                  "variance_ci_low", "variance_ci_high", "snr", "seconds_per_estimate")
#: statistics that cannot be negative (a variance, a mean of squares, a ratio of norms, a time)
NON_NEGATIVE = ("variance", "variance_ci_low", "variance_ci_high", "mse", "snr", "truth_se",
                "seconds_per_estimate", "cost_evals")
#: smallest possible value of a count column: a sample variance needs R >= 2, an estimate N >= 1
AT_LEAST = {"replicates": 2, "budget": 1}
#: columns a fits CSV must have for plotting
FITS_REQUIRED = ("problem", "estimator", "param", "a", "b")
#: of those, the ones a fit may leave empty: with fewer than two budgets of nonzero variance
#: (an exact estimator: variance 0 at every N) there is no power law to fit (:mod:`.fit`)
FITS_MAY_BE_EMPTY = ("a", "b")


def require_columns(df: pd.DataFrame, required: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the missing columns of ``df`` (``what`` names the input)."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks required column(s) {', '.join(missing)}")


def read_csv(path: str | os.PathLike, required: Iterable[str] = SWEEP_REQUIRED, what: str | None = None,
             may_be_empty: Iterable[str] = ()) -> pd.DataFrame:
    """Read a CSV and check it has the ``required`` columns, filled (but those in ``may_be_empty``)
    and numeric where they are numbers; one-line ``ValueError`` otherwise."""
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
    check_values(df, required, what, may_be_empty)
    check_statistics(df, what)
    return df


def check_values(df: pd.DataFrame, required: Iterable[str], what: str, may_be_empty: Iterable[str] = ()) -> None:
    """Refuse text in a numeric column and empty cells in required columns (a truncated file) but
    ``may_be_empty``: one ``ValueError`` naming the column and the first offending row (1-based,
    as in the file)."""
    may_be_empty = set(may_be_empty)
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
            bad = numbers.isna() & (column not in may_be_empty)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(f"{what}: column {column!r} is empty in row {row + 2} "
                             f"({int(bad.sum())} rows in all; a truncated file?)")


def check_statistics(df: pd.DataFrame, what: str, *, file: bool = True) -> None:
    r"""Refuse statistics that no measurement gives: one ``ValueError`` naming ``what``, the column,
    the first offending row and how many rows are wrong. Rows are numbered as lines of the file
    (the first row after the header is row 2) when ``file``, else by the frame's index.

    Checked, where the columns are present and numeric: :data:`NON_NEGATIVE` columns are
    :math:`\ge 0`; :data:`AT_LEAST` counts reach their minimum; ``variance_ci_low`` :math:`\le`
    ``variance`` :math:`\le` ``variance_ci_high``; ``bias_p`` lies in [0, 1]. Empty cells (NaN)
    pass: which columns must be filled is :func:`check_values`' concern. A variance of exactly 0
    (an exact estimator) is possible and passes.
    """
    def number(column):
        return pd.to_numeric(df[column], errors="coerce") if column in df.columns else None

    checks = []
    for column in NON_NEGATIVE:
        if (v := number(column)) is not None:
            checks.append((column, v, v < 0, "is negative"))
    for column, least in AT_LEAST.items():
        if (v := number(column)) is not None:
            checks.append((column, v, v < least, f"is below {least}"))
    if (p := number("bias_p")) is not None:
        checks.append(("bias_p", p, (p < 0) | (p > 1), "is outside [0, 1]"))
    low, var, high = number("variance_ci_low"), number("variance"), number("variance_ci_high")
    if low is not None and high is not None:
        checks.append(("variance_ci_low", low, low > high, "exceeds variance_ci_high (the ends are swapped)"))
        if var is not None:
            checks.append(("variance", var, (var < low) | (var > high), "lies outside [variance_ci_low, variance_ci_high]"))
    for column, values, bad, says in checks:
        if bad.any():
            pos, count = int(bad.to_numpy().nonzero()[0][0]), int(bad.sum())
            row = f"row {pos + 2}" if file else f"the row with index {df.index[pos]!r}"
            raise ValueError(f"{what}: column {column!r} {says} in {row} ({float(values.iloc[pos]):g}; "
                             f"{count} row{'s' if count > 1 else ''} in all), which no measurement gives; "
                             "refused rather than those rows dropped")
