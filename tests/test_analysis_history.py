"""gradnoise.analysis.history on asv results written with asv's own API, for commits of a small git repository.

Five empty commits c0..c4: c0, c1 and c4 have results, c2's benchmarks failed (asv stored null),
c3 has none. One cell steps up at c4, one steps down at c1, one never moves, and one is skipped
(NaN) everywhere. The expected steps follow from how the series were written.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from asv import results as asv_results
from asv import util as asv_util
from asv.machine import Machine
from asv.runner import BenchmarkResult
from PIL import Image

from gradnoise.analysis.cli import main
from gradnoise.analysis.history import detect_history_steps, load_history

MACHINE = "testbox"
ENV = "virtualenv-py3.11"
NAME = "quality.TrackVariance.track_variance"
CELLS = ["'up'", "'down'", "'flat'", "'never'"]
THRESHOLDS = {r".*\.track_": 0.35}


def _git(repo, *args):
    who = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    return subprocess.run(["git", *who, *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def _repo(root, n):
    """A git repository of ``n`` empty commits under ``root``: ``(repo, results_dir, commits)``."""
    repo, results_dir = root / "repo", str(root / "results")
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    commits = []
    for i in range(n):
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"change {i}")
        commits.append(_git(repo, "rev-parse", "HEAD"))
    return repo, results_dir, commits


def _results(results_dir, commit):
    """An empty asv ``Results`` of ``commit`` on MACHINE (its machine.json written)."""
    os.makedirs(os.path.join(results_dir, MACHINE), exist_ok=True)
    asv_util.write_json(os.path.join(results_dir, MACHINE, "machine.json"), {"machine": MACHINE, "version": 1},
                        Machine.api_version)
    return asv_results.Results({"machine": MACHINE, "python": "3.11"}, {}, commit, 0, "3.11", ENV, {})


def _save(results_dir, commit, values, rng, params=(CELLS,)):
    res = _results(results_dir, commit)
    samples = [None if v is None or v != v else list(v * np.exp(rng.normal(0, 0.02, 10))) for v in values]
    result = [True if s is not None else v for s, v in zip(samples, values)]
    res.add_result({"name": NAME, "version": "1", "params": list(params)},
                   BenchmarkResult(result=result, samples=samples, number=[1] * len(values), errcode=0, stderr="",
                                   profile=None),
                   record_samples=True)
    res.save(results_dir)


@pytest.fixture(scope="module")
def history_repo(tmp_path_factory):
    repo, results_dir, commits = _repo(tmp_path_factory.mktemp("history"), 5)
    rng = np.random.default_rng(0)
    nan = float("nan")
    _save(results_dir, commits[0], [10.0, 50.0, 3.0, nan], rng)
    _save(results_dir, commits[1], [10.0, 5.0, 3.0, nan], rng)
    _save(results_dir, commits[2], [None, None, None, None], rng)          # every benchmark failed
    _save(results_dir, commits[4], [40.0, 5.0, 3.0, nan], rng)             # commits[3]: no results
    return repo, results_dir, commits


def test_history_rows_statuses_and_git_order(history_repo):
    repo, results_dir, commits = history_repo
    h = load_history("main", results_dir=results_dir, repo=str(repo))
    assert list(dict.fromkeys(h["commit"])) == commits
    status = h.pivot(index="commit", columns="cell", values="status").loc[commits]
    assert list(status["up"]) == ["ok", "ok", "failed", "missing", "ok"]
    assert set(status["never"]) == {"skipped", "failed", "missing"}
    assert list(dict.fromkeys(h.loc[h["commit"] == commits[4], "subject"])) == ["change 4"]
    default = load_history(results_dir=results_dir, repo=str(repo))   # every commit with results
    assert list(dict.fromkeys(default["commit"])) == [commits[0], commits[1], commits[2], commits[4]]


def test_steps_up_and_down_at_the_first_commit_with_the_new_level(history_repo):
    repo, results_dir, commits = history_repo
    steps = detect_history_steps(load_history("main", results_dir=results_dir, repo=str(repo)), THRESHOLDS)
    found = {(r.cell, r.direction, r.commit, r.previous_commit) for r in steps.itertuples()}
    assert found == {("up", "regression", commits[4], commits[1]),
                     ("down", "improvement", commits[1], commits[0])}
    up = steps[steps["cell"] == "up"].iloc[0]
    assert up["before"] == pytest.approx(10, rel=0.05) and up["after"] == pytest.approx(40, rel=0.05)


def test_a_step_below_the_threshold_is_not_reported(history_repo):
    repo, results_dir, commits = history_repo
    steps = detect_history_steps(load_history("main", results_dir=results_dir, repo=str(repo)),
                                 {r".*\.track_": 20.0})                # only > 21x would count
    assert steps.empty


def test_cli_writes_the_report_with_gaps_and_figure(history_repo, tmp_path, capsys):
    repo, results_dir, commits = history_repo
    out = tmp_path / "h"
    assert main(["history", "main", "--results-dir", results_dir, "--repo", str(repo), "--out-dir", str(out)]) == 0
    text = (out / "history.md").read_text()
    assert f"`{commits[4][:8]}` change 4" in text and f"`{commits[1][:8]}` change 1" in text
    assert f"- `{commits[3][:8]}` change 3: no results" in text
    assert f"- `{commits[2][:8]}` change 2: 4 cells failed" in text
    with Image.open(out / "history-track_variance.png") as im:
        assert im.width >= 600 and im.height >= 300
    assert "2 steps" in capsys.readouterr().out


def test_a_cell_is_one_series_across_a_change_of_parameters(tmp_path):
    """c0 stores the product ``(problem, N)`` with a skipped combination, c1 and c2 one ``cell``
    parameter listing the combinations that run: a cell's label, not asv's parameter string, names
    its series, so a step at c2 is found across the change."""
    repo, results_dir = tmp_path / "repo", str(tmp_path / "results")
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    commits = []
    for i in range(3):
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"change {i}")
        commits.append(_git(repo, "rev-parse", "HEAD"))
    rng = np.random.default_rng(1)
    _save(results_dir, commits[0], [10.0, 3.0, float("nan")], rng, params=[["'a'"], ["1", "10", "100"]])
    for commit, value in zip(commits[1:], (10.0, 40.0)):
        _save(results_dir, commit, [value, 3.0], rng, params=[["'a, 1'", "'a, 10'"]])
    h = load_history("main", results_dir=results_dir, repo=str(repo))
    assert len(h) == 3 * 3 and not h.duplicated(["commit", "cell"]).any()
    status = h.pivot(index="commit", columns="cell", values="status").loc[commits]
    assert list(status["a, 1"]) == ["ok", "ok", "ok"]
    assert list(status["a, 100"]) == ["skipped", "missing", "missing"]
    steps = detect_history_steps(h, THRESHOLDS)
    assert [(r.cell, r.commit) for r in steps.itertuples()] == [("a, 1", commits[2])]


def test_cli_errors_are_one_line(history_repo, tmp_path, capsys):
    repo, results_dir, _ = history_repo
    assert main(["history", "nosuchbranch", "--results-dir", results_dir, "--repo", str(repo),
                 "--out-dir", str(tmp_path / "h")]) == 2
    assert "git cannot list the range 'nosuchbranch'" in capsys.readouterr().err
    assert main(["history", "--bench", "nothing_matches", "--results-dir", results_dir, "--repo", str(repo),
                 "--out-dir", str(tmp_path / "h")]) == 2
    assert "no benchmark in the results matches --bench" in capsys.readouterr().err


TIMING = "timing.Estimate.time_estimate"


def _save_timing(results_dir, commit, seconds, rng, *, quick=False):
    """One timing cell ``'a'``: 10 recorded samples (a full run), or one sample without
    ``--record-samples`` (``asv run --quick``: asv keeps the value and stats with ``repeat`` 1)."""
    res = _results(results_dir, commit)
    samples = [seconds] if quick else list(seconds * np.exp(rng.normal(0, 0.02, 10)))
    res.add_result({"name": TIMING, "version": "1", "params": [["'a'"]]},
                   BenchmarkResult(result=[True], samples=[samples], number=[1], errcode=0, stderr="", profile=None),
                   record_samples=not quick)
    res.save(results_dir)


@pytest.fixture(scope="module")
def mixed_repo(tmp_path_factory):
    """c0 full 1 ms, c1 quick (5 ms: one cold sample), c2 full 1 ms, c3 full 3 ms (the real
    slowdown), c4 quick 15 ms: only c3 stepped."""
    repo, results_dir, commits = _repo(tmp_path_factory.mktemp("mixed"), 5)
    rng = np.random.default_rng(2)
    for commit, ms, quick in zip(commits, (1, 5, 1, 3, 15), (False, True, False, False, True)):
        _save_timing(results_dir, commit, ms * 1e-3, rng, quick=quick)
    return repo, results_dir, commits


def test_single_sample_points_are_left_out_of_step_detection_by_default(mixed_repo):
    repo, results_dir, commits = mixed_repo
    h = load_history("main", results_dir=results_dir, repo=str(repo), bench="time_")
    assert list(h["samples"]) == [10, 1, 10, 10, 1]
    steps = detect_history_steps(h, {r".*\.time_": 1.0})
    assert [(r.direction, r.commit) for r in steps.itertuples()] == [("regression", commits[3])]
    every = detect_history_steps(h, {r".*\.time_": 1.0}, include_single=True)
    # with them, the 15 ms quick point takes the blame and the real step at c3 is lost in its rise
    assert [(r.direction, r.commit) for r in every.itertuples()] == [("regression", commits[4])]


def test_cli_marks_single_sample_points_and_says_how_many_it_left_out(mixed_repo, tmp_path, capsys):
    repo, results_dir, commits = mixed_repo
    out = tmp_path / "h"
    args = ["history", "main", "--results-dir", results_dir, "--repo", str(repo), "--bench", "time_"]
    assert main(args + ["--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 single-sample points (asv run --quick) at 2 commits left out of step detection" in printed
    text = (out / "history.md").read_text()
    assert "2 single-sample points (asv run --quick) at 2 commits left out of step detection" in text
    assert f"- `{commits[1][:8]}` change 1: 1 of 1 points from one sample" in text
    assert f"`{commits[3][:8]}` change 3" in text and "1 steps" in text
    with Image.open(out / "history-time_estimate.png") as im:
        assert im.width >= 600
    assert main(args + ["--out-dir", str(tmp_path / "all"), "--include-quick"]) == 0
    assert "2 single-sample points (asv run --quick) at 2 commits included in step detection" in capsys.readouterr().out


def test_a_corrupted_results_file_is_counted_and_named(history_repo, tmp_path, capsys):
    import shutil
    repo, results_dir, commits = history_repo
    broken = str(tmp_path / "results")
    shutil.copytree(results_dir, broken)
    path = os.path.join(broken, MACHINE, f"{commits[1][:8]}-{ENV}.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    h = load_history(results_dir=broken, repo=str(repo))               # every commit with results
    assert commits[1] in set(h["commit"]) and set(h.loc[h["commit"] == commits[1], "status"]) == {"unreadable"}
    out = tmp_path / "h"
    assert main(["history", "--results-dir", broken, "--repo", str(repo), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "history.md").read_text()
    for text in (printed, md):
        assert "commits with unreadable results: 1" in text and path in text, text


def test_a_quantity_that_becomes_exactly_zero_is_a_step_without_warnings(tmp_path, capfd):
    """A zero-variance estimator (the centred delta method on a quadratic cost) stores exactly 0."""
    repo, results_dir = tmp_path / "repo", str(tmp_path / "results")
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    commits = []
    for i in range(4):
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"change {i}")
        commits.append(_git(repo, "rev-parse", "HEAD"))
    rng = np.random.default_rng(3)
    for commit, value in zip(commits, (2.0, 2.0, 0.0, 0.0)):
        _save(results_dir, commit, [value, 3.0], rng, params=[["'delta'", "'flat'"]])
    out = tmp_path / "h"
    assert main(["history", "main", "--results-dir", results_dir, "--repo", str(repo), "--out-dir", str(out)]) == 0
    printed, err = capfd.readouterr()
    assert "Warning" not in printed + err, printed + err
    steps = detect_history_steps(load_history("main", results_dir=results_dir, repo=str(repo)), THRESHOLDS)
    assert [(r.cell, r.direction, r.commit, r.after) for r in steps.itertuples()] == [
        ("delta", "improvement", commits[2], 0.0)]
    assert "| 0 (better, exactly 0) |" in (out / "history.md").read_text()


def test_an_infinite_value_is_left_out_of_step_detection_in_bounded_memory():
    """A track that is infinite at some commits (an exact estimator's bias z was inf) made asv's
    step detection allocate without bound (24 GB, then the OOM killer ended CI). Run in a child
    process with 3 GB of address space, so that a regression fails here instead of killing the run."""
    code = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        import numpy as np, pandas as pd
        from gradnoise.analysis.history import HISTORY_COLUMNS, detect_history_steps
        commits = [f"{i:040x}" for i in range(12)]
        values = [1.0] * 4 + [np.inf] * 4 + [3.0] * 4
        df = pd.DataFrame({"commit": commits, "date": 0, "subject": "s", "env": "e",
                           "benchmark": "quality.TrackBiasExcess.track_bias_excess", "cell": "c",
                           "status": "ok", "value": values, "ci_low": np.nan, "ci_high": np.nan,
                           "samples": 10})[HISTORY_COLUMNS]
        steps = detect_history_steps(df, {".*": 0.35})
        print(len(steps), steps["commit"].iloc[0][-2:] if len(steps) else "-")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "08"]          # the step from 1 to 3, at the first finite 3


def test_a_change_of_interval_method_is_named(tmp_path):
    """The bias track's asv version names the interval method: history names the commit where it
    changed (a step there is the method's, not the estimators')."""
    repo, results_dir, commits = _repo(tmp_path, 3)
    rng = np.random.default_rng(2)
    for commit, method in zip(commits, ("delta method", "delta method", "bootstrap-t")):
        res = _results(results_dir, commit)
        samples = [list(rng.exponential(1.0, 10)) for _ in CELLS]
        res.add_result({"name": "quality.TrackBiasExcess.track_bias_excess", "version": f"interval method: {method}",
                        "params": [CELLS]},
                       BenchmarkResult(result=[True] * len(CELLS), samples=samples, number=[1] * len(CELLS),
                                       errcode=0, stderr="", profile=None), record_samples=True)
        res.save(results_dir)
    h = load_history("main", results_dir=results_dir, repo=str(repo))
    assert h.attrs["method_changes"] == [(commits[2], "delta method", "bootstrap-t")]
