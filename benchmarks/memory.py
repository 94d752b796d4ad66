"""Peak memory of a variance measurement at a large R x N."""
from __future__ import annotations

import gradnoise
from .common import ESTIMATORS, cell, label_of, listed, one_thread, plugin_problems

#: ``{problem: (R, N)}``: replicates and budget of the measurement on each problem.
SIZES = {"gaussian-cos": (10_000, 1_000), "linear-gaussian-vae": (1_000, 100)}
#: a plugin's problems (docs/plugins.md) at the smaller of the two sizes
SIZES.update({spec: (1_000, 100) for spec in plugin_problems()})
#: ``{"problem, estimator": (problem, estimator)}`` for every estimator that can run on a problem
#: of :data:`SIZES` at its N (:func:`benchmarks.common.listed`): the values of the ``cell`` parameter.
CELLS = {label_of(spec, name): (spec, name) for spec, (_, n) in SIZES.items() for name in ESTIMATORS
         if listed(spec, name, n)}


class PeakmemVarianceMeasurement:
    """Peak resident memory (bytes) of one variance measurement at a large R x N.

    ``R x N x (event + parameter size)`` exceeds the engine's chunk bound (2**22 elements) 7x
    on ``gaussian-cos`` (R=10^4, N=10^3) and 11x on ``linear-gaussian-vae`` (R=10^3, N=10^2),
    so memory that grows with R (a lost chunk bound, estimates kept with their graphs) shows up.
    The process's peak includes importing torch and ``setup`` (the truth is computed there).
    """

    params = [list(CELLS)]
    param_names = ["cell"]

    def setup(self, label):
        one_thread()
        spec, name = CELLS[label]
        self.replicates, self.n = SIZES[spec]
        self.problem, self.estimator = cell(spec, name, self.n)
        self.problem.true_gradient(self.estimator.objective(self.n))

    def peakmem_variance_measurement(self, label):
        gradnoise.measure_cell(self.problem, self.estimator, self.n, self.replicates, 0)
