"""gradnoise.analysis.plot helpers and analysis.report tables, on a small synthetic sweep (no estimator runs)."""
from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.ticker import LogLocator, NullLocator
from scipy import stats

from gradnoise.analysis.fit import fit_curves
from gradnoise.analysis.plot import plot_all, plot_efficiency, plot_snr, plot_variance, problem_figure, slug
from gradnoise.analysis.report import NotMeasured, common_budget, not_measured, ranking_table, summary_markdown

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


def test_minor_ticks_and_fixed_titles_only_where_they_change_nothing(sweep):
    """The figure leaves out a log axis's minor ticks and fixes the titles at y = 1 (both cost
    layout time at every draw); a helper drawing on an axes whose style shows minor tick marks, or
    whose x tick labels are on top, keeps matplotlib's minor ticks and title placement."""
    df, fits = sweep
    fig = problem_figure(df, fits, "toy:k=1")                     # seaborn whitegrid: no tick marks
    fig.canvas.draw()
    for ax in fig.get_axes():
        assert all(isinstance(a.get_minor_locator(), NullLocator) for a in (ax.xaxis, ax.yaxis))
        assert ax.title.get_position()[1] == 1.0
    plt.close(fig)
    with plt.style.context("default"):                             # minor tick marks drawn
        fig, ax = plt.subplots()
        ax.xaxis.tick_top()                                        # x tick labels above the axes
        plot_variance(df[df.param == "loc"], fits, ax=ax)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert isinstance(ax.yaxis.get_minor_locator(), LogLocator)
        assert len(ax.yaxis.get_minorticklocs()) > 0
        # the title was moved up, clear of the tick labels on top
        assert ax.title.get_window_extent(renderer).y0 >= ax.xaxis.get_tightbbox(renderer).y1 - 0.5
    plt.close(fig)


def test_plot_all_in_processes_writes_what_one_process_writes(sweep, tmp_path):
    """Drawn by two processes, biggest figure first, the files and the order of the paths are
    those drawn one by one (PNG pixels equal)."""
    from PIL import Image

    df, fits = sweep
    small = df[(df.estimator == "good") & (df.param == "loc")].assign(problem="small:k=1")
    both = pd.concat([small, df], ignore_index=True)              # the small figure first, the big one second
    one = plot_all(both, fits, str(tmp_path / "one"), formats=("png",), workers=1)
    two = plot_all(both, fits, str(tmp_path / "two"), formats=("png",), workers=2)
    names = ["small_k-1.png", "toy_k-1.png"]
    assert [p.rsplit("/", 1)[1] for p in one] == [p.rsplit("/", 1)[1] for p in two] == names
    for a, b in zip(one, two):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


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
    assert notes == [NotMeasured("loo", "needs N >= 2"), NotMeasured("iwae", "needs a model problem")]
    text = summary_markdown(df, fits, {"toy:k=1": "figures/toy_k-1.png"}, budget=10, header="H")
    assert "## toy:k=1" in text and "![toy:k=1](figures/toy_k-1.png)" in text and "| 1 | 1 | good |" in text


# --- zero variance, a power law that does not fit, and why a cell was not measured (issue 16) -----

@pytest.fixture(scope="module")
def exact_sweep(sweep):
    """The sweep plus 'exact', an estimator with variance 0 at every N on 'loc' (the centred delta
    method on a quadratic cost) and at N >= 30 on 'scale' (SNR infinite there)."""
    df, _ = sweep
    exact = df[df.estimator == "good"].assign(estimator="exact")
    zero = (exact.param == "loc") | (exact.budget >= 30)
    exact.loc[zero, ["variance", "variance_ci_low", "variance_ci_high"]] = 0.0
    exact.loc[zero, "snr"] = np.inf
    out = pd.concat([df, exact], ignore_index=True)
    return out, fit_curves(out)


def _floor_marks(ax, label):
    """Budgets of the markers drawn with ``label`` at an edge of the axes (y in axes coordinates)."""
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(label)]
    return sorted(x for ln in lines for x in ln.get_xdata()), lines


def test_zero_variance_is_marked_at_the_axis_floor_without_warnings(exact_sweep):
    """A variance of 0 has no place on a log axis: it used to vanish from the figure without a word
    (and all-zero panels warned); now a triangle marks it at the lower edge (SNR infinite: upper)."""
    df, fits = exact_sweep
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig, (a1, a2, a3) = plt.subplots(1, 3)
        plot_variance(df, fits, ax=a1)
        plot_snr(df, fits, ax=a2)
        plot_efficiency(df, ax=a3)
        fig.canvas.draw()
    exact = df[(df.estimator == "exact") & (df.variance == 0)]
    for ax, label, edge in ((a1, "variance 0", 0.0), (a2, "SNR ∞", 1.0), (a3, "variance 0", 0.0)):
        xs, lines = _floor_marks(ax, label)
        assert xs == sorted(exact.budget), label
        for line in lines:
            # x in data coordinates, y in axes coordinates (0: lower edge, 1: upper edge)
            assert all(y == edge for y in line.get_ydata())
            assert line.get_transform().contains_branch_seperately(ax.transData) == (True, False)
    # a panel where every point is 0 still draws, with its markers, and warns nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig2, ax = plt.subplots()
        plot_variance(df[(df.estimator == "exact") & (df.param == "loc")], fits, ax=ax)
        fig2.canvas.draw()
    assert _floor_marks(ax, "variance 0")[0] == list(BUDGETS)
    plt.close(fig)
    plt.close(fig2)


def test_summary_reports_zero_variance_points(exact_sweep):
    df, fits = exact_sweep
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = summary_markdown(df, fits, {}, budget=10, header="H")
    line = next(ln for ln in text.splitlines() if ln.startswith("Variance exactly 0"))
    assert "exact / loc at every N" in line and "exact / scale at N = 30, 100" in line
    assert "left out of the fits" in line


def test_summary_says_when_the_power_law_does_not_fit_and_stars_nothing(sweep):
    """A variance that levels off (1/N + 0.05, 2% errors) fails the chi2 test: no star on its b."""
    df, _ = sweep
    floor = df[df.estimator == "bad"].assign(estimator="floor")
    floor["variance"] = 1.0 / floor.budget + 0.05
    floor["variance_ci_low"], floor["variance_ci_high"] = floor.variance * np.exp(-Z * 0.02), floor.variance * np.exp(Z * 0.02)
    df = pd.concat([df, floor], ignore_index=True)
    fits = fit_curves(df)
    assert fits.loc[fits.estimator == "floor", "power_law_misfit"].all()
    text = summary_markdown(df, fits, {}, budget=10, header="H")
    row = next(ln for ln in text.splitlines() if "| floor |" in ln and ln.startswith("| "))
    assert "*" not in row and "†" in row
    assert "† the power law does not fit" in text
    slope = [ln for ln in text.splitlines() if ln.startswith("| floor | loc |")][0]
    assert "does not fit" in slope


def test_not_measured_gives_each_skip_its_one_real_reason():
    """vimco on a plain problem used to be listed under 'needs N >= 2' (the first check at N = 1)
    as well as 'needs a model problem', and reinforce-loo as not measured although it was measured
    at N = 10: now each estimator has one reason, and one measured at other N says at which N not."""
    import gradnoise as gn

    skipped = []
    grid = gn.engine.cells(["gaussian-quadratic", "linear-gaussian-vae"], ["reinforce", "reinforce-loo", "vimco", "iwae"],
                           [1, 10], on_invalid="skip", skipped=skipped)
    rows = [{"problem": p.spec, "estimator": e.name, "param": "x", "budget": n, "replicates": 500, "variance": 1.0 / n,
             "variance_ci_low": 0.9 / n, "variance_ci_high": 1.1 / n, "snr": 1.0, "seconds_per_estimate": 1e-5}
            for p, e, n in grid]
    df = pd.DataFrame(rows)
    quad, vae = df.problem.unique()
    notes = {(n.estimator, n.budgets): n.reason for n in not_measured(skipped, quad, df)}
    assert notes == {("vimco", None): "needs a model problem (a log joint and an encoder)",
                     ("iwae", None): "needs a model problem (a log joint and an encoder)",
                     ("reinforce-loo", (1,)): "needs an integer budget N >= 2"}
    assert {(n.estimator, n.budgets) for n in not_measured(skipped, vae, df)} == {("reinforce-loo", (1,)), ("vimco", (1,))}
    text = summary_markdown(df, fit_curves(df), {}, budget=10, header="H", skipped=skipped)
    section = text.split(f"## {quad}")[1].split("## ")[0]
    assert "Not measured: vimco, iwae (needs a model problem (a log joint and an encoder))." in section
    assert "Not measured at N = 1: reinforce-loo (needs an integer budget N >= 2); measured at the other budgets." in section
    assert section.count("vimco") == 1


def test_the_plot_command_reads_fits_with_an_exact_estimators_empty_power_law(exact_sweep, tmp_path):
    """A fit of variance 0 at every N has no a, b (nothing to fit): `gradnoise plot --fits` read the
    report's own fits.csv as a truncated file; an empty a in a fit that has points still is."""
    from gradnoise.analysis.cli import main

    df, fits = exact_sweep
    assert fits["a"].isna().any()                   # the exact estimator's loc: variance 0 at every N
    df.to_csv(tmp_path / "sweep.csv", index=False)
    fits.to_csv(tmp_path / "fits.csv", index=False)
    assert main(["plot", str(tmp_path / "sweep.csv"), "--fits", str(tmp_path / "fits.csv"),
                 "--out-dir", str(tmp_path / "figures"), "--format", "png"]) == 0
    assert len(list((tmp_path / "figures").glob("*.png"))) == df["problem"].nunique()
    # negative control: a column that may not be empty still may not
    fits.assign(problem=None).to_csv(tmp_path / "broken.csv", index=False)
    assert main(["plot", str(tmp_path / "sweep.csv"), "--fits", str(tmp_path / "broken.csv"),
                 "--out-dir", str(tmp_path / "figures2")]) == 2
