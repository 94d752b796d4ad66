"""Gradient quality per cell: variance, MSE, bias beyond chance and inverse SNR (lower is better).

Each ``track_*`` returns ``{"samples": [...], "number": 1}``: the statistic of each of
:data:`BATCHES` independent batches of :data:`REPLICATES` estimates. asv stores their median with
a 99% confidence interval and, with ``--record-samples`` (the default of ``asv continuous``), the
samples themselves, so ``asv compare``/``asv continuous`` test the change with a Mann-Whitney U
test instead of comparing two numbers. Batch ``b`` of a cell uses the engine's seed
``cell_seed(b, problem, estimator, N)``: the same commit gives the same numbers, adding a cell
changes no other cell, and a change that only draws random numbers differently moves a statistic
by its sampling noise, which the test allows for.

All cells are measured once per run, in ``setup_cache`` (shared by the four classes); one asv
parameter, ``cell``, lists the cells that can run (:data:`benchmarks.common.CELLS`), and
``setup`` picks the cell's batches. A cell whose measurement raised fails its benchmarks.
"""
from __future__ import annotations

import gradnoise
from .common import BATCHES, CELLS, REPLICATES, TRACKS, Track, cell, one_thread, summary

def batch_statistics(spec: str, name: str, n: int) -> dict:
    """``{statistic: [one value per batch]}`` for a cell of :data:`CELLS`, or ``{"error": what}``."""
    try:
        problem, estimator = cell(spec, name, n)
        rows = [summary(_measure(problem, estimator, n, b)) for b in range(BATCHES)]
    except Exception as err:   # reported by this cell's benchmarks, not by every cell's
        return {"error": f"{type(err).__name__}: {err}"}
    return {key: [row[key] for row in rows] for key in rows[0]}


def _measure(problem, estimator, n: int, batch: int) -> list[dict]:
    """One batch's rows without the variance interval, which no track reads (its bootstrap is 7 ms
    a row); asv runs this suite against older commits too, whose ``measure_cell`` lacks the option."""
    try:
        return gradnoise.measure_cell(problem, estimator, n, REPLICATES, seed=batch, intervals=False)
    except TypeError:
        return gradnoise.measure_cell(problem, estimator, n, REPLICATES, seed=batch)


class _Quality:
    params = [list(CELLS)]
    param_names = ["cell"]

    def setup_cache(self):
        one_thread()
        return {label: batch_statistics(*key) for label, key in CELLS.items()}

    setup_cache.timeout = 1200

    def setup(self, cache, label):
        one_thread()
        self.cell = cache[label]
        if "error" in self.cell:
            raise RuntimeError(f"{label}: {self.cell['error']}")

    def samples(self, statistic: str) -> dict:
        return {"samples": self.cell[statistic], "number": 1}


def _track_class(statistic: str, track: Track) -> type:
    """``track.asv_class`` with one method ``track_<statistic>`` returning the batch samples."""
    def method(self, cache, label):
        return self.samples(statistic)

    method.__name__ = method.__qualname__ = f"track_{statistic}"
    if "bias_z" in track.columns or "variance_ci_low" in track.columns:
        # the statistic's meaning is set by the interval method, not by this code: its asv version
        # names the method, so `gradnoise compare` says the method changed instead of comparing
        method.version = f"interval method: {getattr(gradnoise.statistics, 'INTERVAL_METHOD', 'delta method')}"
    return type(track.asv_class, (_Quality,), {"unit": track.unit, "__doc__": track.doc,
                                              method.__name__: method, "__module__": __name__})


# one asv class per tracked statistic of benchmarks.common.TRACKS
for _statistic, _track in TRACKS.items():
    globals()[_track.asv_class] = _track_class(_statistic, _track)
