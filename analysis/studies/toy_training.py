r"""Study ``toy-training``: training on the REBAR/RELAX toy (Tucker et al. 2017; Grathwohl et al. 2018).

``bernoulli-toy`` at t = 0.45 and t = 0.499: one :math:`b \sim \mathrm{Bernoulli}(\sigma(\theta))`,
cost :math:`(b - t)^2`, objective :math:`\mathbb{E}[(b-t)^2] = t^2 + \sigma(\theta)(1 - 2t)`,
minimised as :math:`\theta \to -\infty` (t < 1/2). At t = 0.499 the signal
:math:`\sigma'(\theta)(1-2t)` is 0.002 of the cost's spread, so an estimator's noise decides
whether training finds the optimum. Each estimator of :data:`ESTIMATORS` drives Adam from
:math:`\theta = 0` at equal evaluations per step, several seeds (:func:`gradnoise.train`); the
objective is exact (enumeration), the variance along the trajectory is measured at every
recorded step.

Verdict, from the final parameters of each seed: a seed *reached the optimum* when
:math:`\sigma(\theta_T) <` :data:`REACHED` (the objective within 5% of its starting excess over
:math:`t^2`). Part 1 (t = 0.499): REINFORCE reaches it in fewer seeds than each lower-variance
estimator of :data:`LOWER_VARIANCE` that reaches it in most seeds (Fisher's exact test, one-sided,
Holm over the comparisons). Part 2 (both t): the biased relaxations (:data:`RELAXED`) end at a
worse exact objective than DisARM (Welch, Holm) with no seed reaching the optimum.

Part 3, the single-sample setting of Grathwohl et al. (2018), Fig. 1 (t = 0.499): ``reinforce``,
``rebar`` and ``relax`` (:data:`SINGLE_SAMPLE`) each at N = 1 sample per estimate, so they do
*not* spend equal evaluations: REINFORCE 1 per step, REBAR and RELAX 3 (:math:`f(b)` and the
relaxed cost twice). The figure compares estimators per sample, as this part does; it is labelled
so and its evaluations are reported (the ``cost_evals`` column of ``train-single.csv``). Parts 1
and 2 stay at :data:`EVALS_PER_STEP` evaluations per step, where REBAR and RELAX (3N) cannot
spend exactly 2. Each estimator drives its own runs (:data:`SINGLE_SIZES`: more steps than parts 1
and 2, since one sample per step moves the parameter more slowly), and at every recorded step the
variance of all three is measured at the same parameters (the driving estimator's own and the
other two as the basket, each with its own warm-up at the point), so the comparison is paired.
Per seed, the mean over recorded steps of :math:`\log(\mathrm{Var}_{relax} / \mathrm{Var}_{other})`
*before the optimum*: at the points where :data:`REACHED` <= :math:`\sigma(\theta)` <= 1 - :data:`REACHED`
(the same points for all three, so no estimator is favoured). Beyond, the variance comes from the
rare draw b = 1 (b = 0 past 1 - :data:`REACHED`), which R replicates see fewer than R x
:data:`REACHED` times (10 at the full size's R = 200): REINFORCE's sample variance is then often
exactly 0 (no rare draw at all), a measurement artefact, not the estimator's variance;
a one-sided one-sample t-test over the seeds (they are independent; the steps of one seed are
not) that it is below 0, with its 95% interval (shown as a ratio), for each trajectory (driven by
each of the three) and each other estimator: six tests. RELAX reaching the optimum: a seed counts
as in parts 1 and 2; Fisher's exact test (one-sided) of RELAX against REINFORCE and REBAR is
reported. Holm over part 3's eight tests (its own family: parts 1 and 2 keep theirs). Part 3
holds when the six variance tests are significant and RELAX reaches the optimum in most seeds.

The claim holds when all three parts do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import gradnoise as gn
from gradnoise.io import atomic_write_csv, fmt, markdown_table

from .. import train as train_report
from .base import Config, Outcome, study, write_study_md

#: the estimators trained (add one here; each runs at EVALS_PER_STEP evaluations per step)
ESTIMATORS = ["reinforce", "reinforce-loo", "arm", "disarm", "gumbel-softmax"]
#: estimators the claim calls lower-variance than REINFORCE, and the biased relaxations
LOWER_VARIANCE = ["reinforce-loo", "arm", "disarm"]
RELAXED = ["gumbel-softmax"]
TARGETS = (0.45, 0.499)
EVALS_PER_STEP = 2
LR = 0.05
#: a seed reached the optimum when sigma(theta) at the last step is below this
REACHED = 0.05
ALPHA = 0.05
#: part 3: Grathwohl et al. (2018), Fig. 1: single-sample estimators at t = 0.499, compared per sample
SINGLE_SAMPLE = ["reinforce", "rebar", "relax"]
SINGLE_TARGET = 0.499
SINGLE_BUDGET = 1
CLAIMED_LOWEST = "relax"
SINGLE_FIGURES = ("single-sample-objective.png", "single-sample-variance.png")
CLAIM = ("Tucker et al. (2017) and Grathwohl et al. (2018), on the toy E[(b - t)^2], b ~ Bernoulli(sigma(theta)): "
         "at t = 0.499 plain REINFORCE does not reliably find the optimum theta -> -infinity within the steps "
         "where lower-variance estimators do; biased relaxations (Gumbel-softmax) converge to the wrong point. "
         "Grathwohl et al. (2018, Fig. 1; single-sample estimators, t = 0.499): RELAX's gradient variance is lower "
         "than REBAR's and REINFORCE's along training, and RELAX reaches the optimum.")


@dataclass(frozen=True)
class Sizes:
    steps: int
    seeds: int
    eval_every: int
    variance_replicates: int


FULL = Sizes(steps=2000, seeds=16, eval_every=100, variance_replicates=100)
QUICK = Sizes(steps=200, seeds=4, eval_every=50, variance_replicates=20)
#: part 3's sizes (full, quick): one sample per step needs more steps; the variance is recorded less often
SINGLE_SIZES = {False: Sizes(steps=6000, seeds=16, eval_every=500, variance_replicates=200),
                True: Sizes(steps=200, seeds=4, eval_every=50, variance_replicates=20)}


def reached(df: pd.DataFrame) -> pd.DataFrame:
    """Per (problem, estimator): seeds whose final sigma(theta) is below :data:`REACHED`, of all."""
    last = df[df["step"] == df["step"].max()]
    sig = 1 / (1 + np.exp(-last["param:logits[0]"].astype(float)))
    return (last.assign(reached=sig < REACHED, sigma=sig).groupby(["problem", "estimator"], sort=False)
            .agg(seeds=("seed", "size"), reached=("reached", "sum"), final_sigma_median=("sigma", "median"))
            .reset_index())


def judge(df: pd.DataFrame) -> tuple[dict[int, bool], list[str], pd.DataFrame]:
    """Parts 1 and 2 of the verdict (module docstring): ``({1: held, 2: held}, headline, tests)``."""
    counts = reached(df)
    tests = []
    headline = []
    hard = counts[counts["problem"].str.contains("t=0.499")]
    base = hard[hard["estimator"] == "reinforce"].iloc[0]
    for est in LOWER_VARIANCE:
        row = hard[hard["estimator"] == est]
        if row.empty:
            continue
        row = row.iloc[0]
        table = [[int(row["reached"]), int(row["seeds"] - row["reached"])],
                 [int(base["reached"]), int(base["seeds"] - base["reached"])]]
        p = float(stats.fisher_exact(table, alternative="greater").pvalue)
        tests.append({"part": 1, "problem": row["problem"], "comparison": f"{est} reaches more often than reinforce",
                      "p": p, "most_reach": bool(row["reached"] > row["seeds"] / 2)})
    pairs = train_report.pairwise(df)
    for problem in df["problem"].unique():
        for est in RELAXED:
            r = pairs[(pairs["problem"] == problem) & (pairs["first"].isin([est, "disarm"]))
                      & (pairs["second"].isin([est, "disarm"]))]
            if r.empty:
                continue
            r = r.iloc[0]
            worse = r["difference"] > 0 if r["first"] == est else r["difference"] < 0
            none_reach = int(counts[(counts["problem"] == problem) & (counts["estimator"] == est)]["reached"].iloc[0]) == 0
            tests.append({"part": 2, "problem": problem, "comparison": f"{est} ends worse than disarm",
                          "p": float(r["p"]) if worse else 1.0, "most_reach": none_reach})
    tests = pd.DataFrame(tests)
    tests["p_holm"] = train_report.holm(tests["p"].to_numpy())
    part1 = tests[tests["part"] == 1]
    part1_ok = bool(((part1["p_holm"] < ALPHA) | ~part1["most_reach"]).all() and (part1["p_holm"] < ALPHA).any())
    part2 = tests[tests["part"] == 2]
    part2_ok = bool(((part2["p_holm"] < ALPHA) & part2["most_reach"]).all())
    for row in counts.itertuples():
        headline.append(f"{row.problem.split(':')[1]} {row.estimator}: {row.reached}/{row.seeds} seeds reached "
                        f"sigma(theta) < {REACHED} (median final sigma {fmt(row.final_sigma_median, 2)})")
    headline.append(f"part 1 (t = 0.499, REINFORCE unreliable where lower-variance estimators succeed): "
                    f"{'held' if part1_ok else 'did not hold'}")
    headline.append(f"part 2 (relaxations end at a worse objective than DisARM, no seed at the optimum): "
                    f"{'held' if part2_ok else 'did not hold'}")
    return {1: part1_ok, 2: part2_ok}, headline, tests


def variance_of(df: pd.DataFrame, estimator: str) -> pd.Series:
    """Each row's variance of ``estimator`` at the row's parameters: the driving estimator's own
    (``variance``) where it drives, else its basket column."""
    own = df["estimator"] == estimator
    column = f"basket:{estimator}:variance"
    basket = df[column] if column in df.columns else pd.Series(np.nan, index=df.index)
    return df["variance"].where(own, basket).astype(float)


def single_sample_judge(df: pd.DataFrame) -> tuple[bool, list[str], pd.DataFrame]:
    """Part 3 (module docstring): ``(held, headline, tests)`` from the single-sample runs ``df``."""
    counts = reached(df)
    rows = []
    relax = variance_of(df, CLAIMED_LOWEST)
    sigma = 1 / (1 + np.exp(-df["param:logits[0]"].astype(float)))
    comparable = (sigma >= REACHED) & (sigma <= 1 - REACHED)
    for driver in SINGLE_SAMPLE:
        on = df["estimator"] == driver
        for other in (e for e in SINGLE_SAMPLE if e != CLAIMED_LOWEST):
            ratio = np.log(relax[on] / variance_of(df, other)[on])
            usable = np.isfinite(ratio) & comparable[on]
            per_seed = ratio[usable].groupby(df.loc[on, "seed"][usable]).mean()
            test = stats.ttest_1samp(per_seed.to_numpy(), 0.0, alternative="less")
            low, high = stats.ttest_1samp(per_seed.to_numpy(), 0.0).confidence_interval(1 - ALPHA)
            rows.append({"part": 3, "problem": df["problem"].iloc[0], "trajectory": driver, "other": other,
                         "comparison": f"Var({CLAIMED_LOWEST}) < Var({other}) along {driver}'s runs",
                         "p": float(test.pvalue), "ratio": float(np.exp(per_seed.mean())),
                         "ratio_ci_low": float(np.exp(low)), "ratio_ci_high": float(np.exp(high)),
                         "seeds": int(per_seed.size), "points": int(usable.sum()),
                         "points_at_optimum": int((on & ~comparable).sum()),
                         "points_not_finite": int((~np.isfinite(ratio) & comparable[on]).sum())})
    best = counts[counts["estimator"] == CLAIMED_LOWEST].iloc[0]
    for other in (e for e in SINGLE_SAMPLE if e != CLAIMED_LOWEST):
        row = counts[counts["estimator"] == other].iloc[0]
        table = [[int(best["reached"]), int(best["seeds"] - best["reached"])],
                 [int(row["reached"]), int(row["seeds"] - row["reached"])]]
        rows.append({"part": 3, "problem": best["problem"], "comparison": f"{CLAIMED_LOWEST} reaches more often than {other}",
                     "p": float(stats.fisher_exact(table, alternative="greater").pvalue),
                     "most_reach": bool(best["reached"] > best["seeds"] / 2)})
    tests = pd.DataFrame(rows)
    tests["p_holm"] = train_report.holm(tests["p"].to_numpy())
    variance = tests[tests["comparison"].str.startswith("Var(")]
    most = bool(best["reached"] > best["seeds"] / 2)
    held = bool((variance["p_holm"] < ALPHA).all()) and most
    evals = df.groupby("estimator", sort=False)["cost_evals"].max()
    headline = [f"single sample (N = {SINGLE_BUDGET}), t = {SINGLE_TARGET}: {row.estimator} reached sigma(theta) < "
                f"{REACHED} in {row.reached}/{row.seeds} seeds (median final sigma {fmt(row.final_sigma_median, 2)}; "
                f"{int(evals[row.estimator])} evaluations in {int(df['steps'].iloc[0])} steps)" for row in counts.itertuples()]
    headline += [f"Var({CLAIMED_LOWEST}) / Var({r.other}) along {r.trajectory}'s runs: "
                 f"{fmt(r.ratio, 2)} [{fmt(r.ratio_ci_low, 2)}, {fmt(r.ratio_ci_high, 2)}] (geometric mean over steps "
                 f"and seeds, Holm p {fmt(r.p_holm, 2)})" for r in variance.itertuples()]
    headline.append(f"part 3 (Grathwohl et al. 2018, Fig. 1, per sample, not per evaluation: RELAX's variance below "
                    f"REBAR's and REINFORCE's along training, RELAX reaches the optimum): "
                    f"{'held' if held else 'did not hold'}")
    return held, headline, tests


#: sigma(theta) bins of the descriptive table :func:`variance_by_sigma`
SIGMA_BINS = (REACHED, 0.1, 0.2, 0.35, 0.65, 0.8, 0.9, 1 - REACHED)


def variance_by_sigma(df: pd.DataFrame) -> pd.DataFrame:
    """Descriptive, not a test: the geometric mean of Var(relax) / Var(other) over the compared
    points (every trajectory) in each bin of sigma(theta) (:data:`SIGMA_BINS`), with the count."""
    sigma = 1 / (1 + np.exp(-df["param:logits[0]"].astype(float)))
    bins = pd.cut(sigma, list(SIGMA_BINS), include_lowest=True)
    rows = []
    for other in (e for e in SINGLE_SAMPLE if e != CLAIMED_LOWEST):
        ratio = np.log(variance_of(df, CLAIMED_LOWEST) / variance_of(df, other))
        ok = np.isfinite(ratio) & bins.notna()
        for code, r in ratio[ok].groupby(bins.cat.codes[ok]):
            rows.append({"other": other, "sigma_from": SIGMA_BINS[code], "sigma_to": SIGMA_BINS[code + 1],
                         "points": int(r.size), "ratio": float(np.exp(r.mean()))})
    return pd.DataFrame(rows)


def single_sample_runs(sizes: Sizes, config: Config) -> pd.DataFrame:
    """Part 3's runs: each of :data:`SINGLE_SAMPLE` drives at N = 1, the other two as its basket."""
    return pd.concat([gn.train(f"bernoulli-toy:t={SINGLE_TARGET}", [driver], SINGLE_BUDGET, steps=sizes.steps, lr=LR,
                               seeds=sizes.seeds, seed=config.seed, seed_group=sizes.seeds, eval_every=sizes.eval_every,
                               variance_replicates=sizes.variance_replicates,
                               basket=[e for e in SINGLE_SAMPLE if e != driver], threads=config.threads,
                               client=config.client)
                      for driver in SINGLE_SAMPLE], ignore_index=True)


@study("toy-training", "Training on the REBAR/RELAX toy: REINFORCE vs lower-variance estimators, RELAX vs REBAR "
       "(Tucker et al. 2017; Grathwohl et al. 2018)",
       "bernoulli-toy at t = 0.45, 0.499: objective and variance over training steps, several seeds; "
       "single-sample REINFORCE, REBAR, RELAX at t = 0.499")
def run(out: Path, config: Config) -> Outcome:
    sizes = QUICK if config.quick else FULL
    frames = []
    for t in TARGETS:
        frames.append(gn.train(f"bernoulli-toy:t={t}", ESTIMATORS, evals_per_step=EVALS_PER_STEP, steps=sizes.steps,
                               lr=LR, seeds=sizes.seeds, seed=config.seed, seed_group=sizes.seeds,
                               eval_every=sizes.eval_every, variance_replicates=sizes.variance_replicates,
                               threads=config.threads, client=config.client))
    df = pd.concat(frames, ignore_index=True)
    atomic_write_csv(df, out / "train.csv")
    parts, headline, tests = judge(df)
    single_sizes = SINGLE_SIZES[config.quick]
    single = single_sample_runs(single_sizes, config)
    atomic_write_csv(single, out / "train-single.csv")
    single_held, single_headline, single_tests = single_sample_judge(single)
    counts = pd.concat([reached(df).assign(part="1-2", budget=EVALS_PER_STEP),
                        reached(single).assign(part="3", budget=SINGLE_BUDGET)], ignore_index=True)
    atomic_write_csv(counts, out / "reached.csv")
    tests = pd.concat([tests, single_tests], ignore_index=True)
    atomic_write_csv(tests, out / "tests.csv")
    report = train_report.report_text(df, out, title="toy-training: the runs")
    single_figures = [train_report.draw_objective(single, out / SINGLE_FIGURES[0]),
                      train_report.draw_variance(single, out / SINGLE_FIGURES[1])]
    figures = list(train_report.FIGURES) + [f for f in single_figures if f]
    parts[3] = single_held
    verdict = ("held (parts 1-3)" if all(parts.values()) else
               "; ".join(f"part {k} {'held' if v else 'did not hold'}" for k, v in parts.items()))
    headline += single_headline
    method = f"""
Parts 1 and 2: `gradnoise.train` on `bernoulli-toy:t=0.45` and `bernoulli-toy:t=0.499` from theta = 0: Adam (lr {LR}),
{sizes.steps} steps, {sizes.seeds} seeds per estimator (one vectorised seed group, streams derived from the master seed
{config.seed}), {EVALS_PER_STEP} cost evaluations per step (ARM and DisARM one antithetic pair, the others N = 2).
Objective exact by enumeration at every recorded step (every {sizes.eval_every}); variance along the trajectory
from {sizes.variance_replicates} independent estimates at each seed's parameters. A seed reached the optimum when
sigma(theta_T) < {REACHED}. Part 1: Fisher's exact test (one-sided) of each lower-variance estimator
({', '.join(LOWER_VARIANCE)}) against REINFORCE at t = 0.499, Holm-corrected with part 2's tests; it holds when
every such estimator that reaches the optimum in most seeds does so significantly more often, and at least one does.
Part 2: Welch's test of the final exact objective of each relaxation against DisARM at both t, and no seed of the
relaxation at the optimum.

Part 3 (Grathwohl et al. 2018, Fig. 1): **per sample, not per evaluation**: {', '.join(SINGLE_SAMPLE)} each at
N = {SINGLE_BUDGET} sample per step on `bernoulli-toy:t={SINGLE_TARGET}` (REINFORCE 1 evaluation per step, REBAR and
RELAX 3: f(b) and the relaxed cost twice; their adaptive control parameters move at every step), Adam (lr {LR}),
{single_sizes.steps} steps, {single_sizes.seeds} seeds per estimator, runs in `train-single.csv`. At every recorded
step (every {single_sizes.eval_every}) the variances of all three are measured at the same parameters from
{single_sizes.variance_replicates} estimates each (the driving estimator's own and the other two as the basket;
REBAR and RELAX each with their warm-up at the point). Per seed, the mean over the recorded steps of
log(Var(relax) / Var(other)); a one-sided one-sample t-test over the seeds, with its 95% interval (as a ratio:
the geometric mean), along each of the three estimators' trajectories: six tests; and Fisher's exact test of
RELAX reaching the optimum more often than each other (reported, not required). Holm over part 3's tests (its own
family). Part 3 holds when the six variance tests are significant and RELAX reaches the optimum in most seeds.
The tables after the tests are `gradnoise train`'s report of parts 1 and 2, then part 3's final objectives.
"""
    shown = tests.assign(**{c: [fmt(v) for v in tests[c]] for c in ("p", "p_holm", "ratio", "ratio_ci_low", "ratio_ci_high")})
    shown = shown.drop(columns=[c for c in ("other",) if c in shown.columns])
    body = ("### Seeds at the optimum\n\n" + markdown_table(counts) + "\n\n### Tests\n\n"
            + markdown_table(shown.where(shown.notna(), "")) + "\n\n" + report.split("\n", 2)[2].split("## Figures")[0]
            + "## Part 3: Var(relax) / Var(other) by sigma(theta)\n\nDescriptive (not a test): the geometric mean over "
            "the compared points of all three trajectories in each bin of sigma(theta).\n\n"
            + markdown_table(variance_by_sigma(single)) + "\n\n"
            + "## Part 3: final objective of the single-sample runs (mean over seeds, 95% interval)\n\n"
            + markdown_table(train_report.final_table(single)) + "\n")
    outcome = Outcome("toy-training", "Training on the REBAR/RELAX toy (Tucker et al. 2017; Grathwohl et al. 2018)",
                      CLAIM, all(parts.values()), headline, figures, quick=config.quick, verdict=verdict,
                      details={"reached": counts.to_dict("records"), "parts": parts})
    write_study_md(out, outcome, method, body)
    return outcome
