"""The asv configuration, and proof that asv's regression tracking catches a noisier estimator.

The slow test builds a throwaway git repository from this project with two commits, the second
of which breaks the leave-one-out baseline (it returns zero, so ``reinforce-loo`` degrades to
REINFORCE with a 1/(N-1) factor). It installs each commit into an environment of its own, runs
the variance track benchmarks of both with ``asv run --set-commit-hash --record-samples``, and
asks ``asv compare`` -- the same table and statistics (factor and Mann-Whitney U on the batch
samples) that ``asv continuous`` exits non-zero on -- which benchmarks got worse, and
``asv publish`` which regressions its step detection (with ``regressions_thresholds``) reports.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from asv import util as asv_util

ROOT = Path(__file__).resolve().parents[1]
CONFIG = asv_util.load_json(str(ROOT / "asv.conf.json"), js_comments=True)

# The one line of estimators/baselines.py that the second commit breaks.
LOO_LINE = "return (f.sum(0, keepdim=True) - f) / (n - 1)"
LOO_BROKEN = "return torch.zeros_like(f)  # deliberately broken: no baseline"
MACHINE = "gradnoise-regression-test"
VARIANCE = "quality.TrackVariance.track_variance"


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

    from benchmarks.quality import BATCHES, BIAS_ALPHA, BIAS_Z_THRESHOLD, REPLICATES, bias_excess
    from benchmarks.common import BUDGETS, ESTIMATORS, PROBLEMS

    m = len(PROBLEMS) * len(ESTIMATORS) * len(BUDGETS) * BATCHES
    assert 2 * m * stats.norm.sf(BIAS_Z_THRESHOLD) == pytest.approx(BIAS_ALPHA)
    rng = np.random.default_rng(0)
    unbiased = np.abs(rng.standard_normal((20, m)))          # 20 runs of the whole suite
    excess = np.vectorize(bias_excess)(unbiased)
    assert (excess == 0).all(axis=1).sum() >= 19              # P(a false step in a run) <= 1%
    biased = np.abs(rng.normal(np.sqrt(REPLICATES) * 0.75, 1.0, m))  # bias of 3/4 standard deviation
    assert (np.vectorize(bias_excess)(biased) > 0).all()


# ------------------------------------------------------------------------------------------
# regression proof (slow; part of the default run and of CI)
# ------------------------------------------------------------------------------------------
def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def _git(repo: Path, *args: str) -> str:
    who = ["-c", "user.name=gradnoise test", "-c", "user.email=test@example.invalid"]
    return _run(["git", *who, *args], repo).strip()


def _project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    return [p for p in listed if p and (ROOT / p).is_file()]


def _throwaway_repository(repo: Path) -> tuple[str, str]:
    """The project as it is now (commit 1), then with the leave-one-out baseline zeroed (2)."""
    for rel in _project_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "baseline")
    good = _git(repo, "rev-parse", "HEAD")
    baselines = repo / "estimators" / "baselines.py"
    source = baselines.read_text()
    assert source.count(LOO_LINE) == 1, "LeaveOneOut.value changed: update LOO_LINE in this test"
    baselines.write_text(source.replace(LOO_LINE, LOO_BROKEN))
    _git(repo, "commit", "-q", "-am", "break the leave-one-out baseline")
    return good, _git(repo, "rev-parse", "HEAD")


def _compare_table(text: str) -> dict[str, tuple[str, str, str]]:
    """``{benchmark(params): (mark, before, after)}`` from ``asv compare``'s GitHub table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4].startswith(VARIANCE):
            rows[cells[4]] = (cells[0], cells[1], cells[2])
    return rows


@pytest.mark.slow
def test_asv_flags_the_broken_baseline_and_nothing_else(tmp_path):
    start = time.perf_counter()
    repo, home, env_dir = tmp_path / "repo", tmp_path / "home", tmp_path / "env"
    repo.mkdir(), home.mkdir()
    good, bad = _throwaway_repository(repo)

    # One environment; each commit's package is installed into it (non-editable) before its run.
    # System site-packages supply torch and the other dependencies; the installed copy shadows
    # any editable install of the working tree (it comes first on sys.path).
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)], tmp_path)
    python = str(env_dir / "bin" / "python")
    env = {**os.environ, "HOME": str(home)}            # asv's machine file goes to this HOME
    asv = [sys.executable, "-m", "asv"]
    _run([*asv, "machine", "--yes", "--machine", MACHINE], repo, env)
    for commit in (good, bad):
        _git(repo, "checkout", "-q", commit)
        _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
              "--force-reinstall", str(repo)], tmp_path, env)
        where = _run([python, "-c", "import estimators; print(estimators.__file__)"], tmp_path, env)
        assert where.startswith(str(env_dir)), f"benchmarks would import {where}, not commit {commit}"
        _run([*asv, "run", "--environment", f"existing:{python}", "--set-commit-hash", commit,
              "--record-samples", "--machine", MACHINE, "--bench", f"^{re.escape(VARIANCE)}",
              "--show-stderr"], repo, env)

    out = subprocess.run([*asv, "compare", "--machine", MACHINE, "--factor", "1.1", good, bad],
                         cwd=repo, env=env, capture_output=True, text=True)
    print(out.stdout)
    print(f"regression proof: {time.perf_counter() - start:.0f} s")
    table = _compare_table(out.stdout)
    assert table, out.stdout + out.stderr

    cell = re.compile(r"\('(?P<problem>[^']+)', '(?P<estimator>[^']+)', (?P<n>\d+)\)$")
    worse = set()
    for name, (mark, before, after) in table.items():
        m = cell.search(name)
        problem, estimator, n = m["problem"], m["estimator"], int(m["n"])
        if mark == "+":
            worse.add((problem, estimator, n))
        if estimator != "reinforce-loo":
            # untouched: same code, same cell-derived seeds -> not flagged, nor failed
            assert mark == "", (name, mark, before, after)
        elif n == 1:
            assert before == after == "n/a", (name, before, after)         # LOO needs N >= 2
    # Where the mean cost is far from zero the baseline is worth orders of magnitude of
    # variance; each such cell must be reported as a significant regression.
    must = {(p, "reinforce-loo", n) for p in ("bernoulli-toy", "gaussian-quadratic-nd", "linear-gaussian-vae")
            for n in (10, 100)}
    assert must <= worse, sorted(must - worse)
    assert {e for _, e, _ in worse} == {"reinforce-loo"}

    # `asv publish` detects steps in the history with the per-family regressions_thresholds.
    _run([*asv, "publish"], repo, env)
    published = json.loads((repo / CONFIG["html_dir"] / "regressions.json").read_text())
    steps = {cell.search(entry[0]).groups() for entry in published["regressions"]}
    assert {(p, e, int(n)) for p, e, n in steps} == must, sorted(steps)
