r"""Study ``vae-vs-reinforce``: the reparameterised VAE gradient against REINFORCE (Burda et al. 2016).

Burda, Grosse & Salakhutdinov (2016), citing Kingma & Welling (2013): the standard VAE gradient
and REINFORCE are unbiased for the same ELBO gradient, but the VAE gradient "tends to have lower
variance in practice because it makes use of the log-likelihood gradients with respect to the
latent variables". Measured on ``digits-vae`` (a VAE trained on binarised sklearn digits) at the
``start``, ``middle`` and ``end`` training checkpoints: the trace variance of the encoder
gradient (all ``encoder.*`` tensors together) for ``reinforce``, ``reinforce-loo``,
``reinforce-optimal`` and ``reparam`` at budgets N, and the ratio of each REINFORCE variant's
variance to ``reparam``'s, with a delta-method interval on the log scale
(:func:`gradnoise.analysis.studies.ratio_interval`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import gradnoise as gn
from gradnoise.io import atomic_write_csv, fmt, fmt_ci, markdown_table

from .base import (
    Config, Outcome, errorbar_series, grid, log_axes, measure, new_figure, ratio_interval,
    save_figure, study, with_options, write_study_md,
)

SCORE_FUNCTION = ("reinforce", "reinforce-loo", "reinforce-optimal")
PATHWISE = "reparam"
GROUP = "encoder"
CLAIM = (
    "Burda et al. (2016), citing Kingma & Welling (2013): the reparameterised VAE gradient has lower "
    "variance than the REINFORCE gradient of the same objective, because it uses the gradient of "
    "log p(x|z) with respect to z. Tested on the encoder parameters of a VAE trained on digits, at "
    "the start, middle and end of training, against REINFORCE without and with baselines."
)


@dataclass(frozen=True)
class Sizes:
    problem: str
    checkpoints: tuple[str, ...]
    budgets: tuple[int, ...]
    replicates: int
    oracle_samples: int | None   # None: the problem's default (2^20)


FULL = Sizes("digits-vae", ("start", "middle", "end"), (2, 10, 100), 1000, None)
QUICK = Sizes("digits-vae:steps=200", ("start", "end"), (2, 10), 100, 2**12)


def ratio_table(results: pd.DataFrame) -> pd.DataFrame:
    """Var(score function) / Var(reparam) of the encoder group per checkpoint x budget, with intervals."""
    enc = results[results["param"] == GROUP]
    rows = []
    for (problem, n), g in enc.groupby(["problem", "budget"], sort=False):
        pw = g[g["estimator"] == PATHWISE].iloc[0]
        for sf in g[g["estimator"].isin(SCORE_FUNCTION)].itertuples():
            ratio, low, high = ratio_interval(sf.variance, sf.variance_ci_low, sf.variance_ci_high,
                                              pw["variance"], pw["variance_ci_low"], pw["variance_ci_high"])
            rows.append({
                "problem": problem, "checkpoint": gn.parse_spec(problem)[1]["checkpoint"], "budget": int(n),
                "estimator": sf.estimator, "variance": sf.variance, "reparam_variance": pw["variance"],
                "ratio": float(ratio), "ratio_ci_low": float(low), "ratio_ci_high": float(high),
                "cost_evals": int(sf.cost_evals), "reparam_cost_evals": int(pw["cost_evals"]),
                "significant": bool(low > 1 or high < 1),
            })
    return pd.DataFrame(rows)


def figure(results: pd.DataFrame, ratios: pd.DataFrame, checkpoints, path: Path) -> str:
    fig, axes = new_figure(2, len(checkpoints), width=3.4, height=2.8)
    enc = results[results["param"] == GROUP]
    for j, ckpt in enumerate(checkpoints):
        top, bottom = axes[0, j], axes[1, j]
        sel = enc[enc["problem"].map(lambda p: gn.parse_spec(p)[1]["checkpoint"]) == ckpt]
        errorbar_series(top, sel, "budget", "variance", "variance_ci_low", "variance_ci_high")
        errorbar_series(bottom, ratios[ratios["checkpoint"] == ckpt], "budget", "ratio", "ratio_ci_low",
                        "ratio_ci_high", label=lambda est: f"{est} / reparam")
        bottom.axhline(1.0, color="gray", lw=0.8, ls=":")
        log_axes(top, f"checkpoint: {ckpt}", "budget N", "encoder gradient variance (trace)" if j == 0 else None)
        log_axes(bottom, "", "budget N", "variance ratio to reparam" if j == 0 else None)
    axes[0, 0].legend(fontsize=6)
    axes[1, 0].legend(fontsize=6)
    return save_figure(fig, path)


@study("vae-vs-reinforce", title="VAE (reparameterised) gradient vs REINFORCE on a digits VAE (Burda et al. 2016)",
       summary="Burda et al. 2016: encoder-gradient variance of reinforce(-loo, -optimal) vs reparam on digits-vae")
def run(out: Path, config: Config) -> Outcome:
    sizes = QUICK if config.quick else FULL
    problems = [gn.make_problem(with_options(sizes.problem, checkpoint=ckpt, oracle_samples=sizes.oracle_samples))
                for ckpt in sizes.checkpoints]
    cells = grid(problems, SCORE_FUNCTION + (PATHWISE,), sizes.budgets, sizes.replicates)
    results = measure(config, cells, out)
    ratios = ratio_table(results)
    atomic_write_csv(ratios, out / "ratios.csv")
    figures = [figure(results, ratios, sizes.checkpoints, out / "encoder_variance.png")]

    held = bool((ratios["ratio_ci_low"] > 1).all())
    headline = []
    for est in SCORE_FUNCTION:
        r = ratios[ratios["estimator"] == est]
        lo, hi = r.loc[r["ratio"].idxmin()], r.loc[r["ratio"].idxmax()]
        headline.append(
            f"Var({est}) / Var(reparam), encoder, over checkpoints x N = {', '.join(map(str, sizes.budgets))}: "
            f"from {fmt_ci(lo['ratio'], lo['ratio_ci_low'], lo['ratio_ci_high'])} ({lo['checkpoint']}, N={lo['budget']}) "
            f"to {fmt_ci(hi['ratio'], hi['ratio_ci_low'], hi['ratio_ci_high'])} ({hi['checkpoint']}, N={hi['budget']})")
    for n in sizes.budgets:
        r = ratios[(ratios["estimator"] == "reinforce") & (ratios["budget"] == n)]
        headline.append(f"Var(reinforce) / Var(reparam) at N = {n}: " + "; ".join(
            f"{fmt_ci(x.ratio, x.ratio_ci_low, x.ratio_ci_high)} ({x.checkpoint})" for x in r.itertuples()))
    bad = ratios[ratios["ratio_ci_low"] <= 1]
    headline.append("reparam has significantly lower encoder variance in every cell"
                    if bad.empty else
                    "not significantly lower in: " + "; ".join(f"{r.estimator} at {r.checkpoint}, N={r.budget}"
                                                               for r in bad.itertuples()))
    enc = results[results["param"] == GROUP].copy()
    enc["checkpoint"] = enc["problem"].map(lambda p: gn.parse_spec(p)[1]["checkpoint"])
    var_view = enc.assign(**{
        "encoder variance [95% CI]": [fmt_ci(r.variance, r.variance_ci_low, r.variance_ci_high) for r in enc.itertuples()],
        "bias z": [fmt(v, 2) for v in enc["bias_z"]],
        "truth": [f"{r.truth_kind} (se {fmt(r.truth_se, 2)})" for r in enc.itertuples()],
    })[["checkpoint", "estimator", "budget", "cost_evals", "encoder variance [95% CI]", "bias z", "truth"]]
    ratio_view = ratios.assign(**{
        "ratio to reparam [95% CI]": [fmt_ci(r.ratio, r.ratio_ci_low, r.ratio_ci_high) for r in ratios.itertuples()],
    })[["checkpoint", "budget", "estimator", "ratio to reparam [95% CI]", "cost_evals", "reparam_cost_evals"]]
    dec = results[results["param"] == "decoder"]
    method = f"""
Problem `{sizes.problem}` (VAE with Gaussian latents and a Bernoulli decoder, MLPs, trained with a
seed and cached; see `estimators/problems/digits.py`) frozen at checkpoints {', '.join(sizes.checkpoints)};
budgets N in {{{', '.join(map(str, sizes.budgets))}}} (N >= 2 so that `reinforce-loo` runs at every
budget); R = {sizes.replicates} independent estimates per cell; master seed {config.seed}. Truth:
the problem's ELBO-gradient oracle from `reparam`
({f"{sizes.oracle_samples} samples" if sizes.oracle_samples else "2^20 samples"}, labelled, with its
standard error). The encoder row (`param` = `encoder` in `results.csv`) summarises all `encoder.*`
tensors together: its variance is the trace of the covariance of the concatenated gradient, with
the engine's kurtosis-adjusted 95% interval. **Ratio interval: delta method on the log scale**
(not a bootstrap): the two variances come from independently seeded cells and each interval is
symmetric in log, so log(ratio) +- 1.96 sqrt(s_1^2 + s_2^2) with s_i = (log high_i - log low_i) / 3.92.
`reinforce-optimal` spends 2N cost evaluations (N pilot samples for its baseline), the others N;
ratios are at equal N. The claim is judged held if every REINFORCE variant's ratio interval lies
above 1 at every checkpoint and budget.
"""
    body = ("### Variance ratio to reparam (encoder)\n\n" + markdown_table(ratio_view)
            + "\n\n### Encoder gradient variance\n\n" + markdown_table(var_view)
            + f"\n\nDecoder gradients are the same Monte Carlo average of grad_theta log p(x, z) for every "
            f"estimator here (the score term does not touch the decoder); their rows (`param` = `decoder`, "
            f"{len(dec)} rows) and the per-tensor rows are in `results.csv`.")
    outcome = Outcome("vae-vs-reinforce", "VAE gradient vs REINFORCE (Burda et al. 2016)", CLAIM, held,
                      headline, figures, quick=config.quick,
                      details={"ratios": ratios[["checkpoint", "budget", "estimator", "ratio", "ratio_ci_low",
                                                 "ratio_ci_high"]].to_dict("records")})
    write_study_md(out, outcome, method, body)
    return outcome
