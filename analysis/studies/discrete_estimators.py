r"""Study ``discrete-estimators``: estimators for Bernoulli latents at equal cost (Dong et al. 2020).

Dong, Mnih & Tucker (2020) report that DisARM has lower variance than ARM and than REINFORCE
with a leave-one-out baseline at the same number of function evaluations. Measured on
``digits-bernoulli-vae`` (a VAE with 8 Bernoulli latents trained on binarised sklearn digits) at
the ``start``, ``middle`` and ``end`` training checkpoints: the trace variance of the encoder
gradient (all ``encoder.*`` tensors together) and its bias for ``reinforce-loo``, ``vimco``,
``arm``, ``disarm``, ``gumbel-softmax`` and ``straight-through`` at equal numbers E of cost
evaluations per estimate (ARM and DisARM use N = E/2 antithetic pairs, the others N = E
samples), and the ratio of each estimator's variance to DisARM's with a delta-method interval
on the log scale (:func:`gradnoise.analysis.studies.ratio_interval`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import gradnoise as gn
from gradnoise.io import atomic_write_csv, fmt, fmt_ci, markdown_table

from .base import (
    Config, Outcome, errorbar_series, grid, log_axes, measure, new_figure, ratio_interval, save_figure, study,
    with_options, write_study_md,
)

ESTIMATORS = ("reinforce-loo", "vimco", "arm", "disarm", "gumbel-softmax", "straight-through")
#: the claim's estimators, measured again in the papers' form (estimators.StoppedScoreTerm)
PAPER_FORM = ("reinforce-loo", "arm", "disarm")
REFERENCE = "disarm"
CHALLENGED = ("arm", "reinforce-loo")
GROUP = "encoder"
CLAIM = (
    "Dong, Mnih & Tucker (2020): DisARM has lower variance than ARM and than REINFORCE with a "
    "leave-one-out baseline at the same number of function evaluations. Tested on the encoder of "
    "a VAE with Bernoulli latents trained on digits, at the start, middle and end of training, "
    "beside VIMCO, Gumbel-softmax and straight-through (whose bias is reported too)."
)


@dataclass(frozen=True)
class Sizes:
    problem: str
    checkpoints: tuple[str, ...]
    evaluations: tuple[int, ...]
    replicates: int
    oracle_samples: int | None   # None: the problem's default (2^20), used by VIMCO's IWAE-K truth


FULL = Sizes("digits-bernoulli-vae", ("start", "middle", "end"), (2, 8, 32), 1000, 2**18)
QUICK = Sizes("digits-bernoulli-vae:steps=200", ("start", "end"), (2, 8), 100, 2**12)


def budget_for(estimator: gn.GradientEstimator, evaluations: int) -> int:
    """The N at which ``estimator`` spends exactly ``evaluations`` cost evaluations per estimate."""
    n = evaluations // estimator.cost_evals(1)
    if n < 1 or estimator.cost_evals(n) != evaluations:
        raise ValueError(f"estimator {estimator.name!r} cannot spend exactly {evaluations} evaluations")
    return n


def checkpoint_of(spec: str) -> str:
    return gn.parse_spec(spec)[1]["checkpoint"]


def form_of(spec: str) -> str:
    """``"stopped"`` for the papers' form (:class:`gradnoise.StoppedScoreTerm`), else ``"full"``."""
    return "stopped" if gn.parse_spec(spec)[1].get("score_term") == "stopped" else "full"


def ratio_table(results: pd.DataFrame) -> pd.DataFrame:
    """Var(estimator) / Var(disarm) of the encoder group per checkpoint x evaluations, with intervals."""
    enc = results[results["param"] == GROUP]
    rows = []
    for (problem, evals), g in enc.groupby(["problem", "cost_evals"], sort=False):
        ref = g[g["estimator"] == REFERENCE].iloc[0]
        for other in g[g["estimator"] != REFERENCE].itertuples():
            ratio, low, high = ratio_interval(other.variance, other.variance_ci_low, other.variance_ci_high,
                                              ref["variance"], ref["variance_ci_low"], ref["variance_ci_high"])
            rows.append({
                "problem": problem, "form": form_of(problem), "checkpoint": checkpoint_of(problem),
                "evaluations": int(evals),
                "estimator": other.estimator, "budget": int(other.budget), "variance": other.variance,
                "disarm_variance": ref["variance"], "ratio": float(ratio), "ratio_ci_low": float(low),
                "ratio_ci_high": float(high), "significant": bool(low > 1 or high < 1),
            })
    return pd.DataFrame(rows)


def bias_table(results: pd.DataFrame) -> pd.DataFrame:
    r"""Encoder bias per cell: its norm, relative to the truth's norm, its z, and the error ratio.

    ``error_ratio`` :math:`= \|\bar g - t\|^2 / (\mathrm{tr}\,\widehat{\mathrm{Var}}/R +
    \|s_t\|^2)`: the squared error of the mean over what it would be on average for an unbiased
    estimator (the mean's variance plus the oracle's, if any). About 1 when unbiased, large when
    biased. Unlike the per-coordinate ``bias_z`` it does not break down on coordinates whose
    estimates take a rare value that R draws do not see (see the method section).
    """
    enc = results[results["param"] == GROUP]
    noise = enc["variance"] / enc["replicates"] + enc["truth_se"] ** 2
    return pd.DataFrame({
        "form": enc["problem"].map(form_of), "checkpoint": enc["problem"].map(checkpoint_of),
        "evaluations": enc["cost_evals"].astype(int),
        "estimator": enc["estimator"], "budget": enc["budget"].astype(int), "truth_kind": enc["truth_kind"],
        "bias_norm": enc["bias"], "relative_bias": enc["bias"] / enc["truth"],
        "error_ratio": enc["bias"] ** 2 / noise, "bias_z": enc["bias_z"], "bias_p": enc["bias_p"],
    }).reset_index(drop=True)


def fmt_z(z: float) -> str:
    return "inf" if z == np.inf else fmt(z, 2)


def figure(results: pd.DataFrame, ratios: pd.DataFrame, checkpoints, path: Path) -> str:
    fig, axes = new_figure(2, len(checkpoints), width=3.4, height=2.8)
    enc = results[results["param"] == GROUP]
    for j, ckpt in enumerate(checkpoints):
        top, bottom = axes[0, j], axes[1, j]
        sel = enc[enc["problem"].map(checkpoint_of) == ckpt]
        forms = sel["problem"].map(form_of)
        r = ratios[ratios["checkpoint"] == ckpt]
        for form, style, suffix in (("full", "-", ""), ("stopped", "--", " (papers' form)")):
            errorbar_series(top, sel[forms == form], "cost_evals", "variance", "variance_ci_low",
                            "variance_ci_high", ls=style, label=lambda est: est + suffix)
            errorbar_series(bottom, r[r["form"] == form], "evaluations", "ratio", "ratio_ci_low", "ratio_ci_high",
                            ls=style, label=lambda est: f"{est} / disarm{suffix}")
        bottom.axhline(1.0, color="gray", lw=0.8, ls=":")
        log_axes(top, f"checkpoint: {ckpt}", "cost evaluations per estimate",
                 "encoder gradient variance (trace)" if j == 0 else None)
        log_axes(bottom, "", "cost evaluations per estimate", "variance ratio to disarm" if j == 0 else None)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
    axes[0, 0].legend(fontsize=6)
    axes[1, 0].legend(fontsize=6)
    return save_figure(fig, path)


def judge(ratios: pd.DataFrame) -> tuple[bool, str, list[str]]:
    """Held when Var(arm) and Var(reinforce-loo) are significantly above Var(disarm) in every cell
    of both forms (the suite's full cost, and the papers' form without the zero-mean score term)."""
    sel = ratios[ratios["estimator"].isin(CHALLENGED)]
    above, below = sel["ratio_ci_low"] > 1, sel["ratio_ci_high"] < 1
    held = bool(above.all())
    parts = []
    for form, label in (("full", "full cost"), ("stopped", "papers' form")):
        f = sel["form"] == form
        parts.append(f"{label}: above 1 in {int((above & f).sum())}, below 1 in {int((below & f).sum())} "
                     f"of {int(f.sum())} comparisons")
    verdict = ("held" if held else "did not hold") + " (" + "; ".join(parts) + ")"
    lines = []
    for form, label in (("full", "full cost"), ("stopped", "papers' form, zero-mean score term stopped")):
        for est in CHALLENGED:
            r = sel[(sel["estimator"] == est) & (sel["form"] == form)]
            lines.append(f"Var({est}) / Var(disarm), encoder, {label}, equal evaluations: " + "; ".join(
                f"{fmt_ci(x.ratio, x.ratio_ci_low, x.ratio_ci_high)} ({x.checkpoint}, E={x.evaluations})"
                for x in r.itertuples()))
    return held, verdict, lines


@study("discrete-estimators",
       title="DisARM vs ARM, REINFORCE-LOO, VIMCO and the relaxations on a Bernoulli-latent VAE (Dong et al. 2020)",
       summary="Dong et al. 2020: encoder variance and bias of disarm, arm, reinforce-loo, vimco, "
               "gumbel-softmax, straight-through at equal evaluations on digits-bernoulli-vae")
def run(out: Path, config: Config) -> Outcome:
    sizes = QUICK if config.quick else FULL
    budgets = lambda estimator: [budget_for(estimator, evals) for evals in sizes.evaluations]  # noqa: E731
    cells = []
    for ckpt in sizes.checkpoints:
        problem = gn.make_problem(with_options(sizes.problem, checkpoint=ckpt, oracle_samples=sizes.oracle_samples))
        cells += grid([problem], ESTIMATORS, budgets, sizes.replicates)
        cells += grid([gn.StoppedScoreTerm(problem)], PAPER_FORM, budgets, sizes.replicates)
    results = measure(config, cells, out)
    ratios = ratio_table(results)
    biases = bias_table(results)
    atomic_write_csv(ratios, out / "ratios.csv")
    atomic_write_csv(biases, out / "bias.csv")
    figures = [figure(results, ratios, sizes.checkpoints, out / "encoder_variance.png")]

    held, verdict, headline = judge(ratios)
    for est in ("vimco", "gumbel-softmax", "straight-through"):
        r = ratios[(ratios["estimator"] == est) & (ratios["form"] == "full")]
        headline.append(f"Var({est}) / Var(disarm): " + "; ".join(
            f"{fmt(x.ratio, 2)} ({x.checkpoint}, E={x.evaluations})" for x in r.itertuples()))
    for est in ("gumbel-softmax", "straight-through"):
        b = biases[biases["estimator"] == est]
        headline.append(
            f"{est} encoder bias against the exact ELBO gradient: |bias| / |truth| from "
            f"{fmt(b['relative_bias'].min(), 2)} to {fmt(b['relative_bias'].max(), 2)}; error ratio "
            f"(squared error of the mean over its unbiased expectation) from {fmt(b['error_ratio'].min(), 2)} "
            f"to {fmt(b['error_ratio'].max(), 2)}")
    unbiased = biases[biases["estimator"].isin(["reinforce-loo", "vimco", "arm", "disarm"])]
    headline.append(
        f"unbiased estimators (reinforce-loo, vimco, arm, disarm, both forms): error ratio from "
        f"{fmt(unbiased['error_ratio'].min(), 2)} to {fmt(unbiased['error_ratio'].max(), 2)} "
        f"(about 1 expected; {len(unbiased)} cells)")

    enc = results[results["param"] == GROUP].copy()
    enc["checkpoint"] = enc["problem"].map(checkpoint_of)
    enc["form"] = enc["problem"].map(form_of)
    var_view = enc.assign(**{
        "encoder variance [95% CI]": [fmt_ci(r.variance, r.variance_ci_low, r.variance_ci_high) for r in enc.itertuples()],
        "relative bias": [fmt(r.bias / r.truth, 2) if r.truth else "nan" for r in enc.itertuples()],
        "error ratio": [fmt(r.bias**2 / (r.variance / r.replicates + r.truth_se**2), 2) for r in enc.itertuples()],
        "bias z": [fmt_z(v) for v in enc["bias_z"]],
        "truth": [f"{r.truth_kind} (se {fmt(r.truth_se, 2)})" for r in enc.itertuples()],
    })[["form", "checkpoint", "cost_evals", "estimator", "budget", "encoder variance [95% CI]", "relative bias",
        "error ratio", "bias z", "truth"]]
    ratio_view = ratios.assign(**{
        "ratio to disarm [95% CI]": [fmt_ci(r.ratio, r.ratio_ci_low, r.ratio_ci_high) for r in ratios.itertuples()],
    })[["form", "checkpoint", "evaluations", "estimator", "budget", "ratio to disarm [95% CI]"]]
    method = f"""
Problem `{sizes.problem}` (VAE with {gn.make_problem(sizes.problem).latent} Bernoulli latents, a
Bernoulli decoder and MLPs, trained with a seed and cached; see `estimators/problems/digits.py`) frozen at
checkpoints {', '.join(sizes.checkpoints)}. Equal cost: E in {{{', '.join(map(str, sizes.evaluations))}}}
cost evaluations per estimate; `arm` and `disarm` evaluate the cost twice per sample (an antithetic
pair), so they run at N = E/2, the others at N = E. R = {sizes.replicates} independent estimates
per cell; master seed {config.seed}. Truths: the exact ELBO gradient by enumerating the 2^latent
states (`reinforce-loo`, `arm`, `disarm`, and the relaxations, which target the ELBO with a bias);
`vimco` estimates the gradient of the IWAE bound with K = E, whose truth is a labelled oracle from
`vimco` itself ({sizes.oracle_samples or 2**20} samples, with its standard error), so its variance
is of another objective's gradient. `gumbel-softmax` (temperature 1) is unbiased for Maddison et
al. (2017)'s relaxed ELBO, not for the ELBO; `straight-through` (temperature 1) targets the ELBO
and is biased. The encoder row summarises all `encoder.*` tensors together: its variance is the
trace of the covariance, with the engine's kurtosis-adjusted 95% interval; its bias is the
Euclidean norm of the mean's error, `relative bias` that norm over the truth's norm, `bias z` the
Bonferroni z over coordinates. That z breaks down on this model: trained encoders saturate some
latents (|logit| > 10), and the gradient coordinates of such a latent take a rare value with
probability below 1e-4, which R draws do not see; their sample standard error is then near zero and
z is huge or infinite even for an unbiased estimator. The **error ratio**
|mean - truth|^2 / (trace Var / R + |truth se|^2) does not: it is the squared error of the mean
over its expectation for an unbiased estimator, about 1 when unbiased and large when biased.
**Two forms of the cost.** The suite's cost f = log p(x, z) - log q(z|x) depends on the encoder's
parameters at fixed z, and every estimator adds the average of that direct gradient, which carries
the zero-mean term -grad log q(z|x) (`form` = `full`). The ARM and DisARM papers write the encoder
gradient without it; `form` = `stopped` measures `reinforce-loo`, `arm` and `disarm` again on
`gradnoise.StoppedScoreTerm(problem)`, whose cost stops the encoder's parameters inside log q:
the same ELBO gradient (the dropped term has mean zero), the same truth, less noise.
**Ratio interval: delta method on the log scale** (independently
seeded cells). The claim is judged held if Var(arm) / Var(disarm) and Var(reinforce-loo) /
Var(disarm) both have intervals above 1 at every checkpoint and E, in both forms.
"""
    body = ("### Variance ratio to DisARM (encoder, equal evaluations)\n\n" + markdown_table(ratio_view)
            + "\n\n### Encoder gradient variance and bias\n\n" + markdown_table(var_view)
            + "\n\nPer-tensor rows and the decoder rows are in `results.csv`; `bias.csv` holds the "
            "encoder bias of every cell.")
    outcome = Outcome("discrete-estimators", "DisARM vs ARM and REINFORCE-LOO at equal evaluations (Dong et al. 2020)",
                      CLAIM, held, headline, figures, quick=config.quick, verdict=verdict,
                      details={"ratios": ratios[["form", "checkpoint", "evaluations", "estimator", "ratio", "ratio_ci_low",
                                                 "ratio_ci_high"]].to_dict("records")})
    write_study_md(out, outcome, method, body)
    return outcome
