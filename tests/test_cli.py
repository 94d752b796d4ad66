"""The gradnoise command line: help with examples, one-line errors, and fit/plot/report end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from gradnoise.analysis import cli
from gradnoise.analysis.cli import build_parser, main
from gradnoise.analysis.fit import FIT_COLUMNS

COMMANDS = ["sweep", "list", "fit", "plot", "compare", "report"]
SMALL = ["--problem", "gaussian-quadratic", "--estimator", "reinforce", "--estimator", "reparam",
         "--budget", "1", "--budget", "10", "--budget", "100", "--replicates", "200", "--quiet"]


def test_command_modules_are_registered():
    for module in ("gradnoise.analysis.sweep", "gradnoise.analysis.fit", "gradnoise.analysis.plot", "gradnoise.analysis.compare", "gradnoise.analysis.report"):
        assert module in cli.COMMAND_MODULES


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"gradnoise {command}" in text


@pytest.fixture(scope="module")
def sweep_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sweep.csv"
    assert main(["sweep", *SMALL, "--out", str(out)]) == 0
    return out


def one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gradnoise {command}: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["fit", "plot"])
def test_missing_file_is_one_line(command, tmp_path, capsys):
    args = [command, str(tmp_path / "nope.csv")] + (["--out", str(tmp_path / "f.csv")] if command == "fit"
                                                     else ["--out-dir", str(tmp_path / "figs")])
    assert main(args) == 2
    assert "no such file" in one_line_error(capsys, command)


@pytest.mark.parametrize("command", ["fit", "plot"])
def test_csv_without_required_columns_is_one_line(command, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"problem": ["p"], "estimator": ["e"], "budget": [1]}).to_csv(bad, index=False)
    args = [command, str(bad)] + (["--out", str(tmp_path / "f.csv")] if command == "fit"
                                  else ["--out-dir", str(tmp_path / "figs")])
    assert main(args) == 2
    err = one_line_error(capsys, command)
    assert "lacks required column(s)" in err and "variance" in err


def test_bad_sweep_input_is_one_line(tmp_path, capsys):
    assert main(["sweep", "--problem", "no-such-problem", "--out", str(tmp_path / "s.csv"), "--quiet"]) == 2
    assert "unknown problem" in one_line_error(capsys, "sweep")


def test_console_script_exits_non_zero_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "gradnoise.analysis", "fit", str(tmp_path / "missing.csv")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1


def test_the_executable_exits_with_the_commands_status_and_its_output(tmp_path):
    """``python -m gradnoise.analysis`` ends with ``os._exit`` after the command
    (:func:`gradnoise.analysis.cli.run`): its status, its output flushed, its files written."""
    def gradnoise(*args):
        return subprocess.run([sys.executable, "-m", "gradnoise.analysis", *args], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    done = gradnoise("sweep", "--problem", "gaussian-quadratic", "--estimator", "reinforce", "--budget", "4",
                     "--replicates", "20", "--quiet", "--out", str(tmp_path / "s.csv"))
    assert done.returncode == 0 and "wrote 2 rows" in done.stdout, done.stderr
    assert len(pd.read_csv(tmp_path / "s.csv")) == 2
    helped = gradnoise("--help")
    assert helped.returncode == 0 and "usage: gradnoise" in helped.stdout
    wrong = gradnoise("no-such-command")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
    assert gradnoise("sweep", "--problem", "no-such-problem", "--out", str(tmp_path / "t.csv")).returncode == 2


def test_fit_then_plot(sweep_csv, tmp_path):
    fits = tmp_path / "fits.csv"
    assert main(["fit", str(sweep_csv), "--out", str(fits)]) == 0
    df = pd.read_csv(fits)
    assert list(df.columns) == FIT_COLUMNS and len(df) == 4 and (df["n_points"] == 3).all()
    figs = tmp_path / "figs"
    assert main(["plot", str(sweep_csv), "--fits", str(fits), "--out-dir", str(figs)]) == 0
    names = sorted(p.name for p in figs.iterdir() if not p.name.startswith("."))   # not its manifest
    assert names == ["gaussian-quadratic_k-2-loc-1-scale-1.png", "gaussian-quadratic_k-2-loc-1-scale-1.svg"]
    assert all((figs / n).stat().st_size > 10_000 for n in names)


def test_report_end_to_end(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *SMALL, "--rank-budget", "10", "--out-dir", str(out)]) == 0
    for name in ("sweep.csv", "fits.csv", "summary.md", "figures/gaussian-quadratic_k-2-loc-1-scale-1.png"):
        assert (out / name).exists(), name
    text = (out / "summary.md").read_text()
    assert "## gaussian-quadratic:k=2,loc=1,scale=1" in text and "Ranked by total variance at N = 10" in text
    table = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(table) >= 2 and "reparam" in table[0]          # pathwise wins on a smooth quadratic cost
    assert "Fitted slopes" in text and "![gaussian-quadratic" in text
