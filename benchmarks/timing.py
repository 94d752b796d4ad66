"""Runtime: one gradient estimate, and one full variance measurement, per cell.

One asv parameter, ``cell``: the labels ``"problem, estimator, N"`` of the cells that can run
(:data:`benchmarks.common.CELLS`).

Timed in CPU seconds of the benchmark process (``timer = time.process_time``), not wall-clock
seconds: with one torch thread (set in ``setup``: ``benchmarks.common.one_thread``) that is the estimator's own work, and
other processes on a shared machine, which stretch wall-clock time by up to 3x between two runs
of the same code, do not count. Time spent waiting (none here: no I/O, no sleeping) would not
count either.
"""
from __future__ import annotations

import time

import gradnoise
from .common import CELLS, cell, one_thread, seed_torch


class TimeOneEstimate:
    """Seconds for one N-sample gradient estimate of one replicate.

    What a training step pays: ``estimator(problem, params, N)`` = check, prepare (e.g. the EMA
    baseline's warm-up, the optimal baseline's pilot batch) and estimate, one backward pass.
    """

    params = [list(CELLS)]
    param_names = ["cell"]
    timer = time.process_time

    def setup(self, label):
        one_thread()
        spec, name, self.n = CELLS[label]
        self.problem, self.estimator = cell(spec, name, self.n)
        self.leaves = gradnoise.replicate(self.problem.params, (1,))
        seed_torch(self.problem, self.estimator, self.n)

    def time_one_estimate(self, label):
        self.estimator(self.problem, self.leaves, self.n)


class TimeVarianceMeasurement:
    """Seconds for one variance measurement: R=1000 N-sample estimates and their statistics.

    ``gradnoise.measure_cell``, the engine's unit of work (vectorised replicates, chunked, then
    summarised against the truth); the truth itself is computed in ``setup``, not timed.
    """

    params = [list(CELLS)]
    param_names = ["cell"]
    replicates = 1000
    timer = time.process_time

    def setup(self, label):
        one_thread()
        spec, name, self.n = CELLS[label]
        self.problem, self.estimator = cell(spec, name, self.n)
        self.problem.true_gradient(self.estimator.objective(self.n))

    def time_variance_measurement(self, label):
        gradnoise.measure_cell(self.problem, self.estimator, self.n, self.replicates, 0)
