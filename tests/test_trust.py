"""Never a silent wrong number: each way the suite could hand a user a wrong or stale number, or a
traceback instead of one clear line, and what it does instead.

Each test fails on the code before its fix: stale cells reused after a code change, a pathwise
estimator returning zeros on a cost autograd cannot see, NaN rows, claims from the SNR noise
floor, unbounded memory requests, two sweeps writing one file, and tracebacks on bad input.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.distributions import Normal

import gradnoise as gn
from gradnoise.analysis import fit as fit_mod
from gradnoise.analysis import sweep
from gradnoise.analysis.cli import main
from gradnoise import provenance

ROOT = Path(__file__).resolve().parents[1]
ITER_MEASURE = gn.engine.iter_measure
SWEEP = ["sweep", "--problem", "gaussian-quadratic", "--estimator", "reinforce", "--estimator", "reinforce-loo",
         "--budget", "2", "--budget", "8", "--replicates", "40", "--quiet"]


def _normal(cost, name="custom"):
    return gn.ExpectationProblem(Normal, {"loc": torch.tensor(0.3), "scale": torch.tensor(1.0)}, cost, name=name)


# ------------------------------------------------------------------------------------------
# 1. stale results after a code change
# ------------------------------------------------------------------------------------------
def test_code_version_names_the_source(tmp_path):
    package = tmp_path / "estimators"
    shutil.copytree(provenance.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    files = sorted(package.rglob("*.py"))
    before = provenance.source_hash(*files)
    assert provenance.source_hash(*files) == before                       # deterministic
    baselines = package / "baselines.py"
    baselines.write_text(baselines.read_text().replace("/ (n - 1)", "/ n"))  # a one-character change
    assert provenance.source_hash(*files) != before
    assert provenance.code_version() == provenance.code_version()


def test_cells_of_other_code_are_recomputed_and_said_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.csv"
    assert main(SWEEP + ["--out", str(out)]) == 0
    first = pd.read_csv(out, dtype={"code_version": str})
    assert (first["code_version"] == provenance.code_version()).all()

    assert main(SWEEP + ["--out", str(out)]) == 0                          # same code: every cell reused
    assert "4 cells: 0 computed now, 4 reused from an earlier run of the same code" in capsys.readouterr().out

    # a commit that changes the estimators' code: every cell is measured anew, and the output says why
    real = provenance.code_version()
    monkeypatch.setattr(provenance, "code_version", lambda: "0123456789ab")
    assert main(SWEEP + ["--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert ("4 cells: 4 computed now, 4 of them recomputed because their code changed since: "
            f"gradnoise's code ({real} -> 0123456789ab) (4 cells)") in said
    assert (pd.read_csv(out, dtype={"code_version": str})["code_version"] == "0123456789ab").all()


def test_oracle_cache_is_keyed_by_the_code(tmp_path, monkeypatch):
    from gradnoise.problems import truths

    monkeypatch.setenv("GRADNOISE_CACHE", str(tmp_path))
    problem = gn.make_problem("gaussian-quadratic")
    truths.oracle_truth(problem, "reparam", 4, samples=2048)
    truths.oracle_truth(problem, "reparam", 4, samples=2048)
    assert len(list((tmp_path / "oracles").iterdir())) == 1                # reused by the same code
    monkeypatch.setattr(provenance, "code_version", lambda: "0123456789ab")
    truths.oracle_truth(problem, "reparam", 4, samples=2048)
    assert len(list((tmp_path / "oracles").iterdir())) == 2                # computed anew by other code


def test_empty_cache_variable_means_the_default_for_every_cache(monkeypatch):
    from gradnoise import io
    from gradnoise.problems import digits_training

    monkeypatch.setenv("GRADNOISE_CACHE", "")
    assert io.cache_dir("oracles") == Path.home() / ".cache" / "gradnoise" / "oracles"
    assert digits_training.checkpoint_path("gaussian", 2, 8, 40, 0).parent == Path.home() / ".cache" / "gradnoise" / "digits"


# ------------------------------------------------------------------------------------------
# 2. a cost autograd cannot differentiate
# ------------------------------------------------------------------------------------------
COSTS = {
    "step function": torch.round,
    "detached": lambda x: x.detach() ** 2,
    "numpy": lambda x: torch.as_tensor(np.cos(x.detach().numpy())),
}


@pytest.mark.parametrize("kind", COSTS, ids=list(COSTS))
def test_pathwise_refused_on_a_cost_without_a_usable_sample_gradient(kind):
    problem = _normal(COSTS[kind], name=f"my-{kind.replace(' ', '-')}")
    with pytest.raises(gn.EstimatorNotApplicable, match=rf"reparam.*gradient.*my-{kind.replace(' ', '-')}"):
        gn.measure(problem, "reparam", 10, replicates=20)


def test_score_function_oracle_where_the_cost_is_a_step_function():
    """E[round(x)] for x ~ N(0.3, 1): the truth comes from reinforce-loo, not from zero gradients."""
    problem = _normal(torch.round, name="round")
    truth = problem.true_gradient()
    assert truth.kind == "oracle"
    # d/dloc E[round(x)] = sum_k phi(k + 1/2 - loc), independent quadrature-free closed form
    k = torch.arange(-20, 21, dtype=torch.float64)
    exact = torch.exp(Normal(0.0, 1.0).log_prob(k + 0.5 - 0.3)).sum()
    z = (truth.values["loc"].double() - exact) / truth.se["loc"].double()
    assert truth.se["loc"] > 0 and abs(float(z)) < 4
    df = gn.measure(problem, ["reinforce", "reparam"], [10], replicates=500, on_invalid="skip")
    assert set(df["estimator"]) == {"reinforce"}
    assert (df["bias_z"].abs() < 4).all()


def test_continuous_cost_flat_in_places_is_accepted():
    """relu is flat for x < 0 but continuous: the pathwise estimator is valid, and not refused.
    (A cost that jumps where its gradient is nonzero, such as floor(x) + x, passes the probe:
    the probe catches costs whose gradient is zero everywhere, not every discontinuity.)"""
    problem = _normal(torch.relu, name="relu")
    assert problem.sample_gradient_reason() is None
    df = gn.measure(problem, "reparam", 4, replicates=50)
    assert (df["variance"] > 0).all()


# ------------------------------------------------------------------------------------------
# 3. NaN written as a result; a cost of the wrong shape
# ------------------------------------------------------------------------------------------
def test_infinite_parameter_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "inf.csv"
    assert main(["sweep", "--problem", "bernoulli-toy:theta=inf", "--estimator", "reinforce", "--budget", "4",
                 "--replicates", "10", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "logits" in err and "not finite" in err
    assert not out.exists() and not os.path.exists(sweep.partial_path(out))


def test_cost_of_the_wrong_shape_is_one_clear_error():
    with pytest.raises(ValueError, match=r"one value per sample.*returned shape \(\)"):
        _normal(lambda x: x.sum(), name="summed")


def test_truth_that_is_not_finite_is_refused():
    with pytest.raises(gn.NonFiniteCostError, match="NaN or inf"):
        gn.Truth({"loc": torch.tensor(float("nan"))}, "closed-form")


# ------------------------------------------------------------------------------------------
# 4. no claims from the SNR noise floor, duplicated rows, two points, a budget not measured
# ------------------------------------------------------------------------------------------
def test_snr_noise_floor_points_make_no_claim():
    """bernoulli-toy's gradient is 5e-4 against a REINFORCE std near 0.5: SNR ~ 1e-3 sqrt(N)."""
    df = gn.measure("bernoulli-toy", "reinforce", [1, 10, 100, 1000], replicates=400, seed=0)
    assert fit_mod.at_snr_floor(df).all()
    fits = fit_mod.fit_curves(df)
    row = fits.iloc[0]
    assert row["snr_floor_points"] == 4 and row["snr_n_points"] == 0
    assert not row["d_differs_from_half"] and np.isnan(row["d"])
    # above the floor nothing changes: gaussian-quadratic's SNR is far above sqrt(2/pi)/sqrt(R)
    above = gn.measure("gaussian-quadratic", "reinforce", [1, 10, 100], replicates=400)
    assert not fit_mod.at_snr_floor(above).any()
    assert (fit_mod.fit_curves(above)["snr_floor_points"] == 0).all()


def test_duplicated_rows_are_refused_and_two_points_make_no_claim():
    df = gn.measure("gaussian-quadratic", "reinforce-loo", [2, 100], replicates=300)
    with pytest.raises(ValueError, match="repeat a cell"):
        fit_mod.fit_curves(pd.concat([df, df]))
    fits = fit_mod.fit_curves(df)
    assert (fits["n_points"] == 2).all()
    assert not fits["b_differs_from_minus_one"].any() and not fits["d_differs_from_half"].any()


def test_truncated_csv_and_text_in_a_number_are_one_clear_error(tmp_path, capsys):
    df = gn.measure("gaussian-quadratic", "reinforce", [1, 10, 100], replicates=50)
    whole = tmp_path / "whole.csv"
    df.to_csv(whole, index=False)
    text = whole.read_text()
    truncated = tmp_path / "truncated.csv"
    truncated.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 40])
    assert main(["fit", str(truncated), "--out", str(tmp_path / "f.csv")]) == 2
    assert "truncated" in capsys.readouterr().err
    texty = tmp_path / "text.csv"
    df.assign(variance=df["variance"].astype(object).where(df.index != 1, "abc")).to_csv(texty, index=False)
    assert main(["plot", str(texty), "--out-dir", str(tmp_path / "fig")]) == 2
    assert "'variance' must be numeric, but row 3 holds 'abc'" in capsys.readouterr().err


def test_rank_budget_not_measured_is_an_error(tmp_path, capsys):
    args = ["report", "--problem", "gaussian-quadratic", "--estimator", "reinforce", "--budget", "1", "--budget", "10",
            "--replicates", "20", "--quiet", "--out-dir", str(tmp_path / "r")]
    assert main(args + ["--rank-budget", "7"]) == 2
    assert "--rank-budget 7 is not among the budgets measured (1, 10)" in capsys.readouterr().err
    assert not (tmp_path / "r" / "sweep.csv").exists()                      # refused before computing


# ------------------------------------------------------------------------------------------
# 5. memory
# ------------------------------------------------------------------------------------------
def test_cell_whose_estimates_cannot_fit_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "huge.csv"
    assert main(["sweep", "--problem", "gaussian-cos", "--estimator", "reinforce", "--budget", "1000",
                 "--replicates", str(10**13), "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GiB" in err and "fewer replicates" in err
    assert not os.path.exists(sweep.partial_path(out))


def test_engine_writes_chunks_into_one_buffer_per_parameter(monkeypatch):
    """No per-chunk tensors kept and concatenated (they fragmented the heap: RSS grew with R);
    the numbers are those of the chunked computation, bitwise, whatever the chunk size."""
    problem, estimator = gn.make_problem("gaussian-cos"), gn.get_estimator("reinforce")
    calls, cat = [], torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: calls.append(1) or cat(*a, **k))
    small, _ = gn.replicate_estimates(problem, estimator, 10, 1000, 0, max_elements=10 * 3 * 64)
    assert not calls                                                        # 16 chunks, no concatenation
    again, _ = gn.replicate_estimates(problem, estimator, 10, 1000, 0, max_elements=10 * 3 * 64)
    assert all(torch.equal(small[k], again[k]) for k in small)
    assert small["loc"].shape == (1000,) and small["loc"].is_contiguous()


# ------------------------------------------------------------------------------------------
# 6. two sweeps writing one output
# ------------------------------------------------------------------------------------------
def test_second_writer_gets_a_clear_error_naming_the_first(tmp_path, capsys):
    out = tmp_path / "s.csv"
    with sweep.output_lock(out):
        assert main(SWEEP + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "being written by another gradnoise run" in err and f"pid {os.getpid()}" in err
    assert not os.path.exists(sweep.lock_path(out))
    assert main(SWEEP + ["--out", str(out)]) == 0                          # free again afterwards


def test_lock_is_taken_between_processes(tmp_path):
    out = tmp_path / "s.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from analysis import sweep\n"
         "with sweep.output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        fd = os.open(sweep.lock_path(out), os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        assert main(SWEEP + ["--out", str(out)]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert main(SWEEP + ["--out", str(out)]) == 0                          # a killed holder releases it


# ------------------------------------------------------------------------------------------
# 8. one line instead of a traceback
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (SWEEP + ["--device", "bogus", "--out", "{tmp}/a.csv"], "unknown device 'bogus'"),
    (SWEEP + ["--device", "cuda", "--out", "{tmp}/a.csv"], "no CUDA device" if not torch.cuda.is_available() else None),
    (SWEEP + ["--out", "{tmp}"], "is a folder"),
    (SWEEP + ["--out", "/sys/gradnoise.csv"], "cannot write"),
    (["fit", "{tmp}/in.csv", "--out", "/sys/fits.csv"], "cannot write"),
    (["plot", "{tmp}/in.csv", "--out-dir", "/sys/gradnoise-figures"], "cannot write into the output folder"),
    (["report", "--problem", "gaussian-quadratic", "--out-dir", "/sys/gradnoise-report"], "cannot write into the output folder"),
    (["report", "--problem", "gaussian-quadratic", "--out-dir", "{tmp}/in.csv"], "is a file"),
], ids=["device-bogus", "device-cuda", "out-is-folder", "sweep-read-only", "fit-read-only", "plot-read-only",
        "report-read-only", "report-out-dir-is-file"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    if message is None:
        pytest.skip("this machine has CUDA")
    gn.measure("gaussian-quadratic", "reinforce", [1, 10], replicates=10).to_csv(tmp_path / "in.csv", index=False)
    before = set(os.listdir(tmp_path))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert set(os.listdir(tmp_path)) == before                              # nothing left behind


def test_output_in_a_new_folder_is_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "s.csv"
    assert main(SWEEP + ["--out", str(out)]) == 0
    assert out.exists() and os.listdir(out.parent) == ["s.csv"]


def test_failed_sweep_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "s.csv"

    def fail(*args, **kwargs):
        raise gn.NonFiniteCostError("the cost returned NaN")
        yield

    monkeypatch.setattr(gn.engine, "iter_measure", fail)
    assert main(SWEEP + ["--out", str(out)]) == 2
    assert os.listdir(tmp_path) == []


def test_python_api_budgets_and_problems():
    df = gn.measure("gaussian-quadratic", "reinforce", np.int64(5), replicates=10)
    assert list(df["budget"]) == [5, 5]
    assert list(gn.measure("gaussian-quadratic", "reinforce", np.array([2, 3]), replicates=10)["budget"]) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match=r"budget N must be an integer >= 1 .*2\.5 \(float\)"):
        gn.measure("gaussian-quadratic", "reinforce", [2.5], replicates=10)
    with pytest.raises(TypeError, match=r"budgets must be an integer or a list of integers, got 2\.5"):
        gn.measure("gaussian-quadratic", "reinforce", 2.5, replicates=10)
    with pytest.raises(TypeError, match=r"problems must be a name, a Problem or a list of them, got 42"):
        gn.measure(42, "reinforce", 5, replicates=10)
    with pytest.raises(TypeError, match=r"problems must be names .* got 4\.2"):
        gn.measure([4.2], "reinforce", 5, replicates=10)


# ------------------------------------------------------------------------------------------
# 9. smaller things
# ------------------------------------------------------------------------------------------
def test_gitignore_covers_the_readme_report_folder():
    readme = (ROOT / "README.md").read_text()
    assert "gradnoise report --out-dir report" in readme
    assert "/report/" in (ROOT / ".gitignore").read_text().split()


def test_partial_sidecar_rows_carry_the_code_version(tmp_path, monkeypatch):
    out = tmp_path / "s.csv"

    def interrupt_after_one(grid, replicates, seed=0, **kw):
        yield next(ITER_MEASURE(grid, replicates, seed, **kw))
        raise KeyboardInterrupt

    monkeypatch.setattr(gn.engine, "iter_measure", interrupt_after_one)
    assert main(SWEEP + ["--out", str(out)]) == 130
    rows = [json.loads(line) for line in open(sweep.partial_path(out))]
    assert len(rows) == 1 and rows[0][0]["code_version"] == provenance.code_version()

