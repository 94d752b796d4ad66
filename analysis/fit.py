r"""Power-law fits of variance and SNR against the budget, with confidence intervals.

For each problem x estimator x param of a sweep, fit

.. math::  \mathrm{Var}(N) = a\,N^{b}, \qquad \mathrm{SNR}(N) = c\,N^{d}.

An average of N i.i.d. terms has :math:`b = -1` and :math:`d = +1/2`; estimators whose baseline
is estimated from the same samples (leave-one-out, optimal baseline) or that are not averages
(IWAE's gradient in K) need not, and ``b_differs_from_minus_one`` flags them.

Method: inverse-variance weighted least squares on the log-log scale
--------------------------------------------------------------------
Each sweep point carries its variance :math:`\hat v_i` and a 95% interval that is symmetric on the
log scale (delta method, kurtosis-adjusted; see :mod:`gradnoise.statistics`), so its standard
error on the log scale is

.. math::  s_i = \frac{\log \hat v_i^{\mathrm{high}} - \log \hat v_i^{\mathrm{low}}}{2 z_{0.975}}.

The model :math:`y_i = \log a + b \log N_i + \varepsilon_i`, :math:`\varepsilon_i \sim
\mathcal N(0, s_i^2)` with **known** :math:`s_i` is fitted by weighted least squares (weights
:math:`1/s_i^2`, ``scipy.optimize.curve_fit`` with ``absolute_sigma=True``), which is the maximum
likelihood fit and gives the covariance :math:`(X^\top W X)^{-1}`. Two refinements:

* **bias correction**: :math:`E[\log \hat v] \approx \log v - s^2/2` (second-order delta method),
  so the response is :math:`y_i = \log \hat v_i + s_i^2/2`;
* **misfit scaling** (``scale_by_misfit=True``, the default; the Particle Data Group's "scale
  factor" or Birge ratio): when :math:`\chi^2 = \sum_i (y_i - \hat y_i)^2/s_i^2` exceeds its
  degrees of freedom :math:`\nu = n - 2`, the data scatter more than their error bars allow (the
  power law does not hold exactly), and the covariance is multiplied by :math:`\chi^2/\nu`.

Intervals are Wald intervals :math:`\hat b \pm z\,\mathrm{se}(\hat b)` and
:math:`\exp(\log\hat a \pm z\,\mathrm{se}(\log\hat a))`. With exact weights they cover at the
nominal level without misfit scaling, and at about 96% with it (the scale factor is applied in
the ~1/3 of correct-model fits where :math:`\chi^2 > \nu` by chance); ``tests/test_analysis_fit.py``
measures both. ``gof_p`` is the :math:`\chi^2_\nu` goodness-of-fit p-value of the power law.
``b_p_minus_one`` is the two-sided Wald p-value of :math:`H_0: b = -1` (with the same scaled
standard error), and ``b_differs_from_minus_one`` is ``b_p_minus_one < 1 - level``, i.e. -1 lies
outside the interval.

SNR points have no interval in the sweep; their log-scale standard error is the delta-method
approximation

.. math::  s_i^{\mathrm{SNR}} = \sqrt{\frac{1}{R\,\widehat{\mathrm{SNR}}_i^{2}} + \frac{s_i^2}{4}}

(:math:`\log\mathrm{SNR} = \log|\bar g| - \tfrac12\log\hat v`, neglecting the covariance of the
mean and the variance; for tensor parameters, whose SNR is a mean over coordinates, it is a rough
approximation). Points with a non-finite variance or SNR are left out of the fit.

Zero variance
-------------
An exact estimator has variance exactly 0 at some N (the centred delta-method control variate on
a quadratic cost, DisARM on one Bernoulli at :math:`\theta = 0`): its logarithm does not exist and
its SNR is infinite, so such a point is left out of both fits and counted in
``zero_variance_points`` (with every point at zero there is nothing to fit, and ``b`` and ``d``
are empty). It is a result, not a failure: the report says so, and the figures mark it at the
lower edge of the variance axis.

When the power law does not fit
-------------------------------
A goodness-of-fit p-value below :data:`GOF_P_MIN` (``gof_p`` of the variance fit) means the points
are not a power law within their error bars (a variance that levels off, an exponent that
changes with N); ``power_law_misfit`` says so, and ``b_differs_from_minus_one`` is then never
raised: b is a summary slope over the budgets measured, not an exponent to test (the misfit
scaling above widens its interval, but cannot make a wrong model right).

The SNR noise floor
-------------------
With R replicates the measured :math:`|\bar g|/\hat\sigma` cannot fall below the noise of the
mean: for a true SNR of zero, :math:`\bar g/\hat\sigma \approx \mathcal N(0, 1/R)` and its
absolute value has mean :math:`\sqrt{2/\pi}/\sqrt R` (:func:`snr_floor`). A point whose true SNR,
:math:`|t|/\hat\sigma` from the row's truth and variance, is below :data:`FLOOR_Z`
:math:`/\sqrt R` (its mean is within :data:`FLOOR_Z` standard errors of zero) measures that
noise rather than the signal (:func:`at_snr_floor`); such points are left out of the SNR fit
(``snr_floor_points`` counts them), drawn hollow over the floor in the SNR figure, and no claim
is made from them.

Claims need a check of the model: the flags ``b_differs_from_minus_one`` and
``d_differs_from_half`` are raised only from fits of at least :data:`MIN_POINTS_FOR_CLAIM`
points (with two points the power law cannot be checked, and the misfit scaling cannot apply).
Duplicated rows (the same problem, estimator, param, N and seed twice) are refused: they would
count one measurement twice and narrow the interval.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

from gradnoise.statistics import log_se

from .results import SWEEP_REQUIRED, check_statistics, read_csv, require_columns

LEVEL = 0.95
KEYS = ["problem", "estimator", "param"]
#: a point is at the SNR noise floor when its mean is expected within this many standard errors of zero
FLOOR_Z = 3.0
#: fewest points from which a fit flags an exponent as differing from its i.i.d. value
MIN_POINTS_FOR_CLAIM = 3
#: below this chi-square goodness-of-fit p-value the power law is reported as not fitting, and b is not tested
GOF_P_MIN = 1e-6
#: columns of :func:`fit_curves`' output, in order
FIT_COLUMNS = KEYS + [
    "a", "a_ci_low", "a_ci_high", "b", "b_ci_low", "b_ci_high", "r2", "n_points", "zero_variance_points",
    "b_differs_from_minus_one", "b_p_minus_one", "chi2", "gof_p", "power_law_misfit", "scale_factor",
    "c", "c_ci_low", "c_ci_high", "d", "d_ci_low", "d_ci_high", "snr_r2", "snr_n_points",
    "snr_floor_points", "d_differs_from_half", "x", "level",
]


def _line(u, intercept, slope):
    return intercept + slope * u


def fit_power_law(
    x, y, y_se_log, *, level: float = LEVEL, scale_by_misfit: bool = True, bias_correct: bool = True,
) -> dict[str, float]:
    r"""Fit :math:`y = a x^b` by inverse-variance WLS on the log-log scale (see module docstring).

    ``y_se_log`` holds each point's standard error on the log scale. Returns ``a``, ``b``, their
    ``level`` intervals (``a_ci_low`` ...), ``se_log_a``, ``se_b``, ``cov`` (of log a and b),
    weighted ``r2``, ``chi2``, ``dof``, ``gof_p``, ``scale_factor`` (the Birge ratio applied,
    >= 1) and ``n_points``. Needs two points with distinct x; otherwise every number is NaN.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    s = np.asarray(y_se_log, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(s) & (x > 0) & (y > 0) & (s > 0)
    x, y, s = x[keep], y[keep], s[keep]
    n = int(x.size)
    out = dict.fromkeys(["a", "a_ci_low", "a_ci_high", "b", "b_ci_low", "b_ci_high", "se_log_a",
                         "se_b", "r2", "chi2", "gof_p", "scale_factor"], np.nan)
    out.update(n_points=n, dof=max(n - 2, 0), cov=np.full((2, 2), np.nan))
    if n < 2 or np.unique(x).size < 2:
        return out
    u = np.log(x)
    v = np.log(y) + (s**2 / 2 if bias_correct else 0.0)
    w = 1.0 / s**2
    slope0 = np.polyfit(u, v, 1, w=np.sqrt(w))[0]
    p0 = (float(np.average(v - slope0 * u, weights=w)), float(slope0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        (intercept, slope), cov = optimize.curve_fit(_line, u, v, p0=p0, sigma=s, absolute_sigma=True)
    resid = v - _line(u, intercept, slope)
    chi2 = float(np.sum(resid**2 * w))
    dof = n - 2
    scale = max(1.0, chi2 / dof) if (scale_by_misfit and dof > 0) else 1.0
    cov = cov * scale
    se_int, se_b = float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))
    z = float(stats.norm.ppf(0.5 + level / 2))
    total = float(np.sum(w * (v - np.average(v, weights=w)) ** 2))
    out.update(
        a=float(np.exp(intercept)), a_ci_low=float(np.exp(intercept - z * se_int)),
        a_ci_high=float(np.exp(intercept + z * se_int)),
        b=float(slope), b_ci_low=float(slope - z * se_b), b_ci_high=float(slope + z * se_b),
        se_log_a=se_int, se_b=se_b, cov=cov,
        r2=float(1 - chi2 / total) if total > 0 else np.nan,
        chi2=chi2, gof_p=float(stats.chi2.sf(chi2, dof)) if dof > 0 else np.nan,
        scale_factor=float(np.sqrt(scale)),
    )
    return out


def log_se_variance(results: pd.DataFrame) -> pd.Series:
    """Log-scale standard error of each row's variance, from its (log-symmetric) interval."""
    return pd.Series(log_se(results["variance_ci_low"], results["variance_ci_high"], LEVEL), index=results.index)


def log_se_snr(results: pd.DataFrame) -> pd.Series:
    """Delta-method log-scale standard error of each row's SNR (see the module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(1.0 / (results["replicates"] * results["snr"] ** 2) + log_se_variance(results) ** 2 / 4)


def snr_floor(replicates) -> np.ndarray:
    r""":math:`\sqrt{2/\pi}/\sqrt R`: the mean of the measured SNR when the true SNR is zero."""
    return np.sqrt(2 / np.pi) / np.sqrt(np.asarray(replicates, dtype=float))


def at_snr_floor(results: pd.DataFrame) -> pd.Series:
    r"""True for rows whose true SNR :math:`|t|/\hat\sigma` is below ``FLOOR_Z / sqrt(R)``.

    Rows without a finite truth (results of other tools) are never marked.
    """
    if "truth" not in results.columns:
        return pd.Series(False, index=results.index)
    truth = pd.to_numeric(results["truth"], errors="coerce").abs()
    with np.errstate(divide="ignore", invalid="ignore"):
        true_snr = truth / np.sqrt(results["variance"])
    return (np.isfinite(truth) & (true_snr < FLOOR_Z / np.sqrt(results["replicates"]))).astype(bool)


def check_duplicates(results: pd.DataFrame, x: str = "budget") -> None:
    """Refuse rows that measure the same cell twice (same keys, N and seed): one clear error."""
    cols = KEYS + [x] + (["seed"] if "seed" in results.columns else [])
    dup = results.duplicated(cols, keep=False)
    if dup.any():
        first = results[dup].iloc[0]
        raise ValueError(
            f"results hold {int(dup.sum())} rows that repeat a cell ({', '.join(cols)}), e.g. "
            f"{', '.join(f'{c}={first[c]}' for c in cols)}; a fit would count them twice. "
            f"Drop the duplicates (or give the runs different seeds)"
        )


def fit_curves(
    results: pd.DataFrame, *, x: str = "budget", level: float = LEVEL, scale_by_misfit: bool = True,
) -> pd.DataFrame:
    """Fit Var = a·x^b and SNR = c·x^d for each problem x estimator x param of a tidy sweep.

    ``results`` has the columns of :data:`gradnoise.engine.COLUMNS` (at least
    :data:`gradnoise.analysis.results.SWEEP_REQUIRED`); ``x`` is the column used as N (``"budget"``, or
    ``"cost_evals"`` to count cost evaluations). Returns one row per group with
    :data:`FIT_COLUMNS`; the method and its intervals are described in the module docstring.
    Impossible statistics (a negative variance, a swapped interval: :func:`check_statistics`) are
    refused with one ``ValueError``; rows with variance 0 are left out of both fits and counted
    (``zero_variance_points``).
    """
    require_columns(results, [c for c in SWEEP_REQUIRED if c != "seconds_per_estimate"] + [x], "results")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    check_duplicates(results, x)
    check_statistics(results, "results", file=False)
    z = float(stats.norm.ppf(0.5 + level / 2))
    df = results.assign(_se_var=log_se_variance(results), _se_snr=log_se_snr(results),
                        _floor=at_snr_floor(results), _zero=results["variance"] == 0)
    rows = []
    for key, g in df.groupby(KEYS, sort=False):
        g = g.sort_values(x)
        measured = g[~g["_zero"]]                      # variance 0 has no logarithm (exact estimator)
        var = fit_power_law(measured[x], measured["variance"], measured["_se_var"], level=level,
                            scale_by_misfit=scale_by_misfit)
        above = measured[~measured["_floor"]]
        snr = fit_power_law(above[x], above["snr"], above["_se_snr"], level=level,
                            scale_by_misfit=scale_by_misfit, bias_correct=False)
        row = dict(zip(KEYS, key))
        row.update({k: var[k] for k in ("a", "a_ci_low", "a_ci_high", "b", "b_ci_low", "b_ci_high",
                                        "r2", "n_points", "chi2", "gof_p", "scale_factor")})
        row["zero_variance_points"] = int(g["_zero"].sum())
        row["power_law_misfit"] = bool(var["gof_p"] < GOF_P_MIN)          # NaN (too few points): False
        p_b = 2 * stats.norm.sf(abs(var["b"] + 1) / var["se_b"]) if var["se_b"] > 0 else np.nan
        row["b_p_minus_one"] = float(p_b)
        row["b_differs_from_minus_one"] = (bool(p_b < 1 - level)
                                           if np.isfinite(p_b) and var["n_points"] >= MIN_POINTS_FOR_CLAIM
                                           and not row["power_law_misfit"] else False)
        row.update(c=snr["a"], c_ci_low=snr["a_ci_low"], c_ci_high=snr["a_ci_high"],
                   d=snr["b"], d_ci_low=snr["b_ci_low"], d_ci_high=snr["b_ci_high"],
                   snr_r2=snr["r2"], snr_n_points=snr["n_points"], snr_floor_points=int(measured["_floor"].sum()))
        row["d_differs_from_half"] = (bool(abs(snr["b"] - 0.5) > z * snr["se_b"])
                                      if np.isfinite(snr["se_b"]) and snr["n_points"] >= MIN_POINTS_FOR_CLAIM
                                      else False)
        row.update(x=x, level=level)
        rows.append(row)
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


def _names(df: pd.DataFrame, detail=None) -> str:
    return ", ".join(f"{r.problem}/{r.estimator}/{r.param}" + (f" ({detail(r)})" if detail else "")
                     for r in df.itertuples())


def fit_notes(fits: pd.DataFrame) -> str:
    """What ``gradnoise fit`` says about its fits: flagged exponents, misfits, zero-variance points."""
    flagged = fits[fits["b_differs_from_minus_one"]]
    notes = [f"b differs significantly from -1 for {len(flagged)}"
             + (": " + _names(flagged, lambda r: f"b={r.b:.3f}") if len(flagged) else "")]
    misfit = fits[fits["power_law_misfit"]]
    if len(misfit):
        notes.append(f"the power law does not fit (chi2 p < {GOF_P_MIN:g}; b not tested) for {len(misfit)}: "
                     + _names(misfit, lambda r: f"p={r.gof_p:.1e}"))
    zero = fits[fits["zero_variance_points"] > 0]
    if len(zero):
        notes.append(f"{int(zero['zero_variance_points'].sum())} points with variance 0 (exact) left out of the "
                     "fits: " + _names(zero, lambda r: f"{r.zero_variance_points} of {r.zero_variance_points + r.n_points}"))
    return "; ".join(notes)


def run_fit(args: argparse.Namespace) -> int:
    from gradnoise.io import Columns, atomic_write_csv, claim_file

    from .results import FITS_REQUIRED

    from .sweep import check_output_file

    check_output_file(args.out)
    claim_file("gradnoise fit", args.out, Columns(FITS_REQUIRED, "a gradnoise fits CSV"))
    results = read_csv(args.results, what=f"results CSV {args.results}")
    fits = fit_curves(results, x=args.x, level=args.level, scale_by_misfit=not args.no_misfit_scaling)

    atomic_write_csv(fits, args.out)
    print(f"wrote {len(fits)} fits to {args.out}; " + fit_notes(fits))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help="fit Var(N) = a N^b and SNR(N) = c N^d with confidence intervals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each problem x estimator x param of a sweep CSV, fit Var(N) = a N^b and\n"
        "SNR(N) = c N^d by inverse-variance weighted least squares on the log-log scale (weights\n"
        "from each point's variance interval; covariance scaled by chi2/dof when the power law\n"
        "misfits), with Wald intervals; flags b significantly different from -1.",
        epilog="examples:\n"
        "  gradnoise sweep --problem gaussian-quadratic --out sweep.csv\n"
        "  gradnoise fit sweep.csv --out fits.csv\n"
        "  gradnoise fit sweep.csv --x cost_evals --level 0.9 --out fits_cost.csv",
    )
    p.add_argument("results", metavar="RESULTS.csv", help="tidy CSV written by `gradnoise sweep`")
    p.add_argument("--out", default="fits.csv", help="output CSV (default: %(default)s)")
    p.add_argument("--x", default="budget", choices=["budget", "cost_evals"], help="column used as N (default: %(default)s)")
    p.add_argument("--level", type=float, default=LEVEL, help="confidence level of the intervals (default: %(default)s)")
    p.add_argument("--no-misfit-scaling", action="store_true", help="do not scale the covariance by chi2/dof when > 1")
    p.set_defaults(func=run_fit)
