r"""Study ``no-single-winner``: Mohamed, Rosca, Figurnov & Mnih (2020, JMLR), section 3.

:math:`x \sim \mathcal N(\mu, \sigma^2)` (``loc`` = ``scale`` = 1) with the costs
:math:`(x-k)^2` (``gaussian-quadratic``), :math:`\exp(-k x^2)` (``gaussian-exp``) and
:math:`\cos(k x)` (``gaussian-cos``). For each cost, ``k`` and parameter, the *per-sample*
variance (variance of the N-sample estimate times N, so that estimators spending different
numbers of samples compare per cost evaluation) of

* ``reinforce`` (score function) at N = 1,
* ``reinforce-ema`` (score function with a warmed-up moving-average baseline) at N = 1,
* ``reinforce-loo`` (score function with the leave-one-out baseline; needs N >= 2) at N = 2,
  reported as 2 Var(N=2),
* ``reparam`` (pathwise) at N = 1,

ranked, with the ratio pathwise / best score-function estimator and its delta-method interval.
Budgets N = 1, 2, 4, 8 are measured too, for the fits (Var = a N^b; b = -1 for averages of
i.i.d. terms).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import gradnoise as gn
from gradnoise.io import atomic_write_csv, fmt, fmt_ci, markdown_table

from .base import (
    Config, Outcome, errorbar_series, grid, log_axes, measure, new_figure, ratio_interval,
    save_figure, study, write_study_md,
)

COSTS = {
    "gaussian-quadratic": "(x-k)^2",
    "gaussian-exp": "exp(-k x^2)",
    "gaussian-cos": "cos(k x)",
}
SCORE_FUNCTION = ("reinforce", "reinforce-ema", "reinforce-loo")
PATHWISE = "reparam"
CLAIM = (
    "There is no single best gradient estimator (Mohamed et al. 2020, JMLR, sec. 3): for a Gaussian "
    "measure the pathwise estimator has the lowest variance for the smooth quadratic cost (x-k)^2 "
    "at every k, but for the sharp cost exp(-k x^2) and the fast-oscillating cost cos(k x) the "
    "ranking flips as k grows, and the score function (with or without baseline) beats pathwise."
)


@dataclass(frozen=True)
class Sizes:
    ks: tuple[float, ...]
    budgets: tuple[int, ...]
    replicates: int


FULL = Sizes(ks=(0.1, 0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0), budgets=(1, 2, 4, 8), replicates=20000)
QUICK = Sizes(ks=(0.3, 10.0), budgets=(1, 2, 4), replicates=400)


def per_sample_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per-sample variance (N x Var at each estimator's smallest valid budget) with intervals and ranks."""
    rows = []
    for (problem, estimator, param), g in results.groupby(["problem", "estimator", "param"], sort=False):
        first = g.loc[g["budget"].idxmin()]
        n = int(first["budget"])
        rows.append({
            "cost": problem.split(":")[0], "k": float(gn.parse_spec(problem)[1]["k"]), "param": param,
            "estimator": estimator, "budget": n,
            "per_sample_variance": n * first["variance"],
            "ci_low": n * first["variance_ci_low"], "ci_high": n * first["variance_ci_high"],
        })
    table = pd.DataFrame(rows)
    table["rank"] = table.groupby(["cost", "k", "param"])["per_sample_variance"].rank(method="min").astype(int)
    return table.sort_values(["cost", "param", "k", "rank"]).reset_index(drop=True)


def ranking_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per cost x k x param: the ranking, and pathwise / best score function with its interval."""
    rows = []
    for (cost, k, param), g in table.groupby(["cost", "k", "param"], sort=False):
        g = g.sort_values("per_sample_variance")
        pw = g[g["estimator"] == PATHWISE].iloc[0]
        sf = g[g["estimator"].isin(SCORE_FUNCTION)].iloc[0]
        ratio, low, high = ratio_interval(pw["per_sample_variance"], pw["ci_low"], pw["ci_high"],
                                          sf["per_sample_variance"], sf["ci_low"], sf["ci_high"])
        verdict = "pathwise wins" if high < 1 else "score function wins" if low > 1 else "not significant"
        rows.append({
            "cost": cost, "k": k, "param": param, "ranking": " < ".join(g["estimator"]),
            "winner": g["estimator"].iloc[0], "pathwise_rank": int(pw["rank"]),
            "best_score_function": sf["estimator"], "pathwise_over_best_sf": float(ratio),
            "ratio_ci_low": float(low), "ratio_ci_high": float(high), "verdict": verdict,
        })
    return pd.DataFrame(rows)


def judge(ranking: pd.DataFrame) -> tuple[bool, list[str], dict]:
    """Whether the claim held, per cost and parameter, and one headline line per cost."""
    held, lines, details = True, [], {}
    ks = lambda v: ", ".join(fmt(k, 2) for k in v) or "none"  # noqa: E731
    for cost in COSTS:
        wins, losses, last_ratio, missed = [], [], [], []
        for param in ("loc", "scale"):
            g = ranking[(ranking["cost"] == cost) & (ranking["param"] == param)].sort_values("k")
            pw_k = g.loc[g["verdict"] == "pathwise wins", "k"].tolist()
            sf_k = g.loc[g["verdict"] == "score function wins", "k"].tolist()
            last = g.iloc[-1]
            if cost == "gaussian-quadratic":
                ok = len(pw_k) == len(g)
            else:
                ok = bool(pw_k) and last["verdict"] == "score function wins"
            held &= ok
            details[f"{cost}/{param}"] = {"pathwise_wins_at_k": pw_k, "score_function_wins_at_k": sf_k, "held": ok}
            wins.append(f"{ks(pw_k)} (d/d{param})")
            losses.append(f"{ks(sf_k)} (d/d{param})")
            last_ratio.append(f"{fmt_ci(last['pathwise_over_best_sf'], last['ratio_ci_low'], last['ratio_ci_high'])} "
                              f"(d/d{param}, vs {last['best_score_function']})")
            missed += [] if ok else [param]
        lines.append(
            f"{COSTS[cost]}: pathwise significantly best at k = {'; '.join(wins)}; a score-function "
            f"estimator significantly best at k = {'; '.join(losses)}; Var(pathwise) / Var(best score "
            f"function) at k = {fmt(last['k'], 2)}: {'; '.join(last_ratio)}"
            + (f" (claim not met for d/d{', d/d'.join(missed)})" if missed else "")
        )
    return held, lines, details


def figure(table: pd.DataFrame, path: Path) -> str:
    fig, axes = new_figure(2, len(COSTS), width=3.6, height=2.9)
    for j, cost in enumerate(COSTS):
        for i, param in enumerate(("loc", "scale")):
            ax = axes[i, j]
            errorbar_series(ax, table[(table["cost"] == cost) & (table["param"] == param)], "k",
                            "per_sample_variance", "ci_low", "ci_high",
                            label=lambda est: f"{est} (2 Var at N=2)" if est == "reinforce-loo" else est)
            log_axes(ax, f"{COSTS[cost]}: d/d{param}", "k", "per-sample variance" if j == 0 else None)
    axes[0, 0].legend(fontsize=6)
    return save_figure(fig, path)


@study("no-single-winner", title="No single winner: score function vs pathwise across costs (Mohamed et al. 2020)",
       summary="Mohamed et al. 2020: per-sample variance of score function, with baseline, and pathwise over k")
def run(out: Path, config: Config) -> Outcome:
    sizes = QUICK if config.quick else FULL
    problems = [gn.make_problem(f"{cost}:k={k:g}") for cost in COSTS for k in sizes.ks]
    cells = grid(problems, SCORE_FUNCTION + (PATHWISE,), sizes.budgets, sizes.replicates)
    results = measure(config, cells, out)
    table = per_sample_table(results)
    ranking = ranking_table(table)
    atomic_write_csv(table, out / "per_sample.csv")
    atomic_write_csv(ranking, out / "ranking.csv")
    figures = [figure(table, out / "variance_over_k.png")]
    held, headline, details = judge(ranking)

    shown = ranking.assign(
        k=ranking["k"].map(lambda v: fmt(v, 2)),
        **{"pathwise / best SF [95% CI]": [fmt_ci(r.pathwise_over_best_sf, r.ratio_ci_low, r.ratio_ci_high)
                                          for r in ranking.itertuples()]},
    )[["cost", "param", "k", "ranking", "pathwise / best SF [95% CI]", "verdict"]]
    fits = pd.read_csv(out / "fits.csv")
    b_range = (fits["b"].min(), fits["b"].max())
    method = f"""
Problems `gaussian-quadratic`, `gaussian-exp`, `gaussian-cos` with option k (loc = scale = 1),
k in {{{', '.join(fmt(k, 2) for k in sizes.ks)}}}; R = {sizes.replicates} independent estimates per cell,
budgets N in {{{', '.join(map(str, sizes.budgets))}}}, master seed {config.seed}; truths in closed form.
*Per-sample variance* is N x Var(N) at each estimator's smallest valid budget: N = 1 for
`reinforce`, `reinforce-ema` (score function with a moving-average baseline, beta = 0.9, warmed up
with 20 batches at the frozen parameters; the warm-up is not counted) and `reparam`; N = 2 for
`reinforce-loo` (the leave-one-out baseline needs two samples), reported as 2 Var(N=2), the
variance per cost evaluation. The "score function with baseline" of the paper is represented by
both `reinforce-loo` and `reinforce-ema`. Variances are traces with the engine's kurtosis-adjusted
95% interval; the ratio pathwise / best score-function estimator (the score-function estimator
with the lowest per-sample variance) has a delta-method interval on the log scale. A ranking is
*significant* when that ratio's interval excludes 1. The claim is judged for the derivatives with
respect to loc and to scale: held if pathwise is significantly best at every k for the quadratic
cost, and, for exp and cos, significantly best at some k and significantly beaten by a
score-function estimator at the largest k. `fits.csv` fits Var(N) = a N^b over the budgets: b
ranges over [{fmt(b_range[0])}, {fmt(b_range[1])}] (-1 for an average of i.i.d. terms).
"""
    body = "### Ranking by per-sample variance (lowest first)\n\n" + markdown_table(shown) + (
        "\n\n### Per-sample variances\n\n"
        + markdown_table(table.assign(**{"per-sample variance [95% CI]": [
            fmt_ci(r.per_sample_variance, r.ci_low, r.ci_high) for r in table.itertuples()]})[
            ["cost", "param", "k", "estimator", "budget", "per-sample variance [95% CI]", "rank"]])
    )
    outcome = Outcome("no-single-winner", "No single winner (Mohamed et al. 2020)", CLAIM, held, headline,
                      figures, quick=config.quick, details=details)
    write_study_md(out, outcome, method, body)
    return outcome
