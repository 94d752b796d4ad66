"""Peak memory of a variance measurement at a large R x N."""
from __future__ import annotations

import gradnoise
from .common import ESTIMATORS, cell


class PeakmemVarianceMeasurement:
    """Peak resident memory (bytes) of one variance measurement at a large R x N.

    ``R x N x (event + parameter size)`` exceeds the engine's chunk bound (2**22 elements) 7x
    on ``gaussian-cos`` (R=10^4, N=10^3) and 11x on ``linear-gaussian-vae`` (R=10^3, N=10^2),
    so memory that grows with R (a lost chunk bound, estimates kept with their graphs) shows up.
    The process's peak includes importing torch and ``setup`` (the truth is computed there).
    """

    params = (("gaussian-cos", "linear-gaussian-vae"), ESTIMATORS)
    param_names = ["problem", "estimator"]
    sizes = {"gaussian-cos": (10_000, 1_000), "linear-gaussian-vae": (1_000, 100)}

    def setup(self, problem, estimator):
        self.replicates, self.n = self.sizes[problem]
        self.problem, self.estimator = cell(problem, estimator, self.n)
        self.problem.true_gradient(self.estimator.objective(self.n))

    def peakmem_variance_measurement(self, problem, estimator):
        gradnoise.measure_cell(self.problem, self.estimator, self.n, self.replicates, 0)
