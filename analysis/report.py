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
import dataclasses
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
            row[f"b {p}"] = _b_cell(f.iloc[0]) if len(f) else "–"
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


#: a skip reason that depends on the budget (the first check at a budget below an estimator's minimum)
BUDGET_REASON = re.compile(r"^(needs (?:an integer budget )?N >= \d+)(, got .*)?$")


@dataclasses.dataclass(frozen=True)
class NotMeasured:
    """Why ``estimator`` was not measured on a problem: ``reason``, one line; ``budgets`` are the N at
    which it was not (``None``: at none of the budgets, the reason holds at every N)."""
    estimator: str
    reason: str
    budgets: tuple[int, ...] | None = None


def _reason(line: str, problem: str, estimator: str) -> str:
    """An engine skip line's reason, cut to its first clause, without the estimator's and problem's names."""
    reason = line[len(problem) + 3 + len(estimator) + 2:].split(";")[0].strip()
    reason = re.sub(rf"^estimator '{re.escape(estimator)}':? ", "", reason)
    return reason.replace(f" of problem {problem!r}", "").strip()


def not_measured(skipped: list[str], problem: str, results: pd.DataFrame | None = None,
                 budgets=None) -> list[NotMeasured]:
    """Each estimator the engine skipped on ``problem``, with its one real reason.

    ``skipped`` holds the engine's lines ``"<problem> x <estimator>: <reason>"``
    (:func:`gradnoise.engine.cells`); ``results`` the rows measured, ``budgets`` the budgets of the
    grid (default: those in ``results``). An estimator checks its budget first, so one that does not
    apply at all (vimco on a plain problem) is skipped at N = 1 for its budget and at N >= 2 for its
    real reason: the reason that holds at every N wins. An estimator measured at some budgets is
    listed with the budgets it missed and the reason for them, never as not measured.
    """
    prefix = problem + " x "
    reasons: dict[str, list[str]] = {}
    for line in skipped:
        if line.startswith(prefix):
            estimator = line[len(prefix):].split(": ", 1)[0]
            reasons.setdefault(estimator, []).append(_reason(line, problem, estimator))
    rows = results[results["problem"] == problem] if results is not None else pd.DataFrame(columns=["estimator", "budget"])
    grid = sorted({int(n) for n in (budgets if budgets is not None else rows["budget"])})
    out = []
    for estimator, found in reasons.items():
        measured = {int(n) for n in rows.loc[rows["estimator"] == estimator, "budget"]}
        short = [m.group(1) if (m := BUDGET_REASON.match(r)) else r for r in found]
        every_n = [r for r in short if not BUDGET_REASON.match(r)]
        if not measured:
            out.append(NotMeasured(estimator, (every_n or short)[0]))
        else:
            missed = tuple(n for n in grid if n not in measured)
            out.append(NotMeasured(estimator, short[0], missed or None))
    return out


def _not_measured_lines(notes: list[NotMeasured]) -> list[str]:
    lines = []
    groups: dict[tuple, list[str]] = {}
    for n in notes:
        groups.setdefault((n.budgets, n.reason), []).append(n.estimator)
    never = [f"{', '.join(ests)} ({why})" for (budgets, why), ests in groups.items() if budgets is None]
    if never:
        lines += ["Not measured: " + "; ".join(never) + ".", ""]
    for (budgets, why), ests in groups.items():
        if budgets is not None:
            lines += [f"Not measured at N = {', '.join(map(str, budgets))}: {', '.join(ests)} ({why}); "
                      "measured at the other budgets.", ""]
    return lines


def _zero_variance_line(results: pd.DataFrame, problem: str) -> list[str]:
    df = results[results["problem"] == problem]
    parts = []
    for (est, param), g in df.groupby(["estimator", "param"], sort=False):
        zero = sorted(int(n) for n in g.loc[g["variance"] == 0, "budget"])
        if zero:
            at = "at every N" if len(zero) == g["budget"].nunique() else f"at N = {', '.join(map(str, zero))}"
            parts.append(f"{est} / {param} {at}")
    if not parts:
        return []
    return ["Variance exactly 0 (an exact estimator there: no logarithm, so left out of the fits and marked "
            "on the edges of the figures' log axes): " + "; ".join(parts) + ".", ""]


def _p_min() -> str:
    return f"{fit_mod.GOF_P_MIN:.0e}".replace("e-0", "e-")


def _misfit_line(fits: pd.DataFrame, problem: str) -> list[str]:
    f = fits[(fits["problem"] == problem) & fits["power_law_misfit"]]
    if f.empty:
        return []
    return [f"† the power law does not fit (χ² goodness-of-fit p < {_p_min()}) for "
            + ", ".join(f"{r.estimator} / {r.param}" for r in f.itertuples())
            + ": there b is a summary slope over the budgets measured, not an exponent, and is not tested "
            "against −1.", ""]


def _b_cell(f: pd.Series) -> str:
    """A fit's b for the ranking table: `*` when it differs from −1, `†` when no power law fits."""
    if not np.isfinite(f["b"]):
        return "–"
    mark = " †" if f.get("power_law_misfit", False) else (" *" if f["b_differs_from_minus_one"] else "")
    return f"{f['b']:.2f}{mark}"


def _power_law(r) -> str:
    if getattr(r, "power_law_misfit", False):
        return "does not fit"
    return "fits" if np.isfinite(r.gof_p) else "untested (< 3 points)"


def summary_markdown(results: pd.DataFrame, fits: pd.DataFrame, figures: dict[str, str], *, budget: int = RANK_BUDGET,
                     header: str = "", skipped: list[str] | None = None, budgets=None) -> str:
    """The text of ``summary.md``: ranking tables, fitted slopes and figures per problem.

    ``skipped`` are the engine's skip lines and ``budgets`` the grid's budgets (default: those in
    ``results``), from which each estimator not measured gets its one reason (:func:`not_measured`).
    """
    lines = ["# gradnoise report", "", header, ""]
    lines += ["Variance is that of one N-sample gradient estimate (for tensor parameters the trace of its",
              "covariance); *total variance* sums it over the problem's parameters. *Efficiency* is total",
              "variance × seconds per estimate (lower is better). `b` is the fitted exponent of Var(N) = a·N^b",
              "(inverse-variance weighted least squares on log–log; `*` marks b significantly different",
              "from −1 at 95%, as expected only for estimators that are not i.i.d. averages; `†` marks a fit",
              f"whose χ² goodness-of-fit p is below {_p_min()}: the power law does not fit, and b is",
              "not tested). A variance of exactly 0 (an exact estimator) is listed, and left out of the fits.",
              "*max abs bias z* is",
              "the largest bias z-score over the parameters against the truth of the estimator's own objective",
              "(the ELBO, or the IWAE-K bound for iwae*); |z| > 3 flags a biased estimator (e.g. iwae-stl at K > 1),",
              "whose low variance is then no recommendation.", ""]
    for problem in results["problem"].unique():
        n_star = common_budget(results, problem, budget)
        lines += [f"## {problem}", "", f"Ranked by total variance at N = {n_star}:", ""]
        table = ranking_table(results, fits, problem, n_star)
        lines += [markdown_table(table) if len(table) else "(no estimator at this budget)", ""]
        if skipped:
            lines += _not_measured_lines(not_measured(skipped, problem, results, budgets))
        lines += _zero_variance_line(results, problem)
        f = fits[fits["problem"] == problem]
        zero = f["zero_variance_points"] if "zero_variance_points" in f else pd.Series(0, index=f.index)
        slope = pd.DataFrame({
            "estimator": f["estimator"], "param": f["param"],
            "b [95% CI]": [_interval(r.b, r.b_ci_low, r.b_ci_high) for r in f.itertuples()],
            "b ≠ −1": ["–" if getattr(r, "power_law_misfit", False) else "yes" if r.b_differs_from_minus_one else "no"
                       for r in f.itertuples()],
            "a [95% CI]": [_interval(r.a, r.a_ci_low, r.a_ci_high) for r in f.itertuples()],
            "d (SNR) [95% CI]": [_interval(r.d, r.d_ci_low, r.d_ci_high) for r in f.itertuples()],
            "fit p (χ²)": [fmt(v, 2) for v in f["gof_p"]],
            "power law": [_power_law(r) for r in f.itertuples()],
            "points": [f"{int(n)}" + (f" (+{int(z)} at variance 0)" if z else "") for n, z in zip(f["n_points"], zero)],
        })
        lines += ["Fitted slopes:", "", markdown_table(slope), ""]
        lines += _misfit_line(fits, problem) if "power_law_misfit" in fits else []
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
    with client_from_args(args, grid, args.replicates) as client:
        outcome = sweep_to_csv(grid, args.replicates, args.seed, sweep_path, progress=not args.quiet,
                               resume=not args.fresh, client=client, threads=args.threads, replace=args.replace)
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
    text = summary_markdown(results, fits, figures, budget=rank_budget, header=header, skipped=skipped,
                            budgets=budgets)
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
    p.add_argument("--replace", action="store_true",
                   help="drop sweep.csv's rows of other cells (default: kept; the report uses this grid's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cluster_arguments(p)
    p.set_defaults(func=run_report)
