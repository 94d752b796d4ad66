r"""``gradnoise report``: the main job. Sweep every problem x estimator, fit, plot, summarise.

Writes into ``--out-dir``:

* ``sweep.csv`` - the tidy sweep (resumable: re-running the same command reuses finished cells);
* ``fits.csv`` - :func:`gradnoise.analysis.fit.fit_curves` (Var = a N^b, SNR = c N^d, with intervals);
* ``figures/<problem>.png|svg`` - :func:`gradnoise.analysis.plot.plot_all`;
* ``summary.md`` - what a person reads first (:func:`summary_markdown`): per problem, the
  estimators ranked by variance at a common budget and by efficiency, the fitted slopes, and the
  figures.

Ranking quantities (per problem, at the common budget ``N*``): the **total variance** is the sum
over parameters of each parameter's variance (the trace of the covariance of the whole gradient,
as the per-parameter traces add); **efficiency** is total variance x seconds per estimate (lower
is better: the seconds needed to reach a given variance by averaging). Each parameter's variance is
shown with its 95% interval, so an overlap (a ranking the data do not settle) is visible.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd

import gradnoise as gn
from gradnoise.io import atomic_write_csv, atomic_write_markdown, fmt, fmt_ci, markdown_table

from . import fit as fit_mod
from . import plot as plot_mod
from .cluster import add_cluster_arguments, check_cluster_arguments, client_from_args
from .sweep import check_output_dir, sweep_to_csv

#: the default sweep: every problem x every valid estimator, budgets over two decades
REPORT_BUDGETS = (1, 3, 10, 30, 100)
REPORT_REPLICATES = 300
RANK_BUDGET = 100


def _interval(v, lo, hi):
    return fmt_ci(v, lo, hi, bound_digits=2)


def ranking_table(results: pd.DataFrame, fits: pd.DataFrame, problem: str, budget: int) -> pd.DataFrame:
    """Estimators of ``problem`` at ``budget``, ranked by total variance, with efficiency rank."""
    df = results[(results["problem"] == problem) & (results["budget"] == budget)]
    if df.empty:
        return pd.DataFrame()
    params = list(dict.fromkeys(df["param"]))
    rows = []
    for est, g in df.groupby("estimator", sort=False):
        g = g.set_index("param")
        total = float(g["variance"].sum())
        sec = float(g["seconds_per_estimate"].iloc[0])
        row = {"estimator": est, "total variance": total, "s / estimate": sec, "efficiency (Var·s)": total * sec,
               "max abs bias z": float(np.abs(g["bias_z"]).max()) if "bias_z" in g else np.nan}
        for p in params:
            row[f"Var {p} [95% CI]"] = (_interval(g.at[p, "variance"], g.at[p, "variance_ci_low"], g.at[p, "variance_ci_high"])
                                      if p in g.index else "–")
            f = fits[(fits["problem"] == problem) & (fits["estimator"] == est) & (fits["param"] == p)]
            row[f"b {p}"] = (f"{f.iloc[0]['b']:.2f}" + (" *" if f.iloc[0]["b_differs_from_minus_one"] else "")
                             if len(f) and np.isfinite(f.iloc[0]["b"]) else "–")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("total variance").reset_index(drop=True)
    table.insert(0, "rank (variance)", np.arange(1, len(table) + 1))
    table.insert(1, "rank (efficiency)", table["efficiency (Var·s)"].rank(method="min").astype(int))
    return table


def common_budget(results: pd.DataFrame, problem: str, preferred: int) -> int:
    """``preferred`` if every estimator of ``problem`` has it, else the largest budget they share."""
    df = results[results["problem"] == problem]
    shared = set.intersection(*(set(g["budget"]) for _, g in df.groupby("estimator")))
    if preferred in shared or not shared:
        return preferred
    return int(max(shared))


def not_measured(skipped: list[str], problem: str) -> dict[str, list[str]]:
    """Skip notes of ``problem`` (engine lines ``"<problem> x <estimator>: <reason>"``) grouped by reason,
    each reason cut to its first clause with the leading ``estimator 'name'`` dropped."""
    out: dict[str, list[str]] = {}
    for line in skipped:
        if not line.startswith(problem + " x "):
            continue
        estimator, _, reason = line[len(problem) + 3:].partition(": ")
        reason = re.sub(rf"^estimator '{re.escape(estimator)}' ", "", reason.split(";")[0]).strip()
        out.setdefault(reason, []).append(estimator)
    return out


def summary_markdown(results: pd.DataFrame, fits: pd.DataFrame, figures: dict[str, str], *, budget: int = RANK_BUDGET,
                     header: str = "", skipped: list[str] | None = None) -> str:
    """The text of ``summary.md``: ranking tables, fitted slopes and figures per problem."""
    lines = ["# gradnoise report", "", header, ""]
    lines += ["Variance is that of one N-sample gradient estimate (for tensor parameters the trace of its",
              "covariance); *total variance* sums it over the problem's parameters. *Efficiency* is total",
              "variance × seconds per estimate (lower is better). `b` is the fitted exponent of Var(N) = a·N^b",
              "(inverse-variance weighted least squares on log–log; `*` marks b significantly different",
              "from −1 at 95%, as expected only for estimators that are not i.i.d. averages). *max abs bias z* is",
              "the largest bias z-score over the parameters against the truth of the estimator's own objective",
              "(the ELBO, or the IWAE-K bound for iwae*); |z| > 3 flags a biased estimator (e.g. iwae-stl at K > 1),",
              "whose low variance is then no recommendation.", ""]
    for problem in results["problem"].unique():
        n_star = common_budget(results, problem, budget)
        lines += [f"## {problem}", "", f"Ranked by total variance at N = {n_star}:", ""]
        table = ranking_table(results, fits, problem, n_star)
        lines += [markdown_table(table) if len(table) else "(no estimator at this budget)", ""]
        if skipped:
            notes = not_measured(skipped, problem)
            if notes:
                lines += ["Not measured: " + "; ".join(f"{', '.join(ests)} ({why})" for why, ests in notes.items()), ""]
        f = fits[fits["problem"] == problem]
        slope = pd.DataFrame({
            "estimator": f["estimator"], "param": f["param"],
            "b [95% CI]": [_interval(r.b, r.b_ci_low, r.b_ci_high) for r in f.itertuples()],
            "b ≠ −1": ["yes" if v else "no" for v in f["b_differs_from_minus_one"]],
            "a [95% CI]": [_interval(r.a, r.a_ci_low, r.a_ci_high) for r in f.itertuples()],
            "d (SNR) [95% CI]": [_interval(r.d, r.d_ci_low, r.d_ci_high) for r in f.itertuples()],
            "fit p (χ²)": [fmt(v, 2) for v in f["gof_p"]],
            "points": f["n_points"].astype(int).astype(str),
        })
        lines += ["Fitted slopes:", "", markdown_table(slope), ""]
        if problem in figures:
            lines += [f"![{problem}]({figures[problem]})", ""]
    return "\n".join(lines)


def _git_head() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def report_outputs(out_dir: str, problems):
    """:func:`gradnoise.io.claim_outputs` of what a report writes (``sweep.csv`` is :func:`sweep_to_csv`'s)."""
    from gradnoise.io import Columns, Figure, Markdown, claim_outputs

    from .results import FITS_REQUIRED

    return claim_outputs("gradnoise report", out_dir, {
        "summary.md": Markdown(r"^# gradnoise report"), "fits.csv": Columns(FITS_REQUIRED, "a gradnoise fits CSV"),
        **{f"figures/{plot_mod.slug(p)}.{f}": Figure() for p in problems for f in ("png", "svg")}})


def run_report(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out_dir = check_output_dir(args.out_dir)
    check_cluster_arguments(args)
    problems = args.problem or gn.problem_names(default_sweep=True)
    estimators = args.estimator or gn.estimator_names()
    budgets = sorted(args.budget or REPORT_BUDGETS)
    skipped: list[str] = []
    grid = gn.engine.cells(problems, estimators, budgets, on_invalid="skip", skipped=skipped)
    if not grid:
        raise ValueError("no valid problem x estimator x budget combination")
    rank_budget = args.rank_budget
    if rank_budget is None:
        rank_budget = RANK_BUDGET if RANK_BUDGET in budgets else budgets[-1]
    elif rank_budget not in budgets:
        raise ValueError(f"--rank-budget {rank_budget} is not among the budgets measured "
                         f"({', '.join(map(str, budgets))}); choose one of them")
    claim = report_outputs(out_dir, {p.spec for p, _, _ in grid})
    sweep_path = os.path.join(out_dir, "sweep.csv")
    with client_from_args(args) as client:
        outcome = sweep_to_csv(grid, args.replicates, args.seed, sweep_path, progress=not args.quiet,
                               resume=not args.fresh, client=client, threads=args.threads)
    results = outcome.results
    t_sweep = time.perf_counter() - start
    fits = fit_mod.fit_curves(results)
    atomic_write_csv(fits, os.path.join(out_dir, "fits.csv"))
    t0 = time.perf_counter()
    fig_dir = os.path.join(out_dir, "figures")
    paths = plot_mod.plot_all(results, fits, fig_dir)
    t_plot = time.perf_counter() - t0
    figures = {p: f"figures/{plot_mod.slug(p)}.png" for p in results["problem"].unique()}
    wall = time.perf_counter() - start
    header = (f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at commit {_git_head()} by "
              f"`gradnoise report` in {wall:.0f} s (sweep {t_sweep:.0f} s, {outcome.describe()}; "
              f"plots {t_plot:.0f} s). Sweep: {len(results['problem'].unique())} problems, "
              f"{len(results['estimator'].unique())} estimators, budgets N = {', '.join(map(str, budgets))}, "
              f"R = {args.replicates} replicates per cell, seed {args.seed}. Files: `sweep.csv`, `fits.csv`, `figures/`.")
    text = summary_markdown(results, fits, figures, budget=rank_budget, header=header, skipped=skipped)
    atomic_write_markdown(os.path.join(out_dir, "summary.md"), text, "gradnoise report")
    claim.record()
    print(f"wrote {os.path.join(out_dir, 'summary.md')}, sweep.csv ({len(results)} rows), fits.csv ({len(fits)} fits), "
          f"{len(paths)} figures in {wall:.0f} s", file=sys.stdout)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="the main job: sweep everything, fit, plot, and write summary.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a sweep of every problem x every valid estimator over budgets spanning two\n"
        f"decades (default N = {' '.join(map(str, REPORT_BUDGETS))}, R = {REPORT_REPLICATES}; about 15 s on 2 quiet cores),\n"
        "then fit Var(N) = a N^b and SNR(N) = c N^d, draw the figures, and write summary.md: per\n"
        "problem, estimators ranked by variance at a common budget and by efficiency, the fitted\n"
        "slopes, and the figures. Resumable: re-running the same command reuses finished cells.",
        epilog="examples:\n"
        "  gradnoise report --out-dir report                 # the default sweep\n"
        "  gradnoise report --problem gaussian-cos:k=5 --estimator reinforce --estimator reparam \\\n"
        "      --budget 1 --budget 10 --budget 100 --replicates 2000 --out-dir cos-report",
    )
    p.add_argument("--out-dir", default="report", help="output folder (default: %(default)s)")
    p.add_argument("--problem", action="append", metavar="P", help="problem with options (repeatable; default: all but the trained digits-* models, which take minutes each)")
    p.add_argument("--estimator", action="append", metavar="E", help="estimator (repeatable; default: all)")
    p.add_argument("--budget", action="append", type=int, metavar="N", help="budget (repeatable; default: %s)"
                   % " ".join(map(str, REPORT_BUDGETS)))
    p.add_argument("--replicates", type=int, default=REPORT_REPLICATES, metavar="R", help="replicates per cell (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default: %(default)s)")
    p.add_argument("--rank-budget", type=int, default=None, metavar="N",
                   help=f"budget at which estimators are ranked, one of the budgets measured (default: {RANK_BUDGET} "
                   "when measured, else the largest budget)")
    p.add_argument("--fresh", action="store_true", help="recompute every cell")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cluster_arguments(p)
    p.set_defaults(func=run_report)
