"""gradnoise.analysis.compare on asv result files written with asv's own API (asv.results.Results)."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from asv import results as asv_results
from asv import util as asv_util
from asv.machine import Machine
from asv.runner import BenchmarkResult
from scipy import stats

from gradnoise.analysis.cli import main
from gradnoise.analysis.compare import compare, compare_pair, comparison_markdown, load_side

MACHINE = "testbox"
ENV = "virtualenv-py3.11"
BEFORE, AFTER, SAME = "1" * 40, "2" * 40, "3" * 40
ESTIMATORS = ["'reinforce'", "'reinforce-loo'", "'reparam'"]
BUDGETS = ["1", "100"]
BATCHES = 10          # independent batch estimates per track_* benchmark, as the benchmarks store them
BATCH_R = 200         # replicates behind each batch variance


def write_results(result_dir, commit, benches):
    """Save one asv Results file (and machine.json) for ``commit``; benches: name -> samples per combo."""
    os.makedirs(os.path.join(result_dir, MACHINE), exist_ok=True)
    asv_util.write_json(os.path.join(result_dir, MACHINE, "machine.json"), {"machine": MACHINE, "version": 1},
                        Machine.api_version)
    res = asv_results.Results({"machine": MACHINE, "python": "3.11"}, {}, commit, 0, "3.11", ENV, {})
    for name, samples in benches.items():
        res.add_result({"name": name, "version": "1", "params": [ESTIMATORS, BUDGETS]},
                       BenchmarkResult(result=[True] * len(samples), samples=samples, number=[1] * len(samples),
                                       errcode=0, stderr="", profile=None),
                       record_samples=True)
    res.save(result_dir)


def batch_variances(rng, sigma2):
    """Batch variance estimates of Gaussian gradients: sigma2 chi2(R-1)/(R-1)."""
    return list(sigma2 * rng.chisquare(BATCH_R - 1, BATCHES) / (BATCH_R - 1))


def timings(rng, seconds):
    return list(seconds * (1 + rng.exponential(0.05, 15)))


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """BEFORE; AFTER with reinforce-loo's variance doubled at N=100 (a broken baseline); SAME re-measured."""
    root = str(tmp_path_factory.mktemp("asv") / "results")
    rng = np.random.default_rng(0)
    sigma2 = [10.0 / int(n) * (k + 1) for k in range(len(ESTIMATORS)) for n in BUDGETS]
    secs = [1e-4 * int(n) for _ in ESTIMATORS for n in BUDGETS]

    def run(doubled=()):
        return {
            "quality.Variance.track_variance": [batch_variances(rng, s * (2 if i in doubled else 1))
                                                for i, s in enumerate(sigma2)],
            "timing.Estimate.time_estimate": [timings(rng, t) for t in secs],
        }

    before = run()
    write_results(root, BEFORE, before)
    write_results(root, AFTER, run(doubled={3}))   # ('reinforce-loo', 100)
    write_results(root, SAME, run())               # an independent re-run of the same code
    return root


def test_identical_results_report_nothing_changed(results_dir):
    df = compare(BEFORE, BEFORE, results_dir=results_dir)
    assert len(df) == 2 * len(ESTIMATORS) * len(BUDGETS)
    assert (df["verdict"] == "unchanged").all()
    assert np.allclose(df["ratio"], 1.0) and (df["p_value"] == 1.0).all()


def test_rerun_of_the_same_code_reports_nothing_changed(results_dir):
    df = compare(BEFORE, SAME, results_dir=results_dir)
    assert (df["verdict"] == "unchanged").all(), df[df["verdict"] != "unchanged"]


def test_doubled_variance_is_regressed_and_nothing_else(results_dir):
    df = compare(BEFORE[:8], AFTER[:6], results_dir=results_dir)       # hash prefixes work
    hit = (df["benchmark"] == "quality.Variance.track_variance") & (df["cell"] == "reinforce-loo, 100")
    row = df[hit].iloc[0]
    assert row["verdict"] == "regressed" and row["test"] == "welch-t-log"
    assert row["ratio"] > 1 and row["p_adjusted"] < 0.05
    assert (df.loc[~hit, "verdict"] == "unchanged").all()
    timing = df[df["kind"] == "time"]
    assert (timing["test"] == "mann-whitney").all() and timing["p_value"].notna().all()


def test_improvement_and_ratio_interval_of_timings():
    rng = np.random.default_rng(1)
    out = compare_pair(timings(rng, 2e-3), timings(rng, 1e-3), "time")
    assert out["test"] == "mann-whitney" and out["p_value"] < 1e-4
    assert out["ratio_ci_low"] <= 0.5 <= out["ratio_ci_high"]


def test_welch_p_values_are_uniform_under_no_change():
    """Under no change the track_* test's p-values are ~ U(0,1): the 5% rejection rate holds."""
    rng = np.random.default_rng(2)
    trials = 400
    p = np.array([compare_pair(batch_variances(rng, 1.0), batch_variances(rng, 1.0), "track")["p_value"]
                  for _ in range(trials)])
    rejections = int((p < 0.05).sum())
    assert stats.binomtest(rejections, trials, 0.05).pvalue > 1e-3, rejections


def test_ratio_interval_covers_a_doubled_variance_at_nominal_rate():
    rng = np.random.default_rng(3)
    trials = 400
    hits = 0
    for _ in range(trials):
        out = compare_pair(batch_variances(rng, 1.0), batch_variances(rng, 2.0), "track")
        hits += out["ratio_ci_low"] <= 2.0 <= out["ratio_ci_high"]
    assert stats.binomtest(hits, trials, 0.95).pvalue > 1e-3, hits


def test_results_files_and_folders_as_sides(results_dir, tmp_path):
    f = os.path.join(results_dir, MACHINE, f"{BEFORE[:8]}-{ENV}.json")
    assert len(load_side(f).results) == 1
    with pytest.raises(ValueError, match="3 commits"):
        load_side(results_dir)


def test_cli_unknown_commit_is_one_line(results_dir, tmp_path, capsys):
    rc = main(["compare", BEFORE, "deadbeef", "--results-dir", results_dir, "--out", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("gradnoise compare: error: unknown commit 'deadbeef'") and "\n" not in err


def test_cli_writes_csv_and_gates(results_dir, tmp_path, capsys):
    out = tmp_path / "c.csv"
    assert main(["compare", BEFORE, AFTER, "--results-dir", results_dir, "--out", str(out)]) == 0
    assert "1 regressed" in capsys.readouterr().out and out.exists()
    assert main(["compare", BEFORE, AFTER, "--results-dir", results_dir, "--out", str(out),
                 "--fail-on-regression"]) == 1


def _write(result_dir, commit, name, values, samples, *more, version="1"):
    """Benchmarks over ESTIMATORS x BUDGETS with explicit values (None: failed, NaN: skipped).

    ``more``: further ``(name, values, samples)`` triples stored in the same results file.
    """
    os.makedirs(os.path.join(result_dir, MACHINE), exist_ok=True)
    asv_util.write_json(os.path.join(result_dir, MACHINE, "machine.json"), {"machine": MACHINE, "version": 1},
                        Machine.api_version)
    res = asv_results.Results({"machine": MACHINE, "python": "3.11"}, {}, commit, 0, "3.11", ENV, {})
    for name_, values_, samples_ in [(name, values, samples), *more]:
        res.add_result({"name": name_, "version": version, "params": [ESTIMATORS, BUDGETS]},
                       BenchmarkResult(result=values_, samples=samples_, number=[1] * len(values_), errcode=0,
                                       stderr="", profile=None),
                       record_samples=True)
    res.save(result_dir)


def test_skipped_cells_are_skipped_and_only_errors_are_failed(tmp_path):
    root = str(tmp_path / "results")
    rng = np.random.default_rng(4)
    ok = [batch_variances(rng, 1.0) for _ in range(6)]
    nan = float("nan")
    # cells: 0 ok/ok, 1 skipped/skipped, 2 ok/failed, 3 failed/ok, 4 skipped/failed, 5 ok/ok
    _write(root, BEFORE, "quality.Variance.track_variance", [True, nan, True, None, nan, True],
           [ok[0], None, ok[2], None, None, ok[5]])
    _write(root, AFTER, "quality.Variance.track_variance", [True, nan, None, True, None, True],
           [ok[0], None, None, ok[3], None, ok[5]])
    df = compare(BEFORE, AFTER, results_dir=root)
    assert dict(zip(df["cell"], df["verdict"])) == {
            "reinforce, 1": "unchanged", "reinforce, 100": "skipped", "reinforce-loo, 1": "failed",
            "reinforce-loo, 100": "failed", "reparam, 1": "failed", "reparam, 100": "unchanged"}
    reasons = dict(zip(df["cell"], df["reason"]))
    assert reasons["reinforce-loo, 1"].startswith("failed after")
    assert reasons["reinforce-loo, 100"].startswith("failed before")
    assert reasons["reparam, 1"].startswith("failed after")
    assert "NotImplementedError" in reasons["reinforce, 100"]


def test_cells_on_one_side_only_are_skipped_not_failed(tmp_path):
    root = str(tmp_path / "results")
    rng = np.random.default_rng(5)
    _write(root, BEFORE, "quality.Variance.track_variance", [True] * 6, [batch_variances(rng, 1.0) for _ in range(6)])
    _write(root, AFTER, "quality.Variance.track_variance", [True] * 6, [batch_variances(rng, 1.0) for _ in range(6)],
           ("quality.MSE.track_mse", [True] * 6, [batch_variances(rng, 1.0) for _ in range(6)]))
    df = compare(BEFORE, AFTER, results_dir=root)
    mse = df[df["benchmark"] == "quality.MSE.track_mse"]
    assert (mse["verdict"] == "skipped").all() and mse["reason"].str.contains("after only").all()
    assert set(df.loc[df["benchmark"] != "quality.MSE.track_mse", "verdict"]) == {"unchanged"}


def test_bias_excess_zero_is_unchanged_and_leaving_zero_is_a_regression_without_warnings():
    zeros = [0.0] * BATCHES
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare_pair(zeros, zeros, "track")
        worse = compare_pair(zeros, [0.0] * 3 + [2.5, 3.1, 0.8, 4.0, 1.2, 2.2, 5.0], "track")
    assert same["p_value"] == 1.0 and same["ratio"] == 1.0
    assert worse["ratio"] == np.inf and worse["p_value"] < 0.01


def test_cli_output_has_no_numpy_or_scipy_warnings(tmp_path, capfd):
    root = str(tmp_path / "results")
    zeros = [[0.0] * BATCHES for _ in range(6)]
    _write(root, BEFORE, "quality.TrackBiasExcess.track_bias_excess", [True] * 6, zeros)
    _write(root, AFTER, "quality.TrackBiasExcess.track_bias_excess", [True] * 6,
           zeros[:5] + [[0.0] * 3 + [2.5, 3.1, 0.8, 4.0, 1.2, 2.2, 5.0]])
    assert main(["compare", BEFORE, AFTER, "--results-dir", root, "--out-dir", str(tmp_path / "cmp")]) == 0
    out, err = capfd.readouterr()
    assert "Warning" not in out + err, out + err
    assert out.startswith("1 regressed, 0 improved, 5 unchanged, 0 untestable, 0 skipped, 0 failed")
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| `track_bias_excess` | reparam, 100 | 0 [0, 0] | " in text and "| ∞ |" in text
    assert text.startswith(f"# Benchmarks: {AFTER[:8]} vs {BEFORE[:8]}")


def test_default_factors_follow_the_asv_config_thresholds(results_dir):
    df = compare(BEFORE, SAME, results_dir=results_dir,
                 thresholds={r".*\.time_": 1.0, r".*\.track_": 0.35})
    assert set(df.loc[df["kind"] == "time", "factor"]) == {2.0}
    assert set(df.loc[df["kind"] == "track", "factor"]) == {1.35}
    assert set(compare(BEFORE, SAME, results_dir=results_dir, factor=1.1)["factor"]) == {1.1}


def test_help_prints_percent_signs_once(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "99% intervals" in out and "%%" not in out


def test_a_changed_benchmark_is_not_compared(tmp_path):
    root = str(tmp_path / "results")
    rng = np.random.default_rng(6)
    _write(root, BEFORE, "timing.Estimate.time_estimate", [True] * 6, [timings(rng, 1e-3) for _ in range(6)])
    _write(root, AFTER, "timing.Estimate.time_estimate", [True] * 6, [timings(rng, 3e-3) for _ in range(6)],
           version="2")
    df = compare(BEFORE, AFTER, results_dir=root)
    assert (df["verdict"] == "skipped").all() and df["reason"].str.contains("not comparable").all()


def test_a_change_of_interval_method_is_named(tmp_path):
    """The bias track's asv version names the interval method (benchmarks/quality.py): across a
    change of method its cells are skipped with that reason, not compared as numbers."""
    root = str(tmp_path / "results")
    rng = np.random.default_rng(9)
    _write(root, BEFORE, "quality.TrackBiasExcess.track_bias_excess", [True] * 6,
           [batch_variances(rng, 1.0) for _ in range(6)], version="interval method: delta method")
    _write(root, AFTER, "quality.TrackBiasExcess.track_bias_excess", [True] * 6,
           [batch_variances(rng, 1.0) for _ in range(6)], version="interval method: bootstrap-t")
    df = compare(BEFORE, AFTER, results_dir=root)
    assert (df["verdict"] == "skipped").all()
    assert df["reason"].str.contains("the interval method changed").all()


def test_cells_are_matched_on_their_label_across_a_change_of_parameters(tmp_path):
    """BEFORE: the estimator x N product with a skipped combination; AFTER: one ``cell`` parameter
    listing the combinations that run (its code, hence asv's version, changed with it)."""
    root = str(tmp_path / "results")
    rng = np.random.default_rng(7)
    variances = [batch_variances(rng, 1.0) for _ in range(6)]
    nan = float("nan")
    _write(root, BEFORE, "quality.Variance.track_variance", [True, True, nan, True, True, True],
           [variances[0], variances[1], None, variances[3], variances[4], variances[5]])
    labels = ["'reinforce, 1'", "'reinforce, 100'", "'reinforce-loo, 100'", "'reparam, 1'", "'reparam, 100'"]
    after = [variances[0], variances[1], variances[3], [2 * v for v in variances[4]], variances[5]]
    res = asv_results.Results({"machine": MACHINE, "python": "3.11"}, {}, AFTER, 0, "3.11", ENV, {})
    res.add_result({"name": "quality.Variance.track_variance", "version": "2", "params": [labels]},
                   BenchmarkResult(result=[True] * 5, samples=after, number=[1] * 5, errcode=0, stderr="",
                                   profile=None),
                   record_samples=True)
    res.save(root)
    df = compare(BEFORE, AFTER, results_dir=root)
    assert dict(zip(df["cell"], df["verdict"])) == {
        "reinforce, 1": "unchanged", "reinforce, 100": "unchanged", "reinforce-loo, 1": "skipped",
        "reinforce-loo, 100": "unchanged", "reparam, 1": "regressed", "reparam, 100": "unchanged"}
    reasons = dict(zip(df["cell"], df["reason"]))
    assert reasons["reinforce-loo, 1"].startswith("benchmarked before only")
    assert reasons["reinforce, 1"] == "compared on the cell label across a change of the benchmark's parameters (2 -> 1)"
    text = comparison_markdown(df, BEFORE, AFTER)
    assert "5 cells were compared across a change of their benchmark's parameters" in text


def test_cli_output_paths_are_checked_before_reading_results(results_dir, tmp_path, capsys):
    a_file = tmp_path / "f.csv"
    a_file.write_text("x\n")
    assert main(["compare", BEFORE, AFTER, "--results-dir", results_dir, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["compare", BEFORE, AFTER, "--results-dir", results_dir, "--out-dir", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def _write_unrecorded(result_dir, commit, name, samples):
    """Like ``asv run`` without ``--record-samples``: asv keeps each cell's median and stats only."""
    os.makedirs(os.path.join(result_dir, MACHINE), exist_ok=True)
    asv_util.write_json(os.path.join(result_dir, MACHINE, "machine.json"), {"machine": MACHINE, "version": 1},
                        Machine.api_version)
    res = asv_results.Results({"machine": MACHINE, "python": "3.11"}, {}, commit, 0, "3.11", ENV, {})
    res.add_result({"name": name, "version": "1", "params": [ESTIMATORS, BUDGETS]},
                   BenchmarkResult(result=[True] * len(samples), samples=samples, number=[1] * len(samples),
                                   errcode=0, stderr="", profile=None),
                   record_samples=False)
    res.save(result_dir)


@pytest.fixture
def quick_results(tmp_path):
    """``asv run --quick`` of both sides: one timing sample a cell; ``reparam, 100`` is 22x slower after."""
    root = str(tmp_path / "results")
    secs = [1e-3] * 6
    _write_unrecorded(root, BEFORE, "timing.Estimate.time_estimate", [[s] for s in secs])
    _write_unrecorded(root, AFTER, "timing.Estimate.time_estimate", [[s] for s in secs[:5]] + [[22e-3]])
    return root


def test_single_sample_cells_are_untestable_not_unchanged(quick_results):
    df = compare(BEFORE, AFTER, results_dir=quick_results)
    assert set(df["verdict"]) == {"untestable"}
    slow = df[df["cell"] == "reparam, 100"].iloc[0]
    assert slow["ratio"] == pytest.approx(22.0) and np.isnan(slow["p_value"])
    assert (slow["n_before"], slow["n_after"]) == (1, 1)
    assert "1 sample before and 1 after" in slow["reason"] and "beyond the factor 2" in slow["reason"]
    assert (df["reason"] != "").all()


@pytest.mark.parametrize("name", ["memory.Peak.peakmem_measure", "quality.Other.track_value"])
def test_cells_stored_as_one_value_without_stats(tmp_path, name):
    """A plain value (no samples, no interval): peak memory (all but deterministic) is judged by
    the factor alone, as asv compare does; any other plain value has nothing to test with."""
    root = str(tmp_path / "results")
    for commit, top in ((BEFORE, 1e8), (AFTER, 3e8)):
        res = asv_results.Results({"machine": MACHINE, "python": "3.11"}, {}, commit, 0, "3.11", ENV, {})
        res.add_result({"name": name, "version": "1", "params": [ESTIMATORS, BUDGETS]},
                       BenchmarkResult(result=[1e8] * 5 + [top], samples=[None] * 6, number=[None] * 6, errcode=0,
                                       stderr="", profile=None))
        os.makedirs(os.path.join(root, MACHINE), exist_ok=True)
        asv_util.write_json(os.path.join(root, MACHINE, "machine.json"), {"machine": MACHINE, "version": 1},
                            Machine.api_version)
        res.save(root)
    df = compare(BEFORE, AFTER, results_dir=root)
    assert df.loc[df["cell"] == "reparam, 100", "ratio"].iloc[0] == pytest.approx(3.0)
    if "peakmem" in name:
        assert dict(zip(df["cell"], df["verdict"]))["reparam, 100"] == "regressed"   # 3x > factor 1.2
        assert (df["verdict"] != "untestable").all() and (df["test"] == "factor").all()
        assert df["reason"].str.contains("judged by the factor alone").all()
    else:
        assert set(df["verdict"]) == {"untestable"}
        assert df["reason"].str.contains("no samples and no interval").all()


def test_recorded_stats_without_samples_are_compared_on_intervals_with_a_reason(tmp_path):
    root = str(tmp_path / "results")
    rng = np.random.default_rng(8)
    _write_unrecorded(root, BEFORE, "timing.Estimate.time_estimate", [timings(rng, 1e-3) for _ in range(6)])
    _write_unrecorded(root, AFTER, "timing.Estimate.time_estimate",
                      [timings(rng, 1e-3) for _ in range(5)] + [timings(rng, 5e-3)])
    df = compare(BEFORE, AFTER, results_dir=root)
    assert (df["test"] == "ci-overlap").all() and (df["n_before"] == 15).all()
    assert dict(zip(df["cell"], df["verdict"]))["reparam, 100"] == "regressed"
    assert df["reason"].str.contains("samples not recorded").all()


def test_cli_lists_untestable_cells_apart_and_can_fail_on_them(quick_results, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", BEFORE, AFTER, "--results-dir", quick_results, "--out-dir", str(out)]
    assert main(args + ["--fail-on-regression"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("0 regressed, 0 improved, 0 unchanged, 6 untestable, 0 skipped, 0 failed")
    assert "--fail-on-regression: 6 cells could not be tested" in printed
    assert "untestable timing.Estimate.time_estimate(reparam, 100) ratio 22" in printed
    text = (out / "comparison.md").read_text()
    assert "**0 regressed · 0 improved · 0 unchanged · 6 untestable · 0 skipped · 0 failed**" in text
    assert "## Untestable (6)" in text and "| `time_estimate` | reparam, 100 | 0.001 | 0.022 | 22 |" in text
    assert main(args + ["--fail-on-untestable"]) == 1
    assert "6 untestable" in capsys.readouterr().out


def test_forest_plot_draws_untestable_cells_apart_from_unchanged(quick_results):
    from gradnoise.analysis.compare import forest_plot
    df = compare(BEFORE, AFTER, results_dir=quick_results)
    fig = forest_plot(df)
    colours = {tuple(np.round(line.get_markeredgecolor(), 3)) if not isinstance(line.get_markeredgecolor(), str)
               else line.get_markeredgecolor() for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "o"}
    assert colours and "#7f7f7f" not in colours          # nothing drawn grey as unchanged
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert "reparam, 100" in labels


def test_zero_variance_on_a_side_is_reported_without_warnings(tmp_path, capfd):
    """The centred delta method on a quadratic cost has exactly zero variance in every batch."""
    root = str(tmp_path / "results")
    rng = np.random.default_rng(9)
    before = [batch_variances(rng, 1.0) for _ in range(6)]
    after = [batch_variances(rng, 1.0) for _ in range(4)] + [[0.0] * BATCHES, [0.0] * BATCHES]
    _write(root, BEFORE, "quality.Variance.track_variance", [True] * 6, before[:5] + [[0.0] * BATCHES])
    _write(root, AFTER, "quality.Variance.track_variance", [True] * 6, after)
    assert main(["compare", BEFORE, AFTER, "--results-dir", root, "--out-dir", str(tmp_path / "cmp")]) == 0
    out, err = capfd.readouterr()
    assert "Warning" not in out + err, out + err
    df = compare(BEFORE, AFTER, results_dir=root)
    row = dict(zip(df["cell"], zip(df["verdict"], df["ratio"], df["reason"])))
    assert row["reparam, 1"][:2] == ("improved", 0.0) and "exactly 0 after" in row["reparam, 1"][2]
    assert row["reparam, 100"][:2] == ("unchanged", 1.0) and "exactly 0 before and after" in row["reparam, 100"][2]
    assert "| `track_variance` | reparam, 1 | " in (tmp_path / "cmp" / "comparison.md").read_text()


def test_a_truncated_results_file_of_a_named_commit_is_named(results_dir, tmp_path, capsys):
    import shutil
    root = str(tmp_path / "results")
    shutil.copytree(results_dir, root)
    path = os.path.join(root, MACHINE, f"{AFTER[:8]}-{ENV}.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    rc = main(["compare", BEFORE, AFTER, "--results-dir", root, "--out", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and path in err and "not a readable asv results file" in err, err
    rc = main(["compare", os.path.join(root, MACHINE, f"{BEFORE[:8]}-{ENV}.json"), path,
               "--out", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and path in err, err


def test_fail_on_regression_keeps_exit_status_1_when_the_reader_closes_the_pipe(results_dir, tmp_path):
    """``gradnoise compare ... --fail-on-regression | head -1``: the reader leaves; the status stays 1."""
    import subprocess
    import sys
    read, write = os.pipe()
    os.close(read)                       # a reader that has already left: every write meets a closed pipe
    try:
        done = subprocess.run([sys.executable, "-m", "gradnoise.analysis", "compare", BEFORE, AFTER,
                               "--results-dir", results_dir, "--out", str(tmp_path / "c.csv"), "--fail-on-regression"],
                              stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "" and (tmp_path / "c.csv").exists()


def test_an_infinite_track_is_untestable_with_a_reason(tmp_path):
    """An exact estimator's bias z can be infinite (before the rounding floor it was, for the
    centred delta method): its ratio is not a number, so the cell is untestable, with a reason,
    never a silent NaN "unchanged"."""
    root = str(tmp_path / "results")
    rng = np.random.default_rng(3)
    for commit in (BEFORE, AFTER):
        samples = [[np.inf] * BATCHES if i == 0 else batch_variances(rng, 1.0) for i in range(6)]
        write_results(root, commit, {"quality.TrackBiasExcess.track_bias_excess": samples})
    df = compare(BEFORE, AFTER, results_dir=root)
    inf = df[df["cell"] == "reinforce, 1"].iloc[0]
    assert inf["verdict"] == "untestable" and "non-finite" in inf["reason"]
    assert set(df.loc[df["cell"] != "reinforce, 1", "verdict"]) == {"unchanged"}
