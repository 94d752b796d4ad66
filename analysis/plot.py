r"""Seaborn figures of a sweep: variance, SNR and efficiency against the budget N.

Reusable helpers (each draws on one matplotlib ``Axes`` and returns it; pass ``ax`` to place
them in your own figures):

* :func:`plot_variance` - Var(N) on log-log axes, one line per estimator (and line style per
  param), the 95% interval of each point as a band, and the fitted power law
  :math:`a N^b` of :func:`gradnoise.analysis.fit.fit_curves` as a dashed line with b in the legend.
* :func:`plot_snr` - SNR(N) = |mean|/std on log-log axes, with the fitted :math:`c N^d`.
* :func:`plot_efficiency` - variance x seconds per estimate against N: the cost, in seconds, of
  reaching unit variance (variance ``v`` from one estimate taking ``t`` s; averaging m estimates
  costs ``m t`` s for variance ``v/m``, so ``v t`` is the seconds-times-variance product, lower is
  better, and it is flat in N for an i.i.d. estimator with linear cost).
* :func:`problem_figure` - the three panels for one problem (a row per param), legend outside.
* :func:`plot_all` - one PNG and one SVG per problem into a folder; ``gradnoise plot`` runs it.

A variance of exactly 0 (an exact estimator: the centred delta method on a quadratic cost, DisARM
on one Bernoulli at theta = 0) has no place on a log axis, and its SNR is infinite. Such a point is
drawn as a downward triangle on the lower edge of the variance and efficiency panels and an
upward triangle on the upper edge of the SNR panel, in the estimator's colour, at its N, with its
own legend entry ("variance 0 (exact): name", "SNR ∞ (variance 0): name"); the fits leave it out
(:func:`gradnoise.analysis.fit.fit_curves`' ``zero_variance_points``).
"""
from __future__ import annotations

import argparse
import os
import re

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter, NullLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

import gradnoise as gn  # noqa: E402

from .fit import at_snr_floor, snr_floor  # noqa: E402
from .results import FITS_MAY_BE_EMPTY, FITS_REQUIRED, read_csv  # noqa: E402

X_LABEL = "budget N (samples per estimate; K for iwae)"
PANELS = ("variance", "snr", "efficiency")
#: zlib level of the PNGs (Pillow's default is 6; 3 gives the same pixels in files of about the
#: same size, in about two thirds of the encoding time)
PNG_COMPRESS_LEVEL = 3


#: colours of maximum contrast (Kelly 1965), in the order estimators are registered; families sit
#: apart (score function in reds, purples and pinks; pathwise in blues; IWAE in greens; ...)
COLOURS = ("#BE0032", "#F38400", "#875692", "#E68FAC", "#0067A5", "#008856", "#8DB600", "#2B3D26",
           "#882D17", "#A1CAF1", "#F99379", "#604E97", "#C2B280", "#654522", "#F6A600", "#848482",
           "#B3446C", "#DCD300", "#E25822", "#222222")
MARKERS = ("o", "s", "D", "^", "v", "<", ">", "p", "h", "*", "X", "P", "d", "8")


def estimator_style(name: str) -> tuple[str, str]:
    """The colour and marker of an estimator, the same in every figure and study.

    Registered estimators take :data:`COLOURS` and :data:`MARKERS` in registry order (an
    estimator with options, ``reinforce-ema:beta=0.99``, shares its base name's colour); any
    other name gets a stable pick from its hash. Colour and marker cycle at different lengths,
    so no two of the first 140 estimators share both.
    """
    base = name.split(":", 1)[0]
    names = gn.estimator_names()
    index = names.index(base) if base in names else len(names) + int.from_bytes(base.encode()[:4] or b"0", "little")
    return COLOURS[index % len(COLOURS)], MARKERS[index % len(MARKERS)]


def palette(estimators) -> dict:
    """``{estimator: colour}`` for the given names (:func:`estimator_style`)."""
    return {name: estimator_style(name)[0] for name in set(estimators)}


def _style(ax, title, ylabel):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())   # minor labels crowd a log axis and cost time
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(ylabel)
    # with the x tick labels and label below the axes, matplotlib's automatic title placement
    # (which measures both axes' tick labels at every draw) leaves the title at y = 1: say so
    below = ax.xaxis.get_label_position() == "bottom" and not ax.xaxis.majorTicks[0].label2.get_visible()
    ax.set_title(title, **({"y": 1.0} if below else {}))
    ax.grid(True, which="major", alpha=0.3)
    for axis in (ax.xaxis, ax.yaxis):
        # a log axis has up to 8 minor ticks a decade; where they draw nothing (no mark, no grid
        # line, no label: seaborn's whitegrid) they only cost layout time, so there are none
        tick = axis.minorTicks[0]
        if not (tick.tick1line.get_visible() or tick.tick2line.get_visible() or tick.gridline.get_visible()):
            axis.set_minor_locator(NullLocator())


def _fit_line(ax, sub, fit, coef, expo, colour, x="budget", label=None):
    n = np.geomspace(sub[x].min(), sub[x].max(), 50)
    ax.plot(n, fit[coef] * n ** fit[expo], linestyle="--", linewidth=1, color=colour, label=label)


def _edge_marks(ax, results, y, colours, label_of, edges):
    """Points whose ``y`` is 0 or infinite, which a log axis cannot show, as triangles on the axes'
    lower (0) or upper (inf) edge at their N; ``edges`` maps 0 / inf to the legend text."""
    at_edge = blended_transform_factory(ax.transData, ax.transAxes)      # x in data, y in axes units
    for value, text in edges.items():
        rows = results[results[y] == value]
        for (est, param), sub in rows.groupby(["estimator", "param"], sort=True):
            ax.plot(np.sort(sub["budget"].to_numpy()), np.full(len(sub), 0.0 if value == 0 else 1.0),
                    transform=at_edge, linestyle="none", marker="v" if value == 0 else "^", markersize=7,
                    color=colours[est], markeredgecolor="black", markeredgewidth=0.5, clip_on=False, zorder=4,
                    label=f"{text}: {label_of(est, param)}")


def _fit_rows(fits: pd.DataFrame | None, problems) -> dict:
    """``{(problem, estimator, param): row}`` of ``fits`` for ``problems`` (the first row of each
    key), looked up once per panel rather than by filtering ``fits`` for every line."""
    if fits is None or not len(fits):
        return {}
    f = fits[fits["problem"].isin(problems)].drop_duplicates(["problem", "estimator", "param"])
    return {(row["problem"], row["estimator"], row["param"]): row for _, row in f.iterrows()}


def _lines(results, fits, ax, y, lo, hi, coef, expo, colours, title, ylabel, sym, edges=None):
    ax = ax or plt.gca()
    df = results[np.isfinite(results[y]) & (results[y] > 0)]
    colours = colours or palette(results["estimator"])
    params = sorted(df["param"].unique())
    if edges:
        every = sorted(results["param"].unique())
        _edge_marks(ax, results, y, colours, lambda est, param: est if len(every) == 1 else f"{est} / {param}", edges)
    dashes = dict(zip(params, ["-", ":", "-.", (0, (3, 1, 1, 1))] * 4))
    fit_of = _fit_rows(fits, df["problem"].unique())
    for (est, param), sub in df.groupby(["estimator", "param"], sort=True):
        sub = sub.sort_values("budget")
        label = est if len(params) == 1 else f"{est} / {param}"
        budget = sub["budget"].to_numpy()
        ax.plot(budget, sub[y].to_numpy(), marker=estimator_style(est)[1], markersize=4, color=colours[est],
                linestyle=dashes[param], label=label)
        if lo is not None:
            ax.fill_between(budget, sub[lo].to_numpy(), sub[hi].to_numpy(), color=colours[est], alpha=0.3,
                            linewidth=0.6)
        fr = fit_of.get((sub["problem"].iloc[0], est, param))
        if fr is not None and np.isfinite(fr[coef]) and np.isfinite(fr[expo]):
            ci = (f" [{fr[expo + '_ci_low']:.2f}, {fr[expo + '_ci_high']:.2f}]"
                  if expo + "_ci_low" in fr and np.isfinite(fr[expo + "_ci_low"]) else "")
            _fit_line(ax, sub, fr, coef, expo, colours[est], label=f"fit {sym} = {fr[expo]:.2f}{ci}")
    _style(ax, title, ylabel)
    if df.empty:       # nothing a log axis can show (e.g. variance 0 at every N): a nominal range, said so
        ax.set_ylim(0.1, 10)
        ax.yaxis.set_major_formatter(NullFormatter())
        ax.text(0.5, 0.5, f"no positive finite {y} to draw;\nmarks at the edges", transform=ax.transAxes,
                ha="center", va="center", fontsize=8, color="grey")
    return ax


def plot_variance(results: pd.DataFrame, fits: pd.DataFrame | None = None, ax=None, *, colours=None, title=None):
    """Variance of the N-sample estimate vs N (log-log) with 95% CI bands and fitted a·N^b."""
    return _lines(results, fits, ax, "variance", "variance_ci_low", "variance_ci_high", "a", "b", colours,
                  title or "Variance vs budget", "variance of estimate (grad units², trace)", "b",
                  edges={0.0: "variance 0 (exact)"})


def plot_snr(results: pd.DataFrame, fits: pd.DataFrame | None = None, ax=None, *, colours=None, title=None):
    r"""SNR = |mean| / std of the N-sample estimate vs N (log-log), with the fitted c·N^d.

    Points at the noise floor (:func:`gradnoise.analysis.fit.at_snr_floor`: their true SNR is too small for
    R replicates to measure) are drawn hollow, and the floor :math:`\sqrt{2/\pi}/\sqrt R` as a grey
    line: such points measure R, not the estimator, and the fit leaves them out.
    """
    ax = _lines(results, fits, ax, "snr", None, None, "c", "d", colours,
                title or "Signal-to-noise ratio vs budget", "SNR |mean|/std (dimensionless)", "d",
                edges={np.inf: "SNR ∞ (variance 0)", 0.0: "SNR 0 (mean and variance 0)"})
    floor = results[at_snr_floor(results) & np.isfinite(results["snr"]) & (results["snr"] > 0)]
    if len(floor):
        colours = colours or palette(results["estimator"])
        ax.scatter(floor["budget"], floor["snr"], s=36, facecolors="white",
                   edgecolors=[colours[e] for e in floor["estimator"]], zorder=3, label="at noise floor (not fitted)")
        for r in sorted(results["replicates"].unique()):
            ax.axhline(float(snr_floor(r)), color="grey", linestyle=":", linewidth=1,
                       label=f"noise floor √(2/π)/√R, R = {int(r)}")
    return ax


def plot_efficiency(results: pd.DataFrame, ax=None, *, colours=None, title=None):
    """Variance x seconds per estimate vs N (log-log), with the variance interval scaled alike."""
    df = results.assign(efficiency=results["variance"] * results["seconds_per_estimate"],
                        efficiency_low=results["variance_ci_low"] * results["seconds_per_estimate"],
                        efficiency_high=results["variance_ci_high"] * results["seconds_per_estimate"])
    return _lines(df, None, ax, "efficiency", "efficiency_low", "efficiency_high", "a", "b", colours,
                  title or "Efficiency (lower is better)", "variance × seconds per estimate (grad² · s)", "",
                  edges={0.0: "variance 0 (exact)"})


def problem_figure(results: pd.DataFrame, fits: pd.DataFrame | None, problem: str, *, colours=None):
    """Figure for one problem: a row per param, columns variance / SNR / efficiency; legend outside."""
    df = results[results["problem"] == problem]
    if df.empty:
        raise ValueError(f"no rows for problem {problem!r}")
    params = sorted(df["param"].unique())
    colours = colours or palette(results["estimator"])
    sns.set_theme(style="whitegrid", context="notebook")
    height = 4.2 * len(params) + 0.8
    fig, axes = plt.subplots(len(params), 3, figsize=(21, height), squeeze=False)
    for i, param in enumerate(params):
        sub = df[df["param"] == param]
        plot_variance(sub, fits, axes[i, 0], colours=colours, title=f"Variance vs N — param {param}")
        plot_snr(sub, fits, axes[i, 1], colours=colours, title=f"SNR vs N — param {param}")
        plot_efficiency(sub, axes[i, 2], colours=colours, title=f"Efficiency vs N — param {param}")
        for j in range(3):
            handles, labels = axes[i, j].get_legend_handles_labels()
            axes[i, j].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                              frameon=False, title="estimator / fit" if j < 2 else "estimator")
    fig.suptitle(f"{problem}: R = {int(df['replicates'].iloc[0])} replicates per point, bands = 95% CI of the variance, "
                 "dashed = weighted log-log power-law fit", fontsize=11)
    # fixed margins (tight_layout's text measuring took most of a figure's time): room between
    # the panels for the legends outside them, and for the suptitle
    fig.subplots_adjust(left=0.05, right=0.86, bottom=0.9 / height, top=1 - 0.75 / height,
                        wspace=0.95, hspace=0.45)
    return fig


def slug(text: str) -> str:
    """A file-name-safe form of a problem spec (``gaussian-cos:k=5`` -> ``gaussian-cos_k-5``)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text.replace(":", "_")).strip("-")


def _draw(results: pd.DataFrame, fits: pd.DataFrame | None, problem: str, out_dir: str, formats, dpi: int) -> list[str]:
    fig = problem_figure(results, fits, problem)
    # the tight bounding box (legends outside the axes included) measured once for every format
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
    paths = []
    for fmt in formats:
        path = os.path.join(out_dir, f"{slug(problem)}.{fmt}")
        # zlib level 3, not 6: the same pixels, files no larger for these figures, a third less time
        extra = {"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}} if fmt == "png" else {}
        fig.savefig(path, dpi=dpi, bbox_inches=bbox, **extra)
        paths.append(path)
    plt.close(fig)
    return paths


def plot_all(results: pd.DataFrame, fits: pd.DataFrame | None, out_dir: str, *, formats=("png", "svg"),
             dpi: int = 110, workers: int | None = None) -> list[str]:
    """One figure per problem (:func:`problem_figure`) written as ``<slug>.<fmt>``; returns the paths.

    Figures are independent, so they are drawn by ``workers`` processes (default: the CPUs this
    process may use, at most one per figure), the figures with the most rows first; each writes its
    own files, and the result is the same files, and paths in the same order, as drawn one by one.
    SVG text is kept as text (``svg.fonttype: none``), not paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    problems = list(results["problem"].unique())
    workers = min(len(problems), workers or len(os.sched_getaffinity(0)))
    if workers <= 1:
        return [p for problem in problems for p in _draw(results, fits, problem, out_dir, formats, dpi)]
    import concurrent.futures
    import multiprocessing

    rows = results["problem"].value_counts()
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        # the largest figures first (a figure's time grows with its rows): the last one to start is
        # then a small one, and the processes finish together
        jobs = {problem: pool.submit(_draw, results[results["problem"] == problem], fits, problem, out_dir, formats, dpi)
                for problem in sorted(problems, key=lambda problem: -rows[problem])}
        return [p for problem in problems for p in jobs[problem].result()]


def figure_outputs(command: str, out_dir: str, problems, formats):
    """:func:`gradnoise.io.claim_outputs` of the figures :func:`plot_all` draws of ``problems``."""
    from gradnoise.io import Figure, claim_outputs

    return claim_outputs(command, out_dir, {f"{slug(p)}.{f}": Figure() for p in problems for f in formats})


def run_plot(args: argparse.Namespace) -> int:
    from .sweep import check_output_dir

    check_output_dir(args.out_dir)
    results = read_csv(args.results, what=f"results CSV {args.results}")
    fits = (read_csv(args.fits, FITS_REQUIRED, what=f"fits CSV {args.fits}", may_be_empty=FITS_MAY_BE_EMPTY)
            if args.fits else None)
    claim = figure_outputs("gradnoise plot", args.out_dir, results["problem"].unique(), args.format or ("png", "svg"))
    paths = plot_all(results, fits, args.out_dir, formats=tuple(args.format or ("png", "svg")))
    claim.record()
    print(f"wrote {len(paths)} figure files ({', '.join(args.format or ('png', 'svg'))}) to {args.out_dir}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="seaborn figures: variance, SNR and efficiency vs N per problem",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One figure per problem (a row per parameter): variance vs N on log-log axes with\n"
        "95% CI bands and, given --fits, the fitted power law; SNR vs N; efficiency (variance x\n"
        "seconds per estimate, lower is better) vs N. PNG and SVG.",
        epilog="examples:\n"
        "  gradnoise plot sweep.csv --out-dir figures\n"
        "  gradnoise fit sweep.csv --out fits.csv && gradnoise plot sweep.csv --fits fits.csv --out-dir figures\n"
        "  gradnoise plot sweep.csv --format png --out-dir figures",
    )
    p.add_argument("results", metavar="RESULTS.csv", help="tidy CSV written by `gradnoise sweep`")
    p.add_argument("--fits", metavar="FITS.csv", help="fits written by `gradnoise fit` (draws fitted lines)")
    p.add_argument("--out-dir", default="figures", help="output folder (default: %(default)s)")
    p.add_argument("--format", action="append", choices=["png", "svg", "pdf"],
                   help="image format (repeatable; default: png and svg)")
    p.set_defaults(func=run_plot)
