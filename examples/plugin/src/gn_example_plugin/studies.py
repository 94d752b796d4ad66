r"""Study ``split-baseline``: a split-half baseline lowers REINFORCE's variance.

Claim: on :math:`x \sim \mathcal N(1, 1)` with cost :math:`(x-2)^2` (``gaussian-quadratic``), REINFORCE
with the split-half baseline (``reinforce-split``: each sample's baseline is the mean cost of the
other half of the batch) has a smaller variance than REINFORCE without a baseline (``reinforce``)
at every budget N >= 2, for both parameters. Both are unbiased (see
:mod:`gn_example_plugin.estimators`); the baseline removes most of the cost's mean (2) from the
weight of each score. Held when, at every N and for every parameter, the upper end of split's 95%
variance interval lies below the lower end of reinforce's; not held when the opposite separation
shows at some N; undecided otherwise.
"""
from __future__ import annotations

from pathlib import Path

import gradnoise as gn
from gradnoise.analysis.studies.base import Config, Outcome, grid, measure, study, write_study_md
from gradnoise.io import markdown_table

PROBLEM = "gaussian-quadratic"
ESTIMATORS = ("reinforce-split", "reinforce")
TITLE = "A split-half baseline for REINFORCE"
CLAIM = ("On a Gaussian with a quadratic cost, REINFORCE with the split-half baseline has a smaller "
         "variance than REINFORCE without a baseline, at every budget N >= 2.")


@study("split-baseline", TITLE, "reinforce-split has a smaller variance than reinforce at every N (example plugin)")
def run(out_dir: Path, config: Config) -> Outcome:
    budgets, replicates = ((4, 8), 20000) if config.quick else ((2, 4, 8, 16), 200000)
    results = measure(config, grid([gn.make_problem(PROBLEM)], ESTIMATORS, budgets, replicates), out_dir)
    wide = results.pivot_table(index=["param", "budget"], columns="estimator",
                               values=["variance", "variance_ci_low", "variance_ci_high"])
    below = wide["variance_ci_high"]["reinforce-split"] < wide["variance_ci_low"]["reinforce"]
    above = wide["variance_ci_low"]["reinforce-split"] > wide["variance_ci_high"]["reinforce"]
    held = True if below.all() else (False if above.any() else None)
    ratio = (wide["variance"]["reinforce-split"] / wide["variance"]["reinforce"]).rename("split / reinforce")
    outcome = Outcome("split-baseline", TITLE, CLAIM, held,
                      [f"variance ratio split / reinforce between {ratio.min():.3g} and {ratio.max():.3g} "
                       f"over N = {', '.join(map(str, budgets))} (R = {replicates})"], [])
    write_study_md(out_dir, outcome, f"{PROBLEM}, R = {replicates} estimates per cell, seed {config.seed}.",
                   markdown_table(ratio.reset_index()))
    return outcome
