r"""Study ``discrete-training``: training a Bernoulli VAE at equal evaluations (Dong, Mnih & Tucker 2020).

The DisARM paper's training figures: the training ELBO of a VAE with Bernoulli latents over
training, each estimator at the same number of cost evaluations per step. Here
``digits-bernoulli-vae`` from its initialisation (``checkpoint=start``: the model before any
training; 8 Bernoulli latents, MLP encoder and decoder), trained on ``points`` binarised digits
(the problem's held-out images; the objective is the ELBO summed over them) by
:func:`gradnoise.train` with each estimator of :data:`ESTIMATORS` at :data:`EVALS_PER_STEP`
evaluations per step (ARM and DisARM N = B/2 antithetic pairs, the others N = B), Adam, several
seeds. The recorded objective is the negative ELBO for every estimator (VIMCO's gradient targets
the IWAE-K bound; its ELBO is recorded all the same), exact by enumerating the 2^8 latent states.

:data:`PAPER_FORM` estimators are trained again in the papers' form of the cost
(:class:`gradnoise.StoppedScoreTerm`: the encoder stopped inside log q, as Yin & Zhou 2019 and
Dong et al. 2020 write the encoder gradient).

Verdict: the final negative ELBO of DisARM against ARM and against REINFORCE-LOO in each form
(Welch's t-test over seeds, Holm over the four comparisons): *held* when DisARM's is lower in all,
significantly; *did not hold* when any is significantly higher; otherwise *not shown* at this size.

**REBAR and RELAX at equal evaluations** (:data:`EQUAL_EVALS`), as Dong et al. (2020) compare them.
They spend 3N evaluations per estimate (:math:`f(b)` and the relaxed cost twice), so they cannot
run at :data:`EVALS_PER_STEP` = 4; a second arm runs at B = :data:`EQUAL_EVALS` = 12 evaluations
per step, the least common multiple of 3 (REBAR, RELAX: N = 4), 2 (ARM, DisARM: N = 6 pairs) and
1 (REINFORCE-LOO: N = 12), in the full form, from the same initialisation, with fewer steps and
seeds than the main arm (:data:`EQUAL_SIZES`) to keep the study's time modest; its total
evaluations per run (steps x 12) exceed the main arm's (steps x 4). Its question, reported either
way and apart from the claim's verdict: does RELAX (and REBAR) end at a lower negative ELBO than
DisARM, ARM and REINFORCE-LOO at equal evaluations? Welch's t-test of the final negative ELBO for
each of :data:`ADAPTIVE` against each of :data:`BASELINES` (six tests, Holm over them): a
comparison is *lower*, *higher* (significant) or *not significant*.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import gradnoise as gn
from gradnoise.io import atomic_write_csv, fmt, markdown_table

from .. import train as train_report
from .base import Config, Outcome, study, write_study_md

#: the estimators trained (add one here; each runs at EVALS_PER_STEP evaluations per step)
ESTIMATORS = ["reinforce-loo", "vimco", "arm", "disarm", "gumbel-softmax", "straight-through"]
#: the claim's estimators, trained again in the papers' form (gradnoise.StoppedScoreTerm)
PAPER_FORM = ["reinforce-loo", "arm", "disarm"]
REFERENCE = "disarm"
CHALLENGED = ("arm", "reinforce-loo")
EVALS_PER_STEP = 4
LR = 3e-3
#: the equal-evaluation arm for REBAR and RELAX (3N evaluations each): B = 12 evaluations per step
EQUAL_EVALS = 12
ADAPTIVE = ["rebar", "relax"]
BASELINES = ["disarm", "arm", "reinforce-loo"]
EQUAL_FIGURE = "train-equal-evals-objective.png"
ALPHA = 0.05
CLAIM = ("Dong, Mnih & Tucker (2020): training a VAE with Bernoulli latents, DisARM reaches a better training "
         "ELBO than ARM and than REINFORCE with a leave-one-out baseline at the same number of function "
         "evaluations.")


@dataclass(frozen=True)
class Sizes:
    problem: str
    steps: int
    seeds: int
    eval_every: int


FULL = Sizes("digits-bernoulli-vae:checkpoint=start,points=64", steps=1500, seeds=5, eval_every=50)
QUICK = Sizes("digits-bernoulli-vae:checkpoint=start,points=8,steps=200", steps=60, seeds=2, eval_every=20)
#: the equal-evaluation arm's sizes (full, quick): the problem of FULL / QUICK, fewer steps and seeds
EQUAL_SIZES = {False: Sizes(FULL.problem, steps=750, seeds=4, eval_every=50),
               True: Sizes(QUICK.problem, steps=30, seeds=2, eval_every=10)}


def form_of(spec: str) -> str:
    """``stopped`` for the papers' form (:class:`gradnoise.StoppedScoreTerm`), else ``full``."""
    return "stopped" if "score_term=stopped" in spec else "full"


def judge(df: pd.DataFrame) -> tuple[bool | None, str, list[str], pd.DataFrame]:
    """``(held, verdict, headline, tests)`` from the final objectives (module docstring)."""
    pairs = train_report.pairwise(df)
    rows = []
    for problem in df["problem"].unique():
        here = pairs[pairs["problem"] == problem]
        for other in CHALLENGED:
            r = here[here["first"].isin([REFERENCE, other]) & here["second"].isin([REFERENCE, other])].iloc[0]
            diff = r["difference"] if r["first"] == REFERENCE else -r["difference"]
            rows.append({"form": form_of(problem), "comparison": f"{REFERENCE} - {other}", "difference": diff,
                         "p": r["p"]})
    tests = pd.DataFrame(rows)
    tests["p_holm"] = train_report.holm(tests["p"].to_numpy())
    better = (tests["difference"] < 0) & (tests["p_holm"] < ALPHA)
    worse = (tests["difference"] > 0) & (tests["p_holm"] < ALPHA)
    held = True if better.all() else False if worse.any() else None
    verdict = {True: "held", False: "did not hold", None: "not shown at this size"}[held]
    finals = train_report.final_table(df)
    headline = [f"final -ELBO {r.estimator} ({form_of(r.problem)} form): {fmt(r.final_objective, 5)} "
                f"[{fmt(r.ci_low, 5)}, {fmt(r.ci_high, 5)}] ({r.seeds} seeds, {r.cost_evals} evaluations)"
                for r in finals.itertuples()]
    headline += [f"{r.comparison} ({r.form} form): {fmt(r.difference, 3)} (Welch p {fmt(r.p, 2)}, "
                 f"Holm {fmt(r.p_holm, 2)})" for r in tests.itertuples()]
    return held, verdict, headline, tests


def equal_evals_judge(df: pd.DataFrame) -> tuple[str, list[str], pd.DataFrame]:
    """The equal-evaluation arm (module docstring): ``(verdict, headline, tests)``; each of
    :data:`ADAPTIVE` against each of :data:`BASELINES`, Welch over seeds, Holm over the six."""
    pairs = train_report.pairwise(df)
    rows = []
    for est in ADAPTIVE:
        for other in BASELINES:
            r = pairs[pairs["first"].isin([est, other]) & pairs["second"].isin([est, other])].iloc[0]
            diff = r["difference"] if r["first"] == est else -r["difference"]
            rows.append({"evaluations_per_step": EQUAL_EVALS, "comparison": f"{est} - {other}", "estimator": est,
                         "other": other, "difference": diff, "p": r["p"]})
    tests = pd.DataFrame(rows)
    tests["p_holm"] = train_report.holm(tests["p"].to_numpy())
    tests["result"] = ["lower" if p < ALPHA and d < 0 else "higher" if p < ALPHA else "not significant"
                       for d, p in zip(tests["difference"], tests["p_holm"])]
    finals = train_report.final_table(df)
    headline = [f"B = {EQUAL_EVALS} evaluations per step: final -ELBO {r.estimator} (N = {r.budget}): "
                f"{fmt(r.final_objective, 5)} [{fmt(r.ci_low, 5)}, {fmt(r.ci_high, 5)}] ({r.seeds} seeds, "
                f"{r.cost_evals} evaluations)" for r in finals.itertuples()]
    headline += [f"B = {EQUAL_EVALS}: {r.comparison}: {fmt(r.difference, 3)} (Welch p {fmt(r.p, 2)}, Holm "
                 f"{fmt(r.p_holm, 2)}): {r.result}" for r in tests.itertuples()]
    words = {"lower": "lower than", "higher": "higher than", "not significant": "not significantly different from"}
    verdict = "; ".join(
        f"{est} " + ", ".join(f"{words[result]} {', '.join(g['other'])}" for result, g in
                              tests[tests["estimator"] == est].groupby("result", sort=False))
        for est in ADAPTIVE)
    verdict = f"REBAR and RELAX at equal evaluations (B = {EQUAL_EVALS}, final -ELBO): {verdict}"
    headline.append(verdict)
    return verdict, headline, tests


@study("discrete-training", "Training a Bernoulli VAE at equal evaluations: DisARM vs ARM and REINFORCE-LOO; "
       "REBAR and RELAX at 12 evaluations per step",
       "digits-bernoulli-vae from its initialisation; training ELBO over steps, several seeds (Dong et al. 2020); "
       "REBAR and RELAX at 12 evaluations per step")
def run(out: Path, config: Config) -> Outcome:
    sizes = QUICK if config.quick else FULL
    problem = gn.make_problem(sizes.problem)
    settings = dict(evals_per_step=EVALS_PER_STEP, steps=sizes.steps, lr=LR, seeds=sizes.seeds, seed=config.seed,
                    seed_group=sizes.seeds, eval_every=sizes.eval_every, objective=gn.Objective(),
                    threads=config.threads, client=config.client)
    df = pd.concat([gn.train(problem, ESTIMATORS, **settings),
                    gn.train(gn.StoppedScoreTerm(problem), PAPER_FORM, **settings)], ignore_index=True)
    atomic_write_csv(df, out / "train.csv")
    held, verdict, headline, tests = judge(df)
    atomic_write_csv(tests, out / "tests.csv")
    equal_sizes = EQUAL_SIZES[config.quick]
    equal = gn.train(gn.make_problem(equal_sizes.problem), ADAPTIVE + BASELINES,
                     **{**settings, "evals_per_step": EQUAL_EVALS, "steps": equal_sizes.steps,
                        "seeds": equal_sizes.seeds, "seed_group": equal_sizes.seeds,
                        "eval_every": equal_sizes.eval_every})
    atomic_write_csv(equal, out / "train-equal-evals.csv")
    equal_verdict, equal_headline, equal_tests = equal_evals_judge(equal)
    atomic_write_csv(equal_tests, out / "tests-equal-evals.csv")
    headline += equal_headline
    report = train_report.report_text(df, out, title="discrete-training: the runs")
    figures = [f for f in train_report.FIGURES if (out / f).exists() and f != "train-variance.png"]
    figures.append(train_report.draw_objective(equal, out / EQUAL_FIGURE))
    method = f"""
`gradnoise.train` on `{sizes.problem}` from its initialisation: Adam (lr {LR}), {sizes.steps} steps, {sizes.seeds}
seeds per estimator (one vectorised seed group, streams derived from the master seed {config.seed}),
{EVALS_PER_STEP} cost evaluations per step (`arm`, `disarm`: N = {EVALS_PER_STEP // 2} antithetic pairs; the others
N = {EVALS_PER_STEP}; `vimco` K = {EVALS_PER_STEP}). Every estimator uses the suite's cost
log p(x, z) - log q(z|x) (`full` form: the encoder's direct term, of mean zero, included); {', '.join(PAPER_FORM)}
are trained again in the papers' form (`stopped`: `gradnoise.StoppedScoreTerm`, the encoder stopped inside
log q; the same ELBO and gradient in expectation, less noise). The negative ELBO, summed over the training
points, is recorded exactly (enumeration of the 2^8 latent states) every {sizes.eval_every} steps.
Verdict: Welch's t-test of the final negative ELBO over seeds, DisARM against ARM and REINFORCE-LOO in each
form, Holm-corrected over the four; held when DisARM is significantly lower in all four, did not hold when it
is significantly higher in any, else not shown.

Equal-evaluation arm for REBAR and RELAX (3N evaluations per estimate, so not at B = {EVALS_PER_STEP}):
`{equal_sizes.problem}`, full form, B = {EQUAL_EVALS} evaluations per step (`rebar`, `relax`: N = {EQUAL_EVALS // 3};
`arm`, `disarm`: N = {EQUAL_EVALS // 2} pairs; `reinforce-loo`: N = {EQUAL_EVALS}), Adam (lr {LR}), {equal_sizes.steps}
steps, {equal_sizes.seeds} seeds, runs in `train-equal-evals.csv`, figure `{EQUAL_FIGURE}`. Welch's t-test of the
final negative ELBO, each of {', '.join(ADAPTIVE)} against each of {', '.join(BASELINES)}, Holm over the six
(`tests-equal-evals.csv`); reported apart from the claim's verdict.
"""
    body = ("### DisARM against ARM and REINFORCE-LOO (final -ELBO)\n\n"
            + markdown_table(tests.assign(difference=[fmt(v) for v in tests["difference"]],
                                          p=[fmt(v) for v in tests["p"]], p_holm=[fmt(v) for v in tests["p_holm"]]))
            + f"\n\n### REBAR and RELAX at equal evaluations (B = {EQUAL_EVALS}, final -ELBO)\n\n"
            + markdown_table(equal_tests.assign(difference=[fmt(v) for v in equal_tests["difference"]],
                                                p=[fmt(v) for v in equal_tests["p"]],
                                                p_holm=[fmt(v) for v in equal_tests["p_holm"]]))
            + "\n\n" + markdown_table(train_report.final_table(equal))
            + "\n\n" + report.split("\n", 2)[2].split("## Figures")[0])
    outcome = Outcome("discrete-training", "Training a Bernoulli VAE at equal evaluations (Dong et al. 2020)",
                      CLAIM, held, headline, figures, quick=config.quick, verdict=f"{verdict}; {equal_verdict}",
                      details={"tests": tests.to_dict("records"), "equal_evals_tests": equal_tests.to_dict("records")})
    write_study_md(out, outcome, method, body)
    return outcome
