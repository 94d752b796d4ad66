r"""Study ``split-vs-loo``: the leave-one-out baseline beats the split-half one.

Claim: on :math:`x \sim \mathcal N(1, 1)` with cost :math:`(x-2)^2` (``gaussian-quadratic``), the
variance of REINFORCE with the split-half baseline (``reinforce-split``, each baseline the mean of
N/2 costs) is larger than with the leave-one-out baseline (``reinforce-loo``, the mean of N-1
costs) at every budget N: both are unbiased (see :mod:`gn_example_plugin.estimators`), and the
noisier baseline leaves more of the cost's noise in the estimate. Held when, at every N and for
every parameter, the lower end of split's 95% variance interval lies above the upper end of
loo's; not held when the opposite separation shows at some N; undecided otherwise.
"""
from __future__ import annotations

from pathlib import Path

import gradnoise as gn
from gradnoise.analysis.studies.base import Config, Outcome, grid, measure, study, write_study_md
from gradnoise.io import markdown_table

PROBLEM = "gaussian-quadratic"
ESTIMATORS = ("reinforce-split", "reinforce-loo")
CLAIM = ("On a Gaussian with a quadratic cost, REINFORCE with the split-half baseline has a larger "
         "variance than with the leave-one-out baseline, at every budget N.")


@study("split-vs-loo", "Split-half against leave-one-out baselines",
       "reinforce-split has a larger variance than reinforce-loo at every N (example plugin)")
def run(out_dir: Path, config: Config) -> Outcome:
    budgets, replicates = ((2, 4), 400) if config.quick else ((2, 4, 8, 16), 4000)
    results = measure(config, grid([gn.make_problem(PROBLEM)], ESTIMATORS, budgets, replicates), out_dir)
    wide = results.pivot_table(index=["param", "budget"], columns="estimator",
                               values=["variance", "variance_ci_low", "variance_ci_high"])
    above = (wide["variance_ci_low"]["reinforce-split"] > wide["variance_ci_high"]["reinforce-loo"])
    below = (wide["variance_ci_high"]["reinforce-split"] < wide["variance_ci_low"]["reinforce-loo"])
    held = True if above.all() else (False if below.any() else None)
    ratio = (wide["variance"]["reinforce-split"] / wide["variance"]["reinforce-loo"]).rename("split / loo")
    table = ratio.reset_index()
    outcome = Outcome("split-vs-loo", "Split-half against leave-one-out baselines", CLAIM, held,
                      [f"variance ratio split / loo between {ratio.min():.3g} and {ratio.max():.3g} "
                       f"over N = {', '.join(map(str, budgets))} (R = {replicates})"], [])
    write_study_md(out_dir, outcome, f"{PROBLEM}, R = {replicates} estimates per cell, seed {config.seed}.",
                   markdown_table(table))
    return outcome
