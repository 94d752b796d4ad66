"""The asv configuration, and proof that asv's regression tracking catches a noisier estimator.

The slow tests use the throwaway repository of ``tests/asv_repository.py`` (real ``asv run``
results of a good commit, a comment-only commit and one that breaks the leave-one-out baseline)
and ask ``asv compare`` -- the same table and statistics (factor and Mann-Whitney U on the batch
samples) that ``asv continuous`` exits non-zero on, at the README's gate factor -- which
benchmarks got worse, and ``asv publish`` which regressions its step detection (with
``regressions_thresholds``) reports.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from asv import util as asv_util

from asv_repository import CELL, MACHINE, ROOT, run

CONFIG = asv_util.load_json(str(ROOT / "asv.conf.json"), js_comments=True)
VARIANCE = "quality.TrackVariance.track_variance"
#: The factor of the README's gate command, ``asv continuous --factor 2 main HEAD``.
GATE_FACTOR = "2"
#: Cells where the mean cost is far from zero, so the leave-one-out baseline is worth orders of
#: magnitude of variance: each must be reported as a significant regression when it breaks.
MUST = {(p, "reinforce-loo", n) for p in ("bernoulli-toy", "gaussian-quadratic-nd", "linear-gaussian-vae")
        for n in (10, 100)}


# ------------------------------------------------------------------------------------------
# configuration (fast)
# ------------------------------------------------------------------------------------------
def test_asv_builds_commits_in_virtualenvs_with_torch_pinned():
    assert CONFIG["environment_type"] == "virtualenv"
    assert CONFIG["matrix"]["req"]["torch"] == ["2.13.0"]          # pip gets torch==2.13.0
    assert CONFIG["benchmark_dir"] == "benchmarks"


def test_asv_writes_under_one_ignored_folder():
    for key in ("env_dir", "results_dir", "html_dir"):
        assert Path(CONFIG[key]).parts[0] == ".asv", key
    assert ".asv/" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize("name, key_suffix", [
    ("timing.TimeOneEstimate.time_one_estimate", ".time_"),
    ("timing.TimeVarianceMeasurement.time_variance_measurement", ".time_"),
    ("memory.PeakmemVarianceMeasurement.peakmem_variance_measurement", ".peakmem_"),
    (VARIANCE, ".track_"),
    ("quality.TrackMSE.track_mse", ".track_"),
    ("quality.TrackBiasExcess.track_bias_excess", ".track_bias_excess"),
    ("quality.TrackInverseSNR.track_inverse_snr", ".track_"),
])
def test_every_benchmark_gets_its_familys_regression_threshold(name, key_suffix):
    """asv re.match-es each key against the full name and applies the largest match."""
    thresholds = CONFIG["regressions_thresholds"]
    matches = [key for key in thresholds if re.match(key, name)]
    assert matches, name
    effective = max(matches, key=thresholds.get)
    assert effective.endswith(key_suffix), (name, matches)
    assert 0 < thresholds[effective] <= 1


def test_bias_excess_is_zero_for_unbiased_and_positive_for_biased_batches():
    """|z| of unbiased batches, as many as the suite has, never crosses the threshold; a bias does."""
    from scipy import stats

    from benchmarks.common import BATCHES, BIAS_ALPHA, BIAS_Z_THRESHOLD, CELLS, REPLICATES, bias_excess

    m = len(CELLS) * BATCHES                                  # the cells that run, not the grid's product
    assert 2 * m * stats.norm.sf(BIAS_Z_THRESHOLD) == pytest.approx(BIAS_ALPHA)
    rng = np.random.default_rng(0)
    unbiased = np.abs(rng.standard_normal((20, m)))          # 20 runs of the whole suite
    excess = np.vectorize(bias_excess)(unbiased)
    assert (excess == 0).all(axis=1).sum() >= 19              # P(a false step in a run) <= 1%
    biased = np.abs(rng.normal(np.sqrt(REPLICATES) * 0.75, 1.0, m))  # bias of 3/4 standard deviation
    assert (np.vectorize(bias_excess)(biased) > 0).all()


def test_grid_benchmarks_list_exactly_the_cells_that_run():
    """One ``cell`` parameter: the product's combinations that ``cell`` accepts, labelled so that
    ``cell_label`` reads asv's parameter string as it read the product's."""
    import itertools

    from asv_runner.benchmarks._base import _unique_param_ids

    import benchmarks.memory as memory
    import benchmarks.quality as quality
    import benchmarks.timing as timing
    from benchmarks.common import BUDGETS, CELLS, ESTIMATORS, PROBLEMS, cell, label_of
    from gradnoise.analysis.compare import cell_label

    runs = []
    for key in itertools.product(PROBLEMS, ESTIMATORS, BUDGETS):
        try:
            cell(*key)
        except NotImplementedError:
            continue
        runs.append(key)
    assert list(CELLS.values()) == runs and 0 < len(runs) < len(PROBLEMS) * len(ESTIMATORS) * len(BUDGETS)
    for label, key in CELLS.items():
        assert label == label_of(*key)
        product = ", ".join(map(repr, key))                   # asv's string of the old (problem, estimator, N)
        (single,), = _unique_param_ids([[label]])              # ... and of the one cell parameter
        assert cell_label(single) == cell_label(product) == label
    for cls in (timing.TimeOneEstimate, timing.TimeVarianceMeasurement, quality.TrackVariance):
        assert cls.params == [list(CELLS)] and cls.param_names == ["cell"]
    assert memory.PeakmemVarianceMeasurement.params == [list(memory.CELLS)]
    assert ("gaussian-cos, reparam" in memory.CELLS) and ("gaussian-cos, iwae" not in memory.CELLS)


def test_a_cell_that_fails_to_build_is_listed_and_fails_its_benchmarks(monkeypatch):
    """Not dropped as if it could not run: listed, its quality batches an error its setup raises."""
    import benchmarks.common as common
    import benchmarks.quality as quality

    def broken(spec):
        raise RuntimeError("cannot build")

    monkeypatch.setattr(common, "problem", broken)
    assert common.listed("gaussian-cos", "reinforce", 10)
    assert not common.listed("gaussian-cos", "no-such-estimator", 10)
    stats = quality.batch_statistics("gaussian-cos", "reinforce", 10)
    assert stats == {"error": "RuntimeError: cannot build"}
    with pytest.raises(RuntimeError, match="gaussian-cos, reinforce, 10: RuntimeError: cannot build"):
        quality.TrackVariance().setup({"gaussian-cos, reinforce, 10": stats}, "gaussian-cos, reinforce, 10")


def test_importing_the_suite_and_the_cluster_module_changes_no_process_wide_setting():
    """Process-wide settings belong to the code that needs them, not to an import: importing the
    benchmarks and ``gradnoise.cluster`` (with Dask's ``MALLOC_TRIM_THRESHOLD_`` set, so that
    :func:`~gradnoise.cluster.keep_freed_memory` would act if called) leaves torch's thread count as
    it was and calls no ``mallopt`` (neither ``keep_freed_memory`` nor a load of the C library)."""
    import os
    import subprocess
    import sys

    code = """if True:
        import ctypes, os, torch
        torch.set_num_threads(3)
        loads = []
        class Recording(ctypes.CDLL):
            def __init__(self, name, *args, **kwargs):
                loads.append(os.path.basename(str(name)))
                super().__init__(name, *args, **kwargs)
        ctypes.CDLL = Recording
        import gradnoise.cluster, gradnoise.analysis.studies
        import benchmarks.common, benchmarks.timing, benchmarks.memory, benchmarks.quality
        print(torch.get_num_threads(), gradnoise.cluster.keep_freed_memory.cache_info().misses,
              [name for name in loads if name.startswith("libc.")])
    """
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "3 0 []"


@pytest.mark.parametrize("module, cls", [("timing", "TimeOneEstimate"), ("timing", "TimeVarianceMeasurement"),
                                         ("memory", "PeakmemVarianceMeasurement"), ("quality", "TrackVariance")])
def test_every_benchmark_runs_at_one_torch_thread(module, cls, monkeypatch):
    """Each benchmark's ``setup`` (and the quality classes' ``setup_cache``) sets one intra-op
    thread, so asv measures the estimators, not torch's thread pool, whatever the process had."""
    import importlib

    bench = importlib.import_module(f"benchmarks.{module}")
    label = next(label for label in bench.CELLS if label.startswith("gaussian-cos, reinforce"))
    instance = getattr(bench, cls)()
    before = torch.get_num_threads()
    try:
        if module == "quality":
            monkeypatch.setattr(bench, "CELLS", {label: bench.CELLS[label]})
            torch.set_num_threads(2)
            cache = instance.setup_cache()
            assert torch.get_num_threads() == 1
            torch.set_num_threads(2)
            instance.setup(cache, label)
        else:
            torch.set_num_threads(2)
            instance.setup(label)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------
# regression proof (slow; part of the default run and of CI)
# ------------------------------------------------------------------------------------------
def _compare_table(text: str) -> dict[str, tuple[str, str, str]]:
    """``{benchmark(params): (mark, before, after)}`` from ``asv compare``'s GitHub table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4].startswith(VARIANCE):
            rows[cells[4]] = (cells[0], cells[1], cells[2])
    return rows


def _asv_compare(asv_repository, before: str, after: str) -> dict[str, tuple[str, str, str]]:
    commits = asv_repository.commits
    out = run([*asv_repository.asv, "compare", "--machine", MACHINE, "--factor", GATE_FACTOR,
               commits[before], commits[after]], asv_repository.repo, asv_repository.env)
    print(out)
    table = _compare_table(out)
    assert table, out
    return table


@pytest.mark.slow
def test_asv_flags_the_broken_baseline_and_nothing_else(asv_repository):
    table = _asv_compare(asv_repository, "comment", "broken")
    worse, cells = set(), set()
    for name, (mark, before, after) in table.items():
        m = CELL.search(name)
        problem, estimator, n = m["problem"], m["estimator"], int(m["n"])
        cells.add((problem, estimator, n))
        if mark == "+":
            worse.add((problem, estimator, n))
        if estimator != "reinforce-loo":
            # untouched: same code, same cell-derived seeds -> not flagged, nor failed
            assert mark == "", (name, mark, before, after)
        assert "n/a" not in (before, after), (name, before, after)       # only cells that run are listed
    assert not {c for c in cells if c[1] == "reinforce-loo" and c[2] == 1}   # LOO needs N >= 2: no such cell
    assert MUST <= worse, sorted(MUST - worse)
    assert {e for _, e, _ in worse} == {"reinforce-loo"}

    # `asv publish` detects steps in the history with the per-family regressions_thresholds.
    run([*asv_repository.asv, "publish"], asv_repository.repo, asv_repository.env)
    published = json.loads((asv_repository.repo / CONFIG["html_dir"] / "regressions.json").read_text())
    steps = {CELL.search(entry[0]).groups() for entry in published["regressions"] if entry[0].startswith(VARIANCE)}
    assert {(p, e, int(n)) for p, e, n in steps} == MUST, sorted(steps)
    assert {CELL.search(entry[0])["estimator"] for entry in published["regressions"]} == {"reinforce-loo"}


@pytest.mark.slow
def test_asv_gate_is_silent_on_a_comment_only_commit(asv_repository):
    table = _asv_compare(asv_repository, "good", "comment")
    assert {mark for mark, _, _ in table.values()} == {""}
    assert all(before == after for _, before, after in table.values())


def test_tracks_are_built_from_the_summary_columns():
    """Each tracked statistic combines columns the engine defines once, and has its asv class."""
    import benchmarks.quality as quality
    from benchmarks.common import TRACKS
    from gradnoise.statistics import SUMMARY_COLUMNS

    for statistic, track in TRACKS.items():
        assert set(track.columns) <= set(SUMMARY_COLUMNS), statistic
        cls = getattr(quality, track.asv_class)
        assert callable(getattr(cls, f"track_{statistic}")) and cls.unit == track.unit
