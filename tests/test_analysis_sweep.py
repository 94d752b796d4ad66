"""gradnoise.analysis.sweep: resumable sweeps (no finished cell lost) and atomic CSV writes."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

import gradnoise as gn
from gradnoise.analysis import sweep
from gradnoise.analysis.cli import main

ARGS = ["sweep", "--problem", "gaussian-quadratic", "--estimator", "reinforce", "--estimator", "reparam",
        "--budget", "1", "--budget", "4", "--budget", "16", "--replicates", "50", "--seed", "3", "--quiet"]
N_CELLS = 6
ITER_MEASURE = gn.engine.iter_measure


class Counter:
    """Wraps engine.iter_measure: counts computed cells, optionally interrupts after ``stop_after``."""

    def __init__(self, stop_after=None):
        self.cells = 0
        self.stop_after = stop_after
        self.original = ITER_MEASURE

    def __call__(self, grid, replicates, seed=0, **kw):
        for rows in self.original(grid, replicates, seed, **kw):
            if self.stop_after is not None and self.cells == self.stop_after:
                raise KeyboardInterrupt
            self.cells += 1
            yield rows


@pytest.fixture()
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.csv"
    assert main(ARGS + ["--out", str(out)]) == 0
    return pd.read_csv(out)


def test_interrupted_sweep_keeps_finished_cells_and_resumes(tmp_path, monkeypatch, reference, capsys):
    out = tmp_path / "s.csv"
    first = Counter(stop_after=4)
    monkeypatch.setattr(gn.engine, "iter_measure", first)
    assert main(ARGS + ["--out", str(out)]) == 130        # as Ctrl-C would
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()                                 # no half-written CSV
    side = sweep.partial_path(out)
    with open(side) as fh:
        assert len(fh.readlines()) == 4                     # every finished cell kept

    second = Counter()
    monkeypatch.setattr(gn.engine, "iter_measure", second)
    assert main(ARGS + ["--out", str(out)]) == 0
    assert second.cells == N_CELLS - 4                      # only the missing cells computed
    assert not os.path.exists(side)
    resumed = pd.read_csv(out)
    cols = [c for c in gn.COLUMNS if c != "seconds_per_estimate"]
    pd.testing.assert_frame_equal(resumed[cols], reference[cols])  # same numbers as one uninterrupted run

    third = Counter()
    monkeypatch.setattr(gn.engine, "iter_measure", third)
    assert main(ARGS + ["--out", str(out)]) == 0
    assert third.cells == 0                                 # re-running a finished sweep computes nothing
    assert main(ARGS + ["--out", str(out), "--fresh"]) == 0
    assert third.cells == N_CELLS


def test_torn_last_line_of_a_killed_sweep_is_ignored(tmp_path, monkeypatch):
    out = tmp_path / "s.csv"
    monkeypatch.setattr(gn.engine, "iter_measure", Counter(stop_after=2))
    assert main(ARGS + ["--out", str(out)]) == 130
    with open(sweep.partial_path(out), "a") as fh:        # killed in the middle of a write
        fh.write('[{"problem": "gaussian-quad')
    counter = Counter()
    monkeypatch.setattr(gn.engine, "iter_measure", counter)
    assert main(ARGS + ["--out", str(out)]) == 0
    assert counter.cells == N_CELLS - 2
    assert len(pd.read_csv(out)) == 2 * N_CELLS            # two params per cell


def test_cells_with_other_replicates_or_seed_are_not_reused(tmp_path, monkeypatch):
    out = tmp_path / "s.csv"
    assert main(ARGS + ["--out", str(out)]) == 0
    counter = Counter()
    monkeypatch.setattr(gn.engine, "iter_measure", counter)
    args = [a if a != "3" else "4" for a in ARGS]           # --seed 4
    assert main(args + ["--out", str(out)]) == 0
    assert counter.cells == N_CELLS
    assert set(pd.read_csv(out)["seed"]) == {3, 4}            # the earlier rows are kept: the union
    assert main(args + ["--out", str(out), "--replace"]) == 0  # ... unless replaced, by name
    assert set(pd.read_csv(out)["seed"]) == {4}


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "x.csv"
    path.write_text("old\n")

    def broken(self, fh, **kw):
        fh.write("half,")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        sweep.atomic_write_csv(pd.DataFrame({"a": [1]}), path)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["x.csv"]                # no temporary file left behind


def test_sidecar_lines_are_whole_cells(tmp_path, monkeypatch):
    out = tmp_path / "s.csv"
    monkeypatch.setattr(gn.engine, "iter_measure", Counter(stop_after=1))
    main(ARGS + ["--out", str(out)])
    rows = json.loads(open(sweep.partial_path(out)).readline())
    assert [r["param"] for r in rows] == ["loc", "scale"] and set(rows[0]) == set(gn.COLUMNS)


# ------------------------------------------------------------------------------------------
# no file lost without a word
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["# My notes\n\nsome text, with commas\n", "a,b\n1,2\n", "\x89PNG\r\n\x1a\n\x00\x00"],
                         ids=["markdown", "other-csv", "binary"])
def test_a_file_that_is_not_a_results_file_is_never_overwritten(tmp_path, capsys, text):
    notes = tmp_path / "notes.md"
    notes.write_bytes(text.encode("latin-1"))
    for extra in ([], ["--replace"], ["--fresh"]):
        assert main(ARGS + ["--out", str(notes)] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refusing to overwrite" in err[0] and "not a gradnoise results file" in err[0]
        assert notes.read_bytes() == text.encode("latin-1")         # intact
    assert not os.path.exists(sweep.partial_path(notes))


def test_a_sweep_of_another_grid_keeps_the_files_rows(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(ARGS + ["--out", str(out)]) == 0
    first = pd.read_csv(out)
    other = ["sweep", "--problem", "gaussian-cos", "--estimator", "reinforce", "--budget", "2",
             "--replicates", "50", "--seed", "3", "--quiet", "--out", str(out)]
    assert main(other) == 0
    assert f"{len(first)} rows of other cells kept in the file" in capsys.readouterr().out
    union = pd.read_csv(out)
    assert len(union) == len(first) + 2
    kept = union[union["problem"].str.startswith("gaussian-quadratic")].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first, check_exact=True)    # the earlier rows, as they were
    assert main(other) == 0                                         # the same again: nothing grows
    assert len(pd.read_csv(out)) == len(union)
    assert f"{len(first)} rows of other cells kept in the file" in capsys.readouterr().out


def test_rows_that_would_clash_in_fits_are_refused_naming_replace(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(ARGS + ["--out", str(out)]) == 0
    before = out.read_bytes()
    other_r = [a if a != "50" else "60" for a in ARGS]              # the same cells at another R
    assert main(other_r + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "R=50" in err[0] and "--replace" in err[0]
    assert out.read_bytes() == before
    assert main(other_r + ["--out", str(out), "--replace"]) == 0
    assert set(pd.read_csv(out)["replicates"]) == {60}
