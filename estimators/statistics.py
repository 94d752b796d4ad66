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

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
#: float32 rounding of one estimate, relative to its size (see the module docstring)
ROUNDING = 256 * float(np.finfo(np.float32).eps)
#: bootstrap resamples of the variance interval's pivot (:func:`variance_interval`), their seed,
#: the work (resamples x R x coordinates) above which the delta method is used instead, and the
#: elements of one block of resample weights
BOOTSTRAP = 999
BOOTSTRAP_SEED = 20061
BOOTSTRAP_WORK = 10**7
CHUNK_ELEMENTS = 2 * 10**6
#: below this many replicates a row's intervals are flagged as not to be trusted
#: (``intervals_reliable`` False): in the calibration table (docs/analysis.md) the interval covers
#: at 0.95-0.98 at R = 200 on every heavy-tailed and few-valued case but at 0.89-0.93 on some at
#: R = 50, where the sample has not yet seen the tail that carries the variance. A flag from the
#: sample itself (Kish's effective count of the squared deviations) was measured and rejected:
#: it flags the cells that did see the tail, whose intervals cover, and passes those that did not.
MIN_REPLICATES = 200
#: what the variance interval and bias test are, for asv benchmark versions and reports: a
#: change of method changes the tracks' meaning, and ``gradnoise compare`` says so
INTERVAL_METHOD = "bootstrap-t log variance; min(|z|, |Hall z|)"

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
    "variance_ci_low": "95% interval of the variance (bootstrap-t on the log scale), low end",
    "variance_ci_high": "95% interval of the variance, high end",
    "snr": "|mean| / std (mean over coordinates for a tensor)",
    "mse": "mean squared error against the truth",
    "coords": "number of coordinates of the parameter",
    "intervals_reliable": "False where R is too small for honest intervals (R < MIN_REPLICATES: "
                          "heavy tails may not have been sampled yet)",
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


def holm(pvalues) -> np.ndarray:
    r"""Holm's (1979) step-down adjusted p-values, shape of ``pvalues`` flattened: the k-th smallest
    (k = 1..m) times :math:`m - k + 1`, made non-decreasing in that order and capped at 1. A
    hypothesis is rejected at family-wise level :math:`\alpha` exactly when its adjusted p-value
    is at most :math:`\alpha` (:func:`gradnoise.testing.holm_reject`)."""
    p = np.asarray(pvalues, dtype=float).ravel()
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def delta_variance_interval(y: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float, float]:
    r"""The delta-method interval of a variance written as the mean of squared deviations ``y``.

    ``y`` has shape ``(R,)``, ``y_r = ||g_r - mean||^2``: :math:`\log\hat\sigma^2 \pm z\,
    \mathrm{sd}(y)/(\bar y\sqrt R)`. Valid as R grows (finite fourth moment); it under-covers at
    small R on heavy-tailed and few-valued estimates (0.89-0.93 at R = 200: docs/analysis.md's
    calibration table), so :func:`variance_interval` uses it only beyond :data:`BOOTSTRAP_WORK`.
    Returns ``(variance, low, high)``.
    """
    r = y.shape[0]
    variance = float(y.sum() / (r - 1))
    if variance == 0.0:
        return 0.0, 0.0, 0.0
    se_log = _log_se_of_variance(y)
    z = stats.norm.ppf(0.5 + level / 2)
    return variance, variance * float(np.exp(-z * se_log)), variance * float(np.exp(z * se_log))


def _log_se_of_variance(y, axis=-1, weights=None):
    """sd(y) / (mean(y) sqrt(R)) along ``axis`` (weighted by bootstrap counts when given)."""
    r = y.shape[axis]
    if weights is None:
        return y.std(axis, ddof=1) / (y.mean(axis) * np.sqrt(r))
    mean = (weights * y).sum(axis) / r
    var = (weights * (y - np.expand_dims(mean, axis)) ** 2).sum(axis) / (r - 1)
    return np.sqrt(var) / (mean * np.sqrt(r))


def variance_interval(estimates: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float, float]:
    r"""Estimate and ``level`` interval of the variance (trace of the covariance) of ``estimates``.

    ``estimates`` has shape ``(R,)`` or ``(R, p)``. The **bootstrap-t interval on the log scale**
    (Efron & Tibshirani 1993, ch. 12; Hall 1992, sec. 3.10): with :math:`y_r = \|g_r - \bar g\|^2`,
    :math:`\hat\sigma^2 = \sum_r y_r/(R-1)` and the kurtosis-adjusted standard error
    :math:`\hat s = \mathrm{sd}(y)/(\bar y\sqrt R)` of :math:`\log\hat\sigma^2` (the delta method;
    cf. Bonett 2006), the pivot :math:`t = (\log\hat\sigma^2 - \log\sigma^2)/\hat s` is resampled,
    :math:`t^*_b = (\log\hat\sigma^{2*}_b - \log\hat\sigma^2)/\hat s^*_b` over :data:`BOOTSTRAP`
    resamples of the R rows, and the interval is
    :math:`[\hat\sigma^2 e^{-t^*_{(1+\ell)/2}\hat s},\ \hat\sigma^2 e^{-t^*_{(1-\ell)/2}\hat s}]`.
    The resampled pivot carries the skewness of :math:`\log\hat\sigma^2` and the correlation of
    :math:`\hat s` with it, which the normal quantile ignores: where the sample kurtosis is low
    because the tail was not sampled, the variance is low too and the interval stretches upward.
    Measured over 2,000 seeds at R = 200 (docs/analysis.md, calibration), it covers at 0.94-0.97
    where the delta method covers at 0.89-0.95 (REINFORCE on ``gaussian-cos``, ``gaussian-exp``,
    the two-valued REINFORCE estimate on ``bernoulli-toy``). Resampling uses fixed seeds, so the
    interval is a deterministic function of the estimates.

    For a tensor parameter (the trace of a covariance, a sum of p variances, nearer normal) and
    where it would cost more than :data:`BOOTSTRAP_WORK` (``BOOTSTRAP`` x R), the delta-method
    interval (:func:`delta_variance_interval`) is used: on IWAE's and VIMCO's 20-coordinate
    encoder gradient on ``linear-gaussian-vae`` it covers at 0.94-0.95 where the bootstrap-t (the
    resampling written for tensors too) covered at 0.91 at R = 50 and 0.94 at R = 200 over 500 seeds;
    beyond R = 10^4 the delta method is calibrated (0.93-0.95 at R = 1000, closer as R grows).
    Returns ``(variance, low, high)``.
    """
    g = np.asarray(estimates, dtype=np.float64)
    g = g.reshape(g.shape[0], -1)
    r, p = g.shape
    c = g - g.mean(0)
    y = (c**2).sum(1)
    variance = float(y.sum() / (r - 1))
    if variance == 0.0:
        return 0.0, 0.0, 0.0
    if p > 1 or BOOTSTRAP * r > BOOTSTRAP_WORK:
        return delta_variance_interval(y, level)
    se = float(_log_se_of_variance(y))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    pivots = []
    chunk = max(1, CHUNK_ELEMENTS // r)
    for start in range(0, BOOTSTRAP, chunk):
        b = min(chunk, BOOTSTRAP - start)
        rows = rng.integers(0, r, (b, r)) + r * np.arange(b)[:, None]
        w = np.bincount(rows.ravel(), minlength=b * r).reshape(b, r).astype(np.float64)   # counts
        shift = w @ c / r                                                            # mean* - mean
        # ||g_r - mean*||^2 = y_r - 2 c_r . shift + ||shift||^2, for every resample
        y_star = y - 2 * shift @ c.T + (shift**2).sum(1, keepdims=True)
        var_star = (w * y_star).sum(1) / (r - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            pivots.append((np.log(var_star) - np.log(variance)) / _log_se_of_variance(y_star, weights=w))
    t = np.concatenate(pivots)
    t = t[np.isfinite(t)]        # a resample of one repeated row has no variance and no pivot
    if se == 0.0 or t.size < BOOTSTRAP // 2:
        return delta_variance_interval(y, level)
    t_low, t_high = np.quantile(t, [0.5 - level / 2, 0.5 + level / 2])
    # the pivot's quantiles straddle 0 all but always; where a lopsided resample distribution puts
    # both on one side, the interval is widened to hold the estimate it is an interval of
    with np.errstate(over="ignore"):
        low, high = variance * float(np.exp(-t_high * se)), variance * float(np.exp(-t_low * se))
    if not (np.isfinite(low) and np.isfinite(high)):
        # a degenerate pivot (estimates exact up to rounding: resampled variances of ~1e-14 whose
        # standard errors vanish faster) has no usable quantiles; the delta method's stays finite
        return delta_variance_interval(y, level)
    return variance, min(low, variance), max(high, variance)


def bias_z_scores(g: np.ndarray, truth: np.ndarray, se: np.ndarray) -> np.ndarray:
    r"""Per-coordinate z of the bias of the mean of ``g`` (R, p), with standard errors ``se`` (p,).

    Two statistics, both approximately N(0, 1) for an unbiased estimator: the plain
    :math:`z = (\bar g - t)/\mathrm{se}`, and Hall's (1992) skewness-corrected statistic
    (the monotone form of Johnson's 1978 modified t)

    .. math:: T = \sqrt R\,\big(\Delta + \hat\gamma\Delta^2/3 + \hat\gamma^2\Delta^3/27
              + \hat\gamma/(6R)\big),\qquad \Delta = (\bar g - t)/s,\quad \hat\gamma = \hat\mu_3/s^3,

    with :math:`s = \sqrt R\,\mathrm{se}` (the truth's and rounding's variances added to the
    estimates', which are taken as symmetric). The plain z's tail is too heavy on one side for
    skewed estimates (REINFORCE on ``gaussian-exp``: 0.6-0.7% of unbiased cells beyond 3 where 0.27%
    is nominal); Hall's corrects it but over-corrects where the skewness estimate itself is noisy
    (kurtosis 27 on ``gaussian-cos:k=2``, d/dscale: 1.0%). The reported z is the one of smaller
    magnitude: a coordinate is called biased only when both tests call it so, so the false-alarm
    rate is at most the smaller of the two (an intersection of rejection regions), and a real bias,
    which both see, is still found. Measured in docs/analysis.md's calibration table.
    """
    r = g.shape[0]
    mean = g.mean(0)
    bias = mean - truth
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        plain = np.where(se > 0, bias / se, np.where(bias == 0, 0.0, np.inf * np.sign(bias)))
        s = np.sqrt(r) * se
        gamma = np.where(s > 0, ((g - mean) ** 3).mean(0) / s**3, 0.0)
        delta = np.where(s > 0, bias / s, 0.0)
        hall = np.sqrt(r) * (delta + gamma * delta**2 / 3 + gamma**2 * delta**3 / 27 + gamma / (6 * r))
    hall = np.where(se > 0, hall, plain)
    return np.where(np.abs(hall) < np.abs(plain), hall, plain)


def summarise(estimates: np.ndarray, truth: np.ndarray, truth_se: np.ndarray, *,
              intervals: bool = True) -> dict[str, float]:
    """Row of statistics (:data:`SUMMARY_COLUMNS`) for ``estimates`` of shape ``(R, p)`` and
    ``truth``, ``truth_se`` of shape ``(p,)``. ``intervals=False`` leaves the variance interval
    out (NaN): the bootstrap costs 7 ms a row at R = 200, and asv's quality tracks never read it."""
    g = np.asarray(estimates, dtype=np.float64)
    r, p = g.shape
    t = np.asarray(truth, dtype=np.float64).reshape(p)
    ts = np.asarray(truth_se, dtype=np.float64).reshape(p)
    mean = g.mean(0)
    bias = mean - t
    var_d = g.var(0, ddof=1)
    se = np.sqrt(var_d / r + ts**2 + (ROUNDING * np.sqrt((g**2).mean(0)))**2)
    z = bias_z_scores(g, t, se)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr_d = np.where(var_d > 0, np.abs(mean) / np.sqrt(var_d), np.where(mean == 0, 0.0, np.inf))
    if p == 1:
        bias_z = float(z[0])
        bias_p = float(2 * stats.norm.sf(abs(bias_z)))
        scalar = lambda a: float(a[0])  # noqa: E731
    else:
        bias_p = bonferroni_p(z)
        bias_z = float(stats.norm.isf(bias_p / 2))
        scalar = lambda a: float(np.linalg.norm(a))  # noqa: E731
    if intervals:
        variance, low, high = variance_interval(g)
    else:
        variance, low, high = float(((g - mean) ** 2).sum() / (r - 1)), math.nan, math.nan
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
        "intervals_reliable": bool(r >= MIN_REPLICATES),
    }
