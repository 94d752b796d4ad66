"""Up-front bounds (issue 16, cases 5 and 8): a cell is refused with one line before anything is
computed when its samples would not fit in memory (N, warm-up and pilot sizes included, not only
R) or when its cost evaluations exceed a stated, liftable bound; and only the declared
not-applicable error (:class:`gradnoise.EstimatorNotApplicable`) takes a cell out of a grid, so a
problem that became invalid fails loudly instead of leaving the grid without a word.
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch
from torch.distributions import Normal

import gradnoise as gn
from gradnoise.analysis import report, sweep
from gradnoise.analysis.cli import main

GIB = 2**30


def _no_cell_computed(monkeypatch):
    """Make computing any cell an error: the refusals below must come before the first one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a cell was computed before the bound was checked")
    monkeypatch.setattr(gn.engine, "replicate_estimates", refuse)
    monkeypatch.setattr(gn.engine, "measure_cell", refuse)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------
# case 5: memory of the samples, not only of the estimates
# ------------------------------------------------------------------------------------------
def test_budget_whose_samples_cannot_fit_is_one_line_before_any_allocation(tmp_path, capsys):
    """The issue's command: N = 10^10 was a RuntimeError traceback after torch tried to allocate
    40 GB. One replicate's 10^10 samples need terabytes, whatever the machine."""
    out = tmp_path / "huge.csv"
    assert main(["sweep", "--problem", "gaussian-cos", "--estimator", "reinforce", "--budget", "10000000000",
                 "--replicates", "2", "--max-cost-evals", "inf", "--quiet", "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert "N = 10000000000" in err and "GiB" in err and "smaller N" in err, err
    assert not out.exists() and not os.path.exists(sweep.partial_path(out))


@pytest.mark.parametrize("estimator", ["reinforce", "reinforce-optimal:pilot=100000000",
                                       "reinforce-delta:pilot=100000000"])
def test_n_and_pilot_sizes_enter_the_memory_check(monkeypatch, estimator):
    """N = 10^8 samples, or a pilot batch of 10^8 at N = 10, of gaussian-cos (3 elements each:
    one sample, two parameters) need about 18 GiB at the engine's bytes per element: more than
    a machine with 4 GiB available gives, refused before anything is computed."""
    monkeypatch.setattr(gn.engine, "available_memory", lambda: 4 * GIB)
    _no_cell_computed(monkeypatch)
    budget = 10**8 if estimator == "reinforce" else 10
    with pytest.raises(MemoryError) as err:
        gn.measure("gaussian-cos", estimator, [budget], replicates=2)
    message = str(err.value)
    assert "\n" not in message and "4.0 GiB available" in message
    need = 10**8 * 3 * gn.engine.BYTES_PER_SAMPLE_ELEMENT / GIB
    assert f"{need:.1f} GiB" in message, message


def test_the_same_cell_with_a_small_pilot_runs():
    """The memory check counts the pilot only where it is larger than N."""
    df = gn.measure("gaussian-cos", ["reinforce-optimal:pilot=20", "reinforce-delta:pilot=20"], [10], replicates=20)
    assert len(df) == 4 and df["variance"].notna().all()


# ------------------------------------------------------------------------------------------
# case 5: a stated bound on cost evaluations, warm-up included
# ------------------------------------------------------------------------------------------
def test_warmup_beyond_the_cost_bound_is_one_line_with_the_estimate(tmp_path, capsys, monkeypatch):
    """The issue's ``reinforce-ema:warmup=100000000`` ran past two minutes with no bound."""
    _no_cell_computed(monkeypatch)
    out = tmp_path / "ema.csv"
    assert main(["sweep", "--problem", "gaussian-cos", "--estimator", "reinforce-ema:warmup=100000000",
                 "--budget", "10", "--quiet", "--out", str(out)]) == 2
    err = _one_line(capsys)
    estimator = gn.get_estimator("reinforce-ema:warmup=100000000")
    total = sweep.DEFAULT_REPLICATES * (estimator.cost_evals(10) + estimator.amortised_evals(10))
    assert total == 1000 * (10 + (10**8 + 1) * 10)
    assert f"{total:.3g} cost evaluations" in err and f"{gn.engine.MAX_COST_EVALS:.3g}" in err, err
    assert "--max-cost-evals" in err and "warm-up" in err
    assert not out.exists()


def test_the_cost_bound_is_stated_and_lifted_in_python_and_on_the_command_line(tmp_path, capsys):
    """R x (evaluations per estimate + warm-up): 10 x (10 + 31 x 10) = 3200 for an EMA baseline
    warmed up 30 times at N = 10; refused under a bound of 1000, measured under one of 4000."""
    name = "reinforce-ema:warmup=30"
    with pytest.raises(ValueError, match=r"3\.2e\+03 cost evaluations .*1e\+03.*max_cost_evals"):
        gn.measure("gaussian-quadratic", name, [10], replicates=10, max_cost_evals=1000)
    assert len(gn.measure("gaussian-quadratic", name, [10], replicates=10, max_cost_evals=4000)) == 2
    assert len(gn.measure("gaussian-quadratic", name, [10], replicates=10, max_cost_evals=None)) == 2
    args = ["sweep", "--problem", "gaussian-quadratic", "--estimator", name, "--budget", "10",
            "--replicates", "10", "--quiet", "--out", str(tmp_path / "s.csv")]
    assert main(args + ["--max-cost-evals", "1000"]) == 2
    assert "3.2e+03 cost evaluations" in _one_line(capsys)
    assert main(args + ["--max-cost-evals", "4e3"]) == 0
    for bad in ("0", "-5", "many"):
        with pytest.raises(SystemExit) as exit_:
            main(args + ["--max-cost-evals", bad])
        assert exit_.value.code == 2
        assert "--max-cost-evals" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_cost_evals"):
        gn.measure("gaussian-quadratic", "reinforce", [10], replicates=10, max_cost_evals=-1)


def _cell_evals(problem, estimator, n, replicates):
    return gn.engine.cell_cost_evals(problem, estimator, n, replicates)


def test_default_bound_is_far_above_the_default_grids():
    """The default sweep, report and asv grids (the studies' cells are smaller still: at most
    R = 5000 x K = 1000 on linear-gaussian-vae) stay at least 10x below the default bound."""
    import benchmarks.common as common
    import benchmarks.memory as memory

    worst = 0
    grid = gn.engine.cells(gn.problem_names(default_sweep=True), gn.estimator_names(), sweep.DEFAULT_BUDGETS,
                           on_invalid="skip")
    worst = max(_cell_evals(p, e, n, sweep.DEFAULT_REPLICATES) for p, e, n in grid)
    grid = gn.engine.cells(gn.problem_names(default_sweep=True), gn.estimator_names(), report.REPORT_BUDGETS,
                           on_invalid="skip")
    worst = max(worst, max(_cell_evals(p, e, n, report.REPORT_REPLICATES) for p, e, n in grid))
    for spec, name, n in common.CELLS.values():
        p, e = common.cell(spec, name, n)
        worst = max(worst, _cell_evals(p, e, n, max(common.REPLICATES, 1000)))
    for spec, name in memory.CELLS.values():
        r, n = memory.SIZES[spec]
        p, e = common.cell(spec, name, n)
        worst = max(worst, _cell_evals(p, e, n, r))
    assert 0 < worst * 10 <= gn.engine.MAX_COST_EVALS


# ------------------------------------------------------------------------------------------
# case 8: only the declared not-applicable error takes a cell out of a grid
# ------------------------------------------------------------------------------------------
class _WrongShape(gn.Problem):
    """A problem whose cost reduces the sample axis too: invalid, not 'not applicable'. Built
    without validating (as a registered problem whose code changed would be); checked when used."""

    def __init__(self, spec: str = "wrong-shape"):
        self.spec, self.params = spec, {"loc": torch.tensor(0.3), "scale": torch.tensor(1.0)}

    def distribution(self, params):
        return Normal(params["loc"], params["scale"])

    def cost(self, x, params):
        return (x**2).sum().expand(1)

    def true_gradient(self, objective=gn.Objective()):
        return gn.Truth({"loc": torch.tensor(0.6), "scale": torch.tensor(2.0)}, "closed-form")


def test_budget_below_an_estimators_minimum_is_declared_not_applicable():
    with pytest.raises(gn.EstimatorNotApplicable, match="N >= 2"):
        gn.get_estimator("reinforce-loo").check(gn.make_problem("gaussian-cos"), 1)
    with pytest.raises(ValueError, match="integer budget") as err:        # a float is bad input, not N too small
        gn.get_estimator("reinforce").check(gn.make_problem("gaussian-cos"), 1.5)
    assert not isinstance(err.value, gn.EstimatorNotApplicable)


def test_an_invalid_problem_is_not_skipped_as_not_applicable():
    """``on_invalid="skip"`` skips estimators that do not apply; a problem whose cost returns
    the wrong shape is an error, not an empty grid (it was silently dropped: 0 rows)."""
    skipped: list[str] = []
    with pytest.raises(ValueError, match="one value per sample"):
        gn.engine.cells([_WrongShape()], ["reinforce", "reparam"], [10], on_invalid="skip", skipped=skipped)
    with pytest.raises(ValueError, match="one value per sample"):
        gn.measure(_WrongShape(), ["reinforce"], [10], replicates=10, on_invalid="skip")
    grid = gn.engine.cells(["bernoulli-toy"], ["reparam", "reinforce-loo", "reinforce"], [1, 2], on_invalid="skip",
                           skipped=skipped)
    assert [(e.name, n) for _, e, n in grid] == [("reinforce-loo", 2), ("reinforce", 1), ("reinforce", 2)]
    assert len(skipped) == 2 and any("rsample" in s for s in skipped) and any("N >= 2" in s for s in skipped)


def test_asv_cell_whose_problem_became_invalid_is_listed_and_fails(monkeypatch):
    """benchmarks.common.cell() turned any ValueError into 'cannot run' (NotImplementedError), so
    a cell whose problem became invalid left the asv grid without a word. Now it is listed and
    its benchmarks fail with the problem's error; estimators that do not apply stay out."""
    import benchmarks.common as common
    import benchmarks.quality as quality

    monkeypatch.setattr(common, "problem", lambda spec: _WrongShape(spec))
    assert common.listed("gaussian-cos", "reinforce", 10)
    stats = quality.batch_statistics("gaussian-cos", "reinforce", 10)
    assert stats["error"].startswith("ValueError: ") and "one value per sample" in stats["error"]
    with pytest.raises(RuntimeError, match="gaussian-cos, reinforce, 10: ValueError"):
        quality.TrackVariance().setup({"gaussian-cos, reinforce, 10": stats}, "gaussian-cos, reinforce, 10")
    monkeypatch.undo()
    assert not common.listed("gaussian-cos", "reinforce-loo", 1)           # N below the minimum
    assert not common.listed("bernoulli-toy", "reparam", 10)               # no rsample
    assert not common.listed("gaussian-cos", "iwae", 10)                   # needs a model problem
    with pytest.raises(NotImplementedError, match="N >= 2"):
        common.cell("gaussian-cos", "reinforce-loo", 1)
