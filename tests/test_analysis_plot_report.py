"""gradnoise.analysis.plot helpers and analysis.report tables, on a small synthetic sweep (no estimator runs)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gradnoise.analysis.fit import fit_curves
from gradnoise.analysis.plot import plot_efficiency, plot_snr, plot_variance, problem_figure, slug
from gradnoise.analysis.report import common_budget, not_measured, ranking_table, summary_markdown

BUDGETS = np.array([1, 3, 10, 30, 100])
Z = stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def sweep():
    """Two estimators x two params; 'good' has 10x lower variance and is 2x slower."""
    rng = np.random.default_rng(0)
    rows = []
    for est, scale, secs in (("good", 0.1, 2e-5), ("bad", 1.0, 1e-5)):
        for param in ("loc", "scale"):
            for n in BUDGETS:
                v = scale / n * np.exp(rng.normal(0, 0.05))
                rows.append({"problem": "toy:k=1", "estimator": est, "param": param, "budget": n, "replicates": 500,
                             "variance": v, "variance_ci_low": v * np.exp(-Z * 0.05), "variance_ci_high": v * np.exp(Z * 0.05),
                             "snr": np.sqrt(n / scale) * 0.3, "seconds_per_estimate": secs * n, "bias_z": 0.5})
    df = pd.DataFrame(rows)
    return df, fit_curves(df)


def test_plot_variance_draws_on_the_given_axes(sweep):
    df, fits = sweep
    fig, ax = plt.subplots()
    assert plot_variance(df[df.param == "loc"], fits, ax=ax) is ax
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel().startswith("budget N") and "variance" in ax.get_ylabel() and ax.get_title()
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(lab for lab in labels if not lab.startswith("fit")) == ["bad", "good"]
    assert sum(lab.startswith("fit b = ") for lab in labels) == 2      # one fitted line per estimator
    assert len(ax.collections) == 2                                     # one CI band per estimator
    plt.close(fig)


def test_snr_and_efficiency_helpers(sweep):
    df, fits = sweep
    fig, (a1, a2) = plt.subplots(1, 2)
    plot_snr(df, fits, ax=a1)
    plot_efficiency(df, ax=a2)
    assert "SNR" in a1.get_ylabel() and "seconds" in a2.get_ylabel()
    assert sum(lab.startswith("fit d = ") for lab in a1.get_legend_handles_labels()[1]) == 4
    plt.close(fig)


def test_problem_figure_has_a_row_per_param_and_legends_outside(sweep):
    df, fits = sweep
    fig = problem_figure(df, fits, "toy:k=1")
    axes = fig.get_axes()
    assert len(axes) == 6
    for ax in axes:
        legend = ax.get_legend()
        assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1
    plt.close(fig)
    assert slug("gaussian-cos:k=5,loc=1") == "gaussian-cos_k-5-loc-1"


def test_ranking_table_orders_by_total_variance_and_efficiency(sweep):
    df, fits = sweep
    table = ranking_table(df, fits, "toy:k=1", 10)
    assert list(table["estimator"]) == ["good", "bad"]
    assert list(table["rank (variance)"]) == [1, 2]
    # efficiency = total variance x seconds at N=10: good 0.02 x 2e-4 s = 4e-6 < bad 0.2 x 1e-4 s = 2e-5
    assert list(table["rank (efficiency)"]) == [1, 2]
    row = table.iloc[0]
    assert row["total variance"] == pytest.approx(df[(df.estimator == "good") & (df.budget == 10)]["variance"].sum())
    assert row["Var loc [95% CI]"].count("[") == 1 and row["b loc"].startswith("-1.0")


def test_common_budget_and_skip_notes(sweep):
    df, fits = sweep
    assert common_budget(df, "toy:k=1", 100) == 100
    assert common_budget(df[~((df.estimator == "bad") & (df.budget == 100))], "toy:k=1", 100) == 30
    notes = not_measured(["toy:k=1 x loo: estimator 'loo' needs N >= 2, got 1",
                          "toy:k=1 x iwae: estimator 'iwae' needs a model problem; 'toy' is plain",
                          "other x iwae: estimator 'iwae' needs a model problem; 'other' is plain"], "toy:k=1")
    assert notes == {"needs N >= 2, got 1": ["loo"], "needs a model problem": ["iwae"]}
    text = summary_markdown(df, fits, {"toy:k=1": "figures/toy_k-1.png"}, budget=10, header="H")
    assert "## toy:k=1" in text and "![toy:k=1](figures/toy_k-1.png)" in text and "| 1 | 1 | good |" in text
