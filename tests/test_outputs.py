"""A command never overwrites a file it did not write, and never deletes one (issue 16, case 4).

Every command that writes into a folder or a file: ``fit --out``, ``plot --out-dir``,
``compare --out`` / ``--out-dir``, ``history --out-dir``, ``report --out-dir`` (its summary,
fits and figures; its sweep.csv is ``sweep``'s), ``study --out-dir`` and ``--update-readme``.
A user's file where a command would write is refused with one line (exit 2), left intact, and
nothing is computed; the command's own earlier output, with or without the manifest (folders
written before it existed), is replaced; files beside the outputs are never touched.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from test_analysis_compare import AFTER, BEFORE, timings, write_results
from test_analysis_history import history_repo  # noqa: F401  (the fixture)

import gradnoise as gn
from gradnoise import io
from gradnoise.analysis import studies
from gradnoise.analysis.cli import main
from gradnoise.analysis.plot import slug
from gradnoise.analysis.studies import base as study_base
from gradnoise.analysis.studies import cli as study_cli

SMALL = ["--problem", "gaussian-quadratic", "--estimator", "reinforce", "--estimator", "reparam",
         "--budget", "1", "--budget", "10", "--replicates", "100", "--quiet"]
NOTES = "# My notes\n\nNot written by gradnoise.\n"
FIGURE = slug(gn.make_problem("gaussian-quadratic").spec)      # the name of its figure files


def one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gradnoise {command}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def snapshot(folder):
    """Every file under ``folder`` (the manifests left out) -> its bytes."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files if f != io.MANIFEST}


def strip_to_main(folder):
    """The folder as main wrote it before this change: no manifest, no markdown mark line."""
    for d, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(d, f)
            if f == io.MANIFEST:
                os.unlink(path)
            elif f.endswith(".md") and io.MARKDOWN_MARK in open(path).read():
                lines = open(path).read().splitlines()
                with open(path, "w") as fh:
                    fh.write("\n".join(line for line in lines if not line.startswith(io.MARKDOWN_MARK)) + "\n")


@pytest.fixture(scope="module")
def sweep_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "sweep.csv"
    assert main(["sweep", *SMALL, "--out", str(out)]) == 0
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["summary.md", "fits.csv", f"figures/{FIGURE}.png"])
def test_report_refuses_a_user_file_where_it_writes_before_computing(victim, tmp_path, capsys):
    out = tmp_path / "report"
    (out / victim).parent.mkdir(parents=True, exist_ok=True)
    (out / victim).write_text(NOTES)
    assert main(["report", *SMALL, "--out-dir", str(out)]) == 2
    err = one_line_error(capsys, "report")
    assert str(out / victim) in err and "which is not" in err and "left as it is" in err
    assert (out / victim).read_text() == NOTES
    assert not (out / "sweep.csv").exists()                   # refused before the sweep


def test_report_reruns_into_its_own_folder_and_one_written_before_the_manifest(tmp_path):
    out = tmp_path / "report"
    assert main(["report", *SMALL, "--out-dir", str(out)]) == 0
    manifest = json.loads((out / io.MANIFEST).read_text())["files"]
    assert {"summary.md", "fits.csv"} <= set(manifest) and manifest["summary.md"]["command"] == "gradnoise report"
    assert set(json.loads((out / "figures" / io.MANIFEST).read_text())["files"]) == {
        f"{FIGURE}.png", f"{FIGURE}.svg"}
    assert (out / "summary.md").read_text().splitlines()[-1].startswith(io.MARKDOWN_MARK + " gradnoise report")
    (out / "my-notes.md").write_text(NOTES)                   # the user's files beside the outputs
    (out / "figures" / "sketch.png").write_bytes(b"not a matplotlib figure")
    assert main(["report", *SMALL, "--out-dir", str(out)]) == 0
    strip_to_main(out)                                        # as main writes it today
    before = snapshot(out)
    assert main(["report", *SMALL, "--out-dir", str(out)]) == 0
    after = snapshot(out)
    assert after["my-notes.md"] == NOTES.encode() and after["figures/sketch.png"] == b"not a matplotlib figure"
    assert set(before) <= set(after)                          # nothing deleted


def test_an_empty_file_may_be_overwritten(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.md").write_text("")
    assert main(["report", *SMALL, "--out-dir", str(out)]) == 0
    assert (out / "summary.md").read_text().startswith("# gradnoise report")


# --------------------------------------------------------------------------------------------
# fit and plot
# --------------------------------------------------------------------------------------------
def test_fit_refuses_to_overwrite_a_file_that_is_not_a_fits_csv(sweep_csv, tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    assert main(["fit", str(sweep_csv), "--out", str(notes)]) == 2
    assert str(notes) in one_line_error(capsys, "fit") and notes.read_text() == NOTES
    assert main(["fit", str(sweep_csv), "--out", str(sweep_csv)]) == 2    # a results CSV is not a fits CSV
    assert "not" in one_line_error(capsys, "fit") and len(pd.read_csv(sweep_csv)) > 0
    fits = tmp_path / "fits.csv"
    assert main(["fit", str(sweep_csv), "--out", str(fits)]) == 0
    assert main(["fit", str(sweep_csv), "--out", str(fits)]) == 0         # its own output: replaced
    assert not (tmp_path / io.MANIFEST).exists()                          # single files: no manifest


def test_plot_refuses_a_figure_it_did_not_draw(sweep_csv, tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    (out / f"{FIGURE}.svg").write_text("<svg>my drawing</svg>")
    (out / "keep.txt").write_text(NOTES)
    assert main(["plot", str(sweep_csv), "--out-dir", str(out)]) == 2
    assert f"{FIGURE}.svg" in one_line_error(capsys, "plot")
    assert (out / f"{FIGURE}.svg").read_text() == "<svg>my drawing</svg>"
    assert not (out / f"{FIGURE}.png").exists()
    assert main(["plot", str(sweep_csv), "--out-dir", str(out), "--format", "png"]) == 0   # the svg not written
    assert main(["plot", str(sweep_csv), "--out-dir", str(out), "--format", "png"]) == 0
    os.unlink(out / io.MANIFEST)                              # a folder from before the manifest
    assert main(["plot", str(sweep_csv), "--out-dir", str(out), "--format", "png"]) == 0
    assert (out / "keep.txt").read_text() == NOTES and (out / f"{FIGURE}.svg").read_text() == "<svg>my drawing</svg>"


# --------------------------------------------------------------------------------------------
# compare and history
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asv_results(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("asv") / "results")
    rng = np.random.default_rng(0)
    for commit in (BEFORE, AFTER):
        write_results(root, commit, {"timing.Estimate.time_estimate": [timings(rng, 1e-4) for _ in range(6)]})
    return root


def test_compare_refuses_user_files_and_replaces_its_own(asv_results, tmp_path, capsys):
    cmd = ["compare", BEFORE, AFTER, "--results-dir", asv_results]
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    assert main([*cmd, "--out", str(notes)]) == 2
    assert str(notes) in one_line_error(capsys, "compare") and notes.read_text() == NOTES
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "comparison.md").write_text(NOTES)
    assert main([*cmd, "--out-dir", str(out)]) == 2
    assert "comparison.md" in one_line_error(capsys, "compare") and (out / "comparison.md").read_text() == NOTES
    assert not (out / "comparison.csv").exists()
    os.unlink(out / "comparison.md")
    (out / "other.txt").write_text(NOTES)
    assert main([*cmd, "--out-dir", str(out), "--out", str(tmp_path / "cmp.csv")]) == 0
    assert main([*cmd, "--out-dir", str(out), "--out", str(tmp_path / "cmp.csv")]) == 0
    strip_to_main(out)
    assert main([*cmd, "--out-dir", str(out)]) == 0
    assert (out / "other.txt").read_text() == NOTES


def test_history_refuses_user_files_and_replaces_its_own(history_repo, tmp_path, capsys):  # noqa: F811
    repo, results_dir, _ = history_repo
    cmd = ["history", "main", "--results-dir", results_dir, "--repo", str(repo)]
    out = tmp_path / "h"
    out.mkdir()
    for victim in ("history.md", "history-track_variance.png", "history-my-plot.png"):
        (out / victim).write_text(NOTES)
        assert main([*cmd, "--out-dir", str(out)]) == 2
        assert victim in one_line_error(capsys, "history") and (out / victim).read_text() == NOTES
        os.unlink(out / victim)
    (out / "notes.txt").write_text(NOTES)
    assert main([*cmd, "--out-dir", str(out)]) == 0
    assert main([*cmd, "--out-dir", str(out)]) == 0
    strip_to_main(out)
    assert main([*cmd, "--out-dir", str(out)]) == 0
    assert (out / "notes.txt").read_text() == NOTES


# --------------------------------------------------------------------------------------------
# studies and --update-readme
# --------------------------------------------------------------------------------------------
@pytest.fixture
def toy_study():
    """A registered study that writes a table, a figure, study.md (as the real ones do), counting its runs."""
    runs = []

    def run(out, config):
        runs.append(out)
        io.atomic_write_csv(pd.DataFrame({"x": [1.0]}), out / "table.csv")
        fig, _ = study_base.new_figure()
        outcome = study_base.Outcome("toy-study", "Toy", "A claim.", True, ["a line"],
                                     [study_base.save_figure(fig, out / "toy.png")])
        study_base.write_study_md(out, outcome, "method", "body")
        return outcome

    study_base.study("toy-study", "Toy", "a study for the output tests")(run)
    yield runs
    del study_base._STUDIES["toy-study"]


@pytest.mark.parametrize("victim", ["study.md", "summary.json", "table.csv", "toy.png", "results.csv", "data.csv"])
def test_study_refuses_a_user_file_in_its_folder_before_running(toy_study, victim, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / victim).write_text(NOTES)
    assert main(["study", "toy-study", "--out-dir", str(out)]) == 2
    assert victim in one_line_error(capsys, "study") and (out / victim).read_text() == NOTES
    assert toy_study == []                                    # nothing ran


def test_study_reruns_into_its_own_folder_and_one_written_before_the_manifest(toy_study, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text(NOTES)
    studies.run_study("toy-study", out)
    assert {"table.csv", "toy.png", "study.md", "summary.json"} <= set(json.loads((out / io.MANIFEST).read_text())["files"])
    studies.run_study("toy-study", out)
    strip_to_main(out)
    studies.run_study("toy-study", out)
    assert len(toy_study) == 3 and (out / "notes.txt").read_text() == NOTES


def test_update_readme_refuses_a_readme_without_the_block_before_running(toy_study, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(NOTES)
    assert main(["study", "all", "--out-dir", str(tmp_path / "out"), "--update-readme", str(readme)]) == 2
    assert "results:start" in one_line_error(capsys, "study") and readme.read_text() == NOTES
    assert toy_study == [] and not (tmp_path / "out").exists()


def test_update_readme_refuses_a_figure_it_did_not_copy(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    out = tmp_path / "out"
    (out / "one").mkdir(parents=True)
    shutil.copyfile(__file__, out / "one" / "fig.png")
    outcome = study_base.Outcome("one", "Title", "Claim.", True, ["x"], ["fig.png"], wall_seconds=1.0)
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "one-fig.png").write_text(NOTES)
    with pytest.raises(ValueError, match="one-fig.png"):
        study_cli.update_readme(readme, [outcome], out)
    assert (tmp_path / "docs" / "results" / "one-fig.png").read_text() == NOTES and "old" in readme.read_text()
    os.unlink(tmp_path / "docs" / "results" / "one-fig.png")
    study_cli.update_readme(readme, [outcome], out)
    study_cli.update_readme(readme, [outcome], out)           # its own copy: replaced
    assert "old" not in readme.read_text()


# --------------------------------------------------------------------------------------------
# the guard itself
# --------------------------------------------------------------------------------------------
def test_a_listed_file_edited_since_is_no_longer_taken_for_gradnoise_s(tmp_path):
    claim = io.claim_outputs("gradnoise test", tmp_path, {"a.txt": None})
    (tmp_path / "a.txt").write_text("written by gradnoise\n")
    claim.record()
    assert io.written_by_gradnoise(tmp_path / "a.txt")
    (tmp_path / "a.txt").write_text("the user's text now\n")
    assert not io.written_by_gradnoise(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="a.txt"):
        io.claim_outputs("gradnoise test", tmp_path, {"a.txt": None})
