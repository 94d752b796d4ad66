"""gradnoise.analysis.fit: power-law fits recover known exponents, and their intervals cover at the stated rate."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

import gradnoise as gn
from gradnoise.analysis.fit import FIT_COLUMNS, GOF_P_MIN, fit_curves, fit_power_law
from gradnoise.statistics import delta_variance_interval  # the engine's at R > 10^4; the bootstrap-t costs 0.1 s a point at R = 1000

BUDGETS = np.array([1, 3, 10, 30, 100, 300])
TRUE_A, TRUE_B = 5.0, -0.8
R = 1000            # draws behind each variance estimate, as in a sweep cell
M = 1000            # synthetic data sets per noise family
Z95 = stats.norm.ppf(0.975)


def noise(kind: str, rng, size):
    """Unit-variance draws: Gaussian (kurtosis 3) or centred exponential (kurtosis 9, REINFORCE-like)."""
    if kind == "normal":
        return rng.standard_normal(size)
    return rng.exponential(size=size) - 1.0


def synthetic_points(kind: str, rng):
    """One data set as a sweep would measure it: R draws per budget with variance a N^b, summarised
    by the engine's own variance estimate and interval (so the noise is that of real estimates)."""
    v, s = [], []
    for n in BUDGETS:
        g = np.sqrt(TRUE_A * n**TRUE_B) * noise(kind, rng, R)
        var, lo, hi = delta_variance_interval((g - g.mean()) ** 2)
        v.append(var)
        s.append((np.log(hi) - np.log(lo)) / (2 * Z95))
    return np.array(v), np.array(s)


def birge_coverage(dof: int, level: float = 0.95) -> float:
    """Coverage of a Wald interval whose covariance is scaled by max(1, chi2/dof), exact weights:
    E_c[P(|Z| < z sqrt(max(1, c/dof)))] with c ~ chi2(dof) independent of Z."""
    z = stats.norm.ppf(0.5 + level / 2)
    f = lambda c: (2 * stats.norm.cdf(z * np.sqrt(max(1.0, c / dof))) - 1) * stats.chi2.pdf(c, dof)  # noqa: E731
    return integrate.quad(f, 0, dof)[0] + integrate.quad(f, dof, np.inf)[0]


@pytest.fixture(scope="module")
def coverage():
    """Coverage counts of b and a, per noise family, for the default (misfit-scaled) and plain fits."""
    rng = np.random.default_rng(20261125)
    out = {}
    for kind in ("normal", "exponential"):
        hits = {(m, p): 0 for m in ("scaled", "plain") for p in ("a", "b")}
        for _ in range(M):
            v, s = synthetic_points(kind, rng)
            for method, scale in (("scaled", True), ("plain", False)):
                f = fit_power_law(BUDGETS, v, s, scale_by_misfit=scale)
                hits[method, "b"] += f["b_ci_low"] <= TRUE_B <= f["b_ci_high"]
                hits[method, "a"] += f["a_ci_low"] <= TRUE_A <= f["a_ci_high"]
        out[kind] = hits
    return out


def not_rejected(k: int, p: float, alternative: str = "two-sided") -> bool:
    """k hits out of M are consistent with rate p (exact binomial test at the 0.1% level)."""
    return stats.binomtest(k, M, p, alternative=alternative).pvalue > 1e-3


@pytest.mark.parametrize("param", ["a", "b"])
def test_plain_wls_intervals_cover_at_nominal_rate_with_gaussian_noise(coverage, param):
    k = coverage["normal"]["plain", param]
    assert not_rejected(k, 0.95), f"coverage {k / M:.3f} of {param}"


@pytest.mark.parametrize("param", ["a", "b"])
def test_default_intervals_cover_as_predicted_with_gaussian_noise(coverage, param):
    # the chi2/dof scale factor is applied whenever chi2 > dof, so with exact weights the
    # coverage is the computable Birge value (about 0.962 for 6 points), not below nominal
    k = coverage["normal"]["scaled", param]
    assert not_rejected(k, birge_coverage(len(BUDGETS) - 2)), f"coverage {k / M:.3f} of {param}"


@pytest.mark.parametrize("param", ["a", "b"])
def test_default_intervals_are_not_below_nominal_with_heavy_tailed_noise(coverage, param):
    # heavy tails make the per-point standard errors noisy; the scale factor keeps coverage near
    # nominal (between 0.95 and the Birge value) where plain WLS intervals would under-cover
    k = coverage["exponential"]["scaled", param]
    assert not_rejected(k, 0.95, "less"), f"coverage {k / M:.3f} of {param}"
    assert not_rejected(k, birge_coverage(len(BUDGETS) - 2), "greater"), f"coverage {k / M:.3f} of {param}"


def test_exact_power_law_is_recovered_exactly():
    s = np.full(BUDGETS.size, 0.05)
    y = TRUE_A * BUDGETS**TRUE_B * np.exp(-(s**2) / 2)  # undo the bias correction exactly
    f = fit_power_law(BUDGETS, y, s)
    assert f["a"] == pytest.approx(TRUE_A, rel=1e-9)
    assert f["b"] == pytest.approx(TRUE_B, abs=1e-9)
    assert f["r2"] == pytest.approx(1.0)
    assert f["chi2"] == pytest.approx(0.0, abs=1e-12) and f["scale_factor"] == 1.0


def test_too_few_points_give_nan_not_an_error():
    f = fit_power_law([10], [1.0], [0.1])
    assert f["n_points"] == 1 and np.isnan(f["b"])
    f = fit_power_law([10, 10], [1.0, 2.0], [0.1, 0.1])
    assert np.isnan(f["b"])


def _frame(budgets, variances, se_log, snr, estimator="est"):
    z = Z95
    return pd.DataFrame({
        "problem": "synthetic", "estimator": estimator, "param": "theta", "budget": budgets,
        "replicates": R, "variance": variances, "variance_ci_low": variances * np.exp(-z * se_log),
        "variance_ci_high": variances * np.exp(z * se_log), "snr": snr, "seconds_per_estimate": 1e-5,
    })


def test_fit_curves_columns_and_flag():
    rng = np.random.default_rng(3)
    se = np.full(BUDGETS.size, 0.045)
    frames = []
    for name, b in (("iid", -1.0), ("slow", -0.5)):
        v = 2.0 * BUDGETS**b * np.exp(rng.normal(0.0, se))
        frames.append(_frame(BUDGETS, v, se, 0.7 / np.sqrt(v), name))  # SNR = c N^(-b/2)
    fits = fit_curves(pd.concat(frames))
    assert list(fits.columns) == FIT_COLUMNS
    by = fits.set_index("estimator")
    assert by.at["iid", "b_ci_low"] <= -1 <= by.at["iid", "b_ci_high"]
    assert not by.at["iid", "b_differs_from_minus_one"] and not by.at["iid", "d_differs_from_half"]
    assert by.at["slow", "b_differs_from_minus_one"] and by.at["slow", "b_p_minus_one"] < 1e-6
    assert by.at["slow", "d_ci_low"] <= 0.25 <= by.at["slow", "d_ci_high"] and by.at["slow", "d_differs_from_half"]
    assert (by["n_points"] == BUDGETS.size).all()


def test_fit_curves_rejects_results_without_variance_columns():
    with pytest.raises(ValueError, match="variance_ci_low"):
        fit_curves(pd.DataFrame({"problem": ["p"], "estimator": ["e"], "param": ["x"], "budget": [1],
                                 "replicates": [10], "variance": [1.0], "snr": [1.0]}))


def test_real_gaussian_quadratic_sweep_gives_minus_one_for_iid_estimators():
    """reparam and reinforce are i.i.d. averages: Var = sigma^2/N exactly, so b = -1 must lie in
    the interval. Four fits are checked at once, so each uses a Bonferroni level 1 - 0.05/4."""
    df = gn.measure("gaussian-quadratic", ["reinforce", "reparam"], list(map(int, BUDGETS)),
                    replicates=1000, seed=0)
    fits = fit_curves(df, level=1 - 0.05 / 4)
    assert len(fits) == 4
    for r in fits.itertuples():
        assert r.b_ci_low <= -1 <= r.b_ci_high, (r.estimator, r.param, r.b, r.b_ci_low, r.b_ci_high)
        assert not r.b_differs_from_minus_one
        assert r.n_points == BUDGETS.size and r.r2 > 0.99


# --- impossible statistics, zero variance, a power law that does not fit (issue 16) ---------------

def _sweep_frame(rng, estimators=(("iid", -1.0),), se=0.05):
    frames = []
    s = np.full(BUDGETS.size, se)
    for name, b in estimators:
        v = 2.0 * BUDGETS**b * np.exp(rng.normal(0.0, s))
        frames.append(_frame(BUDGETS, v, s, 0.7 / np.sqrt(v), name).assign(mse=v, truth=0.7))
    return pd.concat(frames, ignore_index=True)


def _spoil(df, column, row):
    """Make row ``row`` of ``df`` impossible in ``column`` (a negative value, or an inverted interval)."""
    df = df.copy()
    if column == "variance_ci_low":          # the interval's ends swapped
        low, high = df.at[row, "variance_ci_low"], df.at[row, "variance_ci_high"]
        df.at[row, "variance_ci_low"], df.at[row, "variance_ci_high"] = high, low
    elif column == "replicates":             # a sample variance needs R >= 2
        df.at[row, column] = 1
    else:
        df.loc[row, column] = -abs(df.loc[row, column]) - 0.5
    return df


@pytest.mark.parametrize("column", ["variance", "variance_ci_low", "variance_ci_high", "mse", "snr", "replicates"])
def test_impossible_statistics_in_a_results_csv_are_one_line(column, tmp_path, capsys):
    """A negative variance (or MSE, SNR, R) or an inverted interval used to be dropped without a word
    (fit got 0 points and b = NaN); now the file is refused naming the file, the column and the row."""
    from gradnoise.analysis.cli import main

    df = _spoil(_sweep_frame(np.random.default_rng(1)), column, 3)
    path, out = tmp_path / "sweep.csv", tmp_path / "fits.csv"
    df.to_csv(path, index=False)
    assert main(["fit", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gradnoise fit: error: results CSV {path}: column ") and "\n" not in err
    assert "in row 5" in err                    # row 3 of the frame is line 5 of the file (header first)
    assert repr(column) in err
    assert not out.exists()
    with pytest.raises(ValueError, match="index 3"):  # the library refuses the same rows
        fit_curves(df)


def test_zero_variance_points_are_left_out_of_fits_and_counted():
    """An exact estimator (variance 0 at some or every N: the centred delta method on a quadratic
    cost, DisARM on one Bernoulli at theta = 0) has no logarithm: the point is left out of both fits,
    counted in ``zero_variance_points``, and nothing warns."""
    rng = np.random.default_rng(2)
    df = _sweep_frame(rng, (("some", -1.0), ("all", -1.0)))
    some = (df.estimator == "some") & df.budget.isin([100, 300])
    everywhere = df.estimator == "all"
    df.loc[some | everywhere, ["variance", "variance_ci_low", "variance_ci_high", "mse"]] = 0.0
    df.loc[some | everywhere, "snr"] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fits = fit_curves(df).set_index("estimator")
    assert set(fits.reset_index().columns) == set(FIT_COLUMNS)
    assert fits.at["some", "zero_variance_points"] == 2 and fits.at["all", "zero_variance_points"] == BUDGETS.size
    assert fits.at["some", "n_points"] == BUDGETS.size - 2 and fits.at["some", "snr_n_points"] == BUDGETS.size - 2
    assert fits.at["some", "b_ci_low"] <= -1 <= fits.at["some", "b_ci_high"]
    assert fits.at["all", "n_points"] == 0 and np.isnan(fits.at["all", "b"]) and np.isnan(fits.at["all", "d"])


def test_real_zero_variance_sweep_fits_without_warnings():
    """DisARM on bernoulli-toy at theta = 0 is exact: the engine's own rows have variance 0."""
    df = gn.measure("bernoulli-toy", ["disarm", "reinforce"], [1, 10, 100], replicates=200, seed=0)
    assert (df.loc[df.estimator == "disarm", "variance"] == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fits = fit_curves(df).set_index("estimator")
    assert fits.at["disarm", "zero_variance_points"] == 3 and fits.at["reinforce", "zero_variance_points"] == 0


def test_a_power_law_that_does_not_fit_is_flagged_and_claims_nothing():
    """Var(N) = 1/N + 0.05 (a floor) with 2% errors is no power law: chi2 p < GOF_P_MIN, so the fit
    says so (``power_law_misfit``) and makes no claim about b, however far its slope is from -1."""
    s = np.full(BUDGETS.size, 0.02)
    v = (1.0 / BUDGETS + 0.05) * np.exp(np.random.default_rng(4).normal(0.0, s))
    frames = [_frame(BUDGETS, v, s, 0.7 / np.sqrt(v), "floor"),
              _frame(BUDGETS, 2.0 / BUDGETS * np.exp(np.random.default_rng(5).normal(0.0, s)), s, 1.0, "iid"),
              _frame(BUDGETS, 2.0 * BUDGETS**-0.5 * np.exp(np.random.default_rng(6).normal(0.0, s)), s, 1.0, "slow")]
    fits = fit_curves(pd.concat(frames)).set_index("estimator")
    assert fits.at["floor", "gof_p"] < GOF_P_MIN and fits.at["floor", "power_law_misfit"]
    assert fits.at["floor", "b_p_minus_one"] < 1e-6 and not fits.at["floor", "b_differs_from_minus_one"]
    for name in ("iid", "slow"):                  # power laws: fitted, tested as before
        assert fits.at[name, "gof_p"] > 1e-3 and not fits.at[name, "power_law_misfit"]
    assert fits.at["slow", "b_differs_from_minus_one"] and not fits.at["iid", "b_differs_from_minus_one"]
