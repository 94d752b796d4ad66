"""``gradnoise compare`` and ``gradnoise history`` on real asv results (tests/asv_repository.py).

Expected verdicts are derived from the commits themselves, not from another implementation:
``good`` and ``comment`` run the same code with the same cell-derived seeds, so every quality
track is bitwise equal; ``broken`` changes only ``reinforce-loo``; the benchmarks list only cells
that run, so asv stores no NaN (skipped) entry in its results files, read here as plain JSON.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gradnoise.analysis.cli import main
from gradnoise.analysis.compare import compare, comparison_markdown
from gradnoise.analysis.history import detect_history_steps, load_history
from asv_repository import MACHINE

pytestmark = pytest.mark.slow

VARIANCE = "quality.TrackVariance.track_variance"
MUST = {(p, "reinforce-loo", n) for p in ("bernoulli-toy", "gaussian-quadratic-nd", "linear-gaussian-vae")
        for n in (10, 100)}


def _compare(asv_repository, before, after, **kw):
    c = asv_repository.commits
    return compare(c[before], c[after], results_dir=str(asv_repository.results_dir), machine=MACHINE,
                   repo=str(asv_repository.repo), **kw)


def _stored_nan_cells(asv_repository, commit: str) -> int:
    """Cells asv stored as NaN (skipped) for ``commit``, counted in the raw results JSON."""
    path, = (asv_repository.results_dir / MACHINE).glob(f"{commit[:8]}-*.json")
    data = json.loads(path.read_text())
    columns = data["result_columns"]
    count = 0
    for values in data["results"].values():
        result = values[columns.index("result")]
        count += sum(1 for v in result if isinstance(v, float) and np.isnan(v))
    return count


def _cells(df):
    return {(p, e, int(n)) for p, e, n in df["cell"].str.split(", ")}


def test_self_comparison_reports_nothing_and_skips_nothing(asv_repository):
    df = _compare(asv_repository, "good", "good")
    assert set(df["verdict"]) == {"unchanged"}
    assert _stored_nan_cells(asv_repository, asv_repository.commits["good"]) == 0   # every listed cell ran
    assert ("bernoulli-toy", "reparam", 10) not in _cells(df)                       # pathwise on a discrete problem


def test_comment_only_commit_has_zero_false_alarms_at_the_defaults(asv_repository):
    df = _compare(asv_repository, "good", "comment")
    assert set(df["verdict"]) == {"unchanged"}
    tested = df[df["verdict"] == "unchanged"]
    assert (tested["ratio"] == 1.0).all()                 # same code, same seeds: bitwise equal tracks


def test_compare_finds_the_broken_baseline_first(asv_repository, tmp_path, capsys):
    df = _compare(asv_repository, "comment", "broken")
    regressed = df[df["verdict"] == "regressed"]
    variance = regressed[regressed["benchmark"] == VARIANCE]
    assert MUST <= _cells(variance), sorted(MUST - _cells(variance))
    assert {e for _, e, _ in _cells(df[df["verdict"].isin(["regressed", "improved"])])} == {"reinforce-loo"}
    assert (df["verdict"] != "failed").all()

    c = asv_repository.commits
    out_dir = tmp_path / "cmp"
    argv = ["compare", c["comment"], c["broken"], "--results-dir", str(asv_repository.results_dir),
            "--machine", MACHINE, "--out-dir", str(out_dir), "--fail-on-regression"]
    assert main(argv) == 1
    assert "regressed" in capsys.readouterr().out
    text = (out_dir / "comparison.md").read_text()
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[0].startswith("## Regressed")                        # the verdict comes first
    first_rows = text.split("## Regressed", 1)[1].split("\n## ", 1)[0]
    assert "reinforce-loo" in first_rows and "| `track_variance` |" in first_rows
    with Image.open(out_dir / "comparison.png") as im:
        assert im.width >= 600 and im.height >= 300
    assert len((out_dir / "comparison.csv").read_text().splitlines()) == len(df) + 1


def test_compare_gate_passes_on_the_comment_only_commit(asv_repository, tmp_path, capsys):
    c = asv_repository.commits
    argv = ["compare", c["good"], c["comment"], "--results-dir", str(asv_repository.results_dir),
            "--machine", MACHINE, "--out-dir", str(tmp_path / "cmp"), "--fail-on-regression"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("0 regressed, 0 improved, ")


def test_history_names_the_breaking_commit_and_shows_the_gap(asv_repository, tmp_path, capsys):
    repo, c = asv_repository.repo, asv_repository.commits
    history = load_history("main", results_dir=str(asv_repository.results_dir), machine=MACHINE, repo=str(repo))
    assert list(dict.fromkeys(history["commit"])) == [c["good"], c["docs"], c["comment"], c["broken"]]
    assert (history.loc[history["commit"] == c["docs"], "status"] == "missing").all()

    steps = detect_history_steps(history, {r".*\.track_": 0.35, r".*\.track_bias_excess": 1.0})
    variance = steps[steps["benchmark"] == VARIANCE]
    found = {(p, e, int(n)) for p, e, n in variance["cell"].str.split(", ")}
    assert found == MUST, sorted(found)
    assert set(steps["commit"]) == {c["broken"]}
    assert (steps["subject"] == "break the leave-one-out baseline").all()
    assert set(steps["cell"].str.split(", ").str[1]) == {"reinforce-loo"}

    out_dir = tmp_path / "history"
    assert main(["history", "main", "--results-dir", str(asv_repository.results_dir), "--machine", MACHINE,
                 "--repo", str(repo), "--out-dir", str(out_dir)]) == 0
    text = (out_dir / "history.md").read_text()
    assert f"`{c['broken'][:8]}` break the leave-one-out baseline" in text
    assert f"`{c['docs'][:8]}` docs: a sentence: no results" in text
    with Image.open(out_dir / "history-track_variance.png") as im:
        assert im.width >= 600 and im.height >= 300


def test_history_default_is_every_commit_with_results(asv_repository):
    history = load_history(results_dir=str(asv_repository.results_dir), machine=MACHINE,
                           repo=str(asv_repository.repo), bench="track_variance")
    c = asv_repository.commits
    assert list(dict.fromkeys(history["commit"])) == [c["good"], c["comment"], c["broken"]]
    assert set(history["benchmark"]) == {VARIANCE}


def test_markdown_of_a_self_comparison_says_so(asv_repository):
    df = _compare(asv_repository, "good", "good")
    text = comparison_markdown(df, "good", "good")
    assert text.splitlines()[2].startswith("**0 regressed · 0 improved · ")
    assert "## Regressed" not in text and "## Skipped" not in text
