"""Runtime: one gradient estimate, and one full variance measurement, per cell.

Timed in CPU seconds of the benchmark process (``timer = time.process_time``), not wall-clock
seconds: with one torch thread (``benchmarks/common.py``) that is the estimator's own work, and
other processes on a shared machine, which stretch wall-clock time by up to 3x between two runs
of the same code, do not count. Time spent waiting (none here: no I/O, no sleeping) would not
count either.
"""
from __future__ import annotations

import time

import gradnoise
from .common import BUDGETS, ESTIMATORS, PROBLEMS, cell, seed_torch


class TimeOneEstimate:
    """Seconds for one N-sample gradient estimate of one replicate.

    What a training step pays: ``estimator(problem, params, N)`` = check, prepare (e.g. the EMA
    baseline's warm-up, the optimal baseline's pilot batch) and estimate, one backward pass.
    """

    params = (PROBLEMS, ESTIMATORS, BUDGETS)
    param_names = ["problem", "estimator", "N"]
    timer = time.process_time

    def setup(self, problem, estimator, n):
        self.problem, self.estimator = cell(problem, estimator, n)
        self.leaves = gradnoise.replicate(self.problem.params, (1,))
        seed_torch(self.problem, self.estimator, n)

    def time_one_estimate(self, problem, estimator, n):
        self.estimator(self.problem, self.leaves, n)


class TimeVarianceMeasurement:
    """Seconds for one variance measurement: R=1000 N-sample estimates and their statistics.

    ``gradnoise.measure_cell``, the engine's unit of work (vectorised replicates, chunked, then
    summarised against the truth); the truth itself is computed in ``setup``, not timed.
    """

    params = (PROBLEMS, ESTIMATORS, BUDGETS)
    param_names = ["problem", "estimator", "N"]
    replicates = 1000
    timer = time.process_time

    def setup(self, problem, estimator, n):
        self.problem, self.estimator = cell(problem, estimator, n)
        self.problem.true_gradient(self.estimator.objective(n))

    def time_variance_measurement(self, problem, estimator, n):
        gradnoise.measure_cell(self.problem, self.estimator, n, self.replicates, 0)
