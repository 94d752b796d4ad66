r"""Statistics of R independent gradient estimates of one parameter, against a labelled truth.

Given estimates :math:`g_1,\dots,g_R \in \mathbb{R}^p` (one parameter tensor, flattened), the
truth :math:`t` and the truth's standard error :math:`s_t` (zero unless an oracle):

* ``mean`` :math:`\bar g`, ``bias`` :math:`\bar g - t`; the standard error of coordinate ``d`` is
  :math:`\sqrt{\hat\sigma_d^2/R + s_{t,d}^2 + (\rho\, m_d)^2}` and :math:`z_d` is the bias
  over it, where :math:`m_d` is the root mean square of the estimates and :data:`ROUNDING`
  :math:`\rho = 256\,\epsilon_{32}` the float32 rounding of one estimate (a few dozen roundings,
  with a margin). The last term does not shrink with R; it matters only where an estimate is
  exact up to rounding (the delta method's fitted coefficient on a quadratic cost: sd 4e-8
  against rms 2), which would otherwise be called biased with :math:`z = \infty`.
* ``variance``: the unbiased sample variance :math:`\hat\sigma^2` of the N-sample estimate; for
  tensors the **trace of the covariance** :math:`\sum_d \hat\sigma_d^2`.
* ``variance_ci_low/high``: a distribution-free 95% interval. The trace is
  :math:`\frac{R}{R-1}\,\overline{y}` with :math:`y_r = \|g_r - \bar g\|^2`, so by the delta method
  :math:`\log \hat\sigma^2 \pm z_{0.975}\, \mathrm{sd}(y)/(\bar y\sqrt{R})`. For a scalar this is the
  kurtosis-adjusted interval :math:`\log s^2 \pm z\sqrt{(\hat\kappa - 1)/R}` (cf. Bonett 2006); it
  stays valid for heavy-tailed (finite fourth moment) estimates such as REINFORCE's, where the
  chi-square interval, which assumes :math:`\kappa = 3`, under-covers.
* ``snr``: :math:`|\bar g|/\hat\sigma`; for tensors the mean over coordinates.
* ``mse``: :math:`\frac1R\sum_r \|g_r - t\|^2`.
* ``bias_z``: for scalars the signed :math:`z`; for tensors the two-sided z-equivalent of the
  Bonferroni p-value :math:`\min(1, p \cdot \min_d p_d)` of the per-coordinate z-tests, which is
  non-negative and valid however the coordinates are correlated (a matrix parameter's gradient is
  often rank one). ``bias_p`` is the matching two-sided p-value.
* ``mean``, ``truth``, ``bias``, ``truth_se`` of a tensor parameter are Euclidean norms.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
#: float32 rounding of one estimate, relative to its size (see the module docstring)
ROUNDING = 256 * float(np.finfo(np.float32).eps)

#: the columns :func:`summarise` returns, in order, and what each holds. The engine's
#: ``COLUMNS`` and the validation of result files are built from this; adding a statistic is
#: one entry here and one value in :func:`summarise`.
SUMMARY_COLUMNS: dict[str, str] = {
    "truth": "the true gradient (Euclidean norm for a tensor parameter)",
    "truth_se": "the truth's standard error (an oracle's; 0 for closed form and enumeration)",
    "mean": "mean of the R estimates (norm)",
    "bias": "mean minus truth (norm)",
    "bias_z": "bias over its standard error (Bonferroni z-equivalent for a tensor)",
    "bias_p": "two-sided p-value of bias_z",
    "variance": "variance of one estimate (trace of the covariance for a tensor)",
    "variance_ci_low": "95% interval of the variance, distribution-free, low end",
    "variance_ci_high": "95% interval of the variance, high end",
    "snr": "|mean| / std (mean over coordinates for a tensor)",
    "mse": "mean squared error against the truth",
    "coords": "number of coordinates of the parameter",
}


def log_se(low, high, level: float = CONFIDENCE):
    r"""Log-scale standard error of a quantity from its log-symmetric ``level`` interval
    ``[low, high]``: :math:`(\log h - \log l) / (2 z)`; arrays or scalars."""
    z = stats.norm.ppf(0.5 + level / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.log(np.asarray(high, dtype=float)) - np.log(np.asarray(low, dtype=float))) / (2 * z)


def bonferroni_p(z: np.ndarray) -> float:
    r"""Two-sided p-value of the largest of ``p`` per-coordinate z-scores, Bonferroni-corrected:
    :math:`\min(1, p \cdot 2\,\bar\Phi(\max_d |z_d|))`; valid however the coordinates correlate."""
    z = np.abs(np.asarray(z, dtype=float))
    return float(min(1.0, z.size * 2 * stats.norm.sf(np.max(z))))


def variance_interval(y: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float, float]:
    """Estimate and interval for a variance written as the mean of squared deviations ``y``.

    ``y`` has shape ``(R,)``, ``y_r = ||g_r - mean||^2``. Returns ``(variance, low, high)``.
    """
    r = y.shape[0]
    variance = float(y.sum() / (r - 1))
    if variance == 0.0:
        return 0.0, 0.0, 0.0
    se_log = float(y.std(ddof=1) / (y.mean() * np.sqrt(r)))
    z = stats.norm.ppf(0.5 + level / 2)
    return variance, variance * float(np.exp(-z * se_log)), variance * float(np.exp(z * se_log))


def summarise(estimates: np.ndarray, truth: np.ndarray, truth_se: np.ndarray) -> dict[str, float]:
    """Row of statistics (:data:`SUMMARY_COLUMNS`) for ``estimates`` of shape ``(R, p)`` and
    ``truth``, ``truth_se`` of shape ``(p,)``."""
    g = np.asarray(estimates, dtype=np.float64)
    r, p = g.shape
    t = np.asarray(truth, dtype=np.float64).reshape(p)
    ts = np.asarray(truth_se, dtype=np.float64).reshape(p)
    mean = g.mean(0)
    bias = mean - t
    var_d = g.var(0, ddof=1)
    se = np.sqrt(var_d / r + ts**2 + (ROUNDING * np.sqrt((g**2).mean(0)))**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, bias / se, np.where(bias == 0, 0.0, np.inf * np.sign(bias)))
        snr_d = np.where(var_d > 0, np.abs(mean) / np.sqrt(var_d), np.where(mean == 0, 0.0, np.inf))
    if p == 1:
        bias_z = float(z[0])
        bias_p = float(2 * stats.norm.sf(abs(bias_z)))
        scalar = lambda a: float(a[0])  # noqa: E731
    else:
        bias_p = bonferroni_p(z)
        bias_z = float(stats.norm.isf(bias_p / 2))
        scalar = lambda a: float(np.linalg.norm(a))  # noqa: E731
    variance, low, high = variance_interval(((g - mean) ** 2).sum(1))
    return {
        "truth": scalar(t),
        "truth_se": scalar(ts),
        "mean": scalar(mean),
        "bias": scalar(bias) if p == 1 else float(np.linalg.norm(bias)),
        "bias_z": bias_z,
        "bias_p": bias_p,
        "variance": variance,
        "variance_ci_low": low,
        "variance_ci_high": high,
        "snr": float(np.mean(snr_d)),
        "mse": float(((g - t) ** 2).sum(1).mean()),
        "coords": p,
    }
