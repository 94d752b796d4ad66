"""A researcher's own estimator and problem are keyed like the package's code.

The scenario of the issue: a user registers an estimator and a problem in their own module,
sweeps, edits the estimator's default and the problem's cost (same names), and sweeps again.
Before, ``code_version`` hashed only the package, so the second sweep reused the first's cells
("1 reused from an earlier run of the same code") and the cached oracle went stale too. Each test
here fails on that code.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import sys
import textwrap
import threading

import pandas as pd
import pytest
import torch
from torch.distributions import Gamma, Normal

import gradnoise as gn
from gradnoise import provenance, registry
from gradnoise.analysis import sweep
from gradnoise.analysis.cli import main

USER_MODULE = '''
import torch
from torch.distributions import Gamma

import gradnoise as gn
from gradnoise.baselines import Baseline, ControlVariate
from gradnoise.score_function import ScoreFunction


class Constant(Baseline):
    """b = c, a constant baseline (unbiased for any c)."""

    def __init__(self, c):
        self.c = c

    def value(self, state, f):
        return ControlVariate(per_sample=self.c)


@gn.register_estimator("reinforce-const")
def reinforce_const(*, c: float = C_DEFAULT):
    """Score function minus a constant."""
    return ScoreFunction(Constant(c), name="reinforce-const")


def cost(x):
    return COST


@gn.register_problem("gamma-log1p")
def gamma_log1p(*, concentration: float = 2.0, rate: float = 1.5):
    """E log1p(x) under a Gamma: no closed form, an oracle truth."""
    return gn.ExpectationProblem(Gamma, {"concentration": torch.tensor(concentration),
                                         "rate": torch.tensor(rate)}, cost=cost, name="gamma-log1p")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``load(c_default, cost)``: (re)write and import the user's module, registering its names
    in a registry copy (so the package's registry is untouched), as a fresh process would."""
    monkeypatch.setenv("GRADNOISE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "my_estimators.py"
    estimators, problems = dict(registry._ESTIMATORS), dict(registry._PROBLEMS)

    def load(c_default="0.0", cost="torch.log1p(x)"):
        monkeypatch.setattr(registry, "_ESTIMATORS", dict(estimators))
        monkeypatch.setattr(registry, "_PROBLEMS", dict(problems))
        path.write_text(USER_MODULE.replace("C_DEFAULT", c_default).replace("COST", cost))
        spec = importlib.util.spec_from_file_location("my_estimators", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "my_estimators", module)
        spec.loader.exec_module(module)
        return module

    return load


ARGS = ["sweep", "--problem", "gamma-log1p", "--estimator", "reinforce-const", "--estimator", "reparam",
        "--budget", "4", "--replicates", "200", "--seed", "1", "--quiet"]


def test_editing_a_registered_estimator_and_problem_recomputes_their_cells(user_module, tmp_path, capsys):
    out = str(tmp_path / "s.csv")
    user_module()
    assert main(ARGS + ["--out", out]) == 0
    first = pd.read_csv(out, dtype={"code_version": str})
    assert main(ARGS + ["--out", out]) == 0                         # nothing edited: reused
    assert "2 cells: 0 computed now, 2 reused" in capsys.readouterr().out

    user_module(c_default="0.5")                                    # the estimator's default edited
    assert main(ARGS + ["--out", out]) == 0
    said = capsys.readouterr().out
    assert "1 computed now, 1 reused" in said
    assert "recomputed because their code changed since: the code of estimator reinforce-const (1 cell)" in said
    second = pd.read_csv(out, dtype={"code_version": str})
    assert not second.loc[second.estimator == "reinforce-const", "variance"].equals(
        first.loc[first.estimator == "reinforce-const", "variance"])

    user_module(c_default="0.5", cost="torch.log1p(2 * x)")         # the problem's cost edited
    assert main(ARGS + ["--out", out]) == 0
    said = capsys.readouterr().out
    assert "2 computed now" in said and "the code of problem gamma-log1p:concentration=2,rate=1.5 (2 cells)" in said
    third = pd.read_csv(out, dtype={"code_version": str})
    # the truth moved with the cost: the (correct) reparam is unbiased against the new oracle,
    # where a stale oracle gave bias z = 959
    reparam = third[third.estimator == "reparam"]
    assert (reparam["bias_z"].abs() < 4.5).all(), reparam[["param", "bias", "bias_z"]]
    assert not third["truth"].equals(first["truth"])


def test_the_oracle_cache_is_keyed_by_a_registered_problems_code(user_module):
    from gradnoise.problems import truths

    user_module()
    before = truths.oracle_truth(gn.make_problem("gamma-log1p"), "reparam", 4, samples=4096)
    user_module(cost="torch.log1p(2 * x)")
    after = truths.oracle_truth(gn.make_problem("gamma-log1p"), "reparam", 4, samples=4096)
    assert not torch.equal(before.values["rate"], after.values["rate"])
    user_module()                                                  # edited back: the first oracle again
    again = truths.oracle_truth(gn.make_problem("gamma-log1p"), "reparam", 4, samples=4096)
    assert torch.equal(before.values["rate"], again.values["rate"])


def test_built_in_cells_keep_the_package_version():
    rows = gn.measure("gaussian-quadratic", "reinforce", [2], replicates=8)
    assert (rows["code_version"] == provenance.code_version()).all()


def _problem(cost):
    return gn.ExpectationProblem(Normal, {"loc": torch.tensor(0.3), "scale": torch.tensor(1.0)}, cost, name="mine")


def _digest(cost):
    return provenance.cell_version(_problem(cost), gn.get_estimator("reinforce")).text


def test_fingerprint_follows_closure_values_globals_and_constants():
    def make(k):
        return lambda x: (x - k) ** 2

    assert _digest(make(1.0)) == _digest(make(1.0))                 # deterministic
    assert _digest(make(1.0)) != _digest(make(2.0))                 # a closure value
    assert _digest(lambda x: x ** 2) != _digest(lambda x: x ** 3)   # a constant
    namespace = {"torch": torch, "K": 1.0}
    exec("def cost(x):\n    return torch.cos(K * x)\n", namespace)  # as a notebook defines it
    one = _digest(namespace["cost"])
    namespace["K"] = 3.0                                            # a global it reads
    assert _digest(namespace["cost"]) != one
    exec("def cost(x):\n    # a comment\n    return torch.cos(K * x)\n", namespace)
    assert _digest(namespace["cost"]) == _digest(namespace["cost"])
    tensor = torch.tensor([1.0, 2.0])
    with_tensor = _digest(functools.partial(lambda x, w: (x * w.sum()), w=tensor))
    tensor[0] = 5.0                                                 # a tensor it holds, edited in place
    assert _digest(functools.partial(lambda x, w: (x * w.sum()), w=tensor)) != with_tensor


def test_library_functions_are_keyed_by_their_version():
    version = _digest(torch.exp)
    assert "unhashable" not in version and "+problem:" in version
    assert version != _digest(torch.sin)


def test_unhashable_parts_are_never_reused_and_say_why(tmp_path, capsys):
    handle = io.StringIO()
    lock = threading.Lock()

    def cost(x):
        with lock:                                                  # a closure value with no honest hash
            handle.write("")
        return x ** 2

    problem = _problem(cost)
    version = provenance.cell_version(problem, gn.get_estimator("reinforce"))
    assert not version.reusable and "lock" in version.reason and "mine" in version.reason
    grid = gn.engine.cells([problem], ["reinforce"], [2])
    out = tmp_path / "s.csv"
    sweep.sweep_to_csv(grid, 20, 0, out, progress=False)
    outcome = sweep.sweep_to_csv(grid, 20, 0, out, progress=False)
    assert outcome.computed == 1 and outcome.reused == 0
    said = outcome.describe()
    assert "never reused because part of their code cannot be hashed" in said and "lock" in said


def test_user_estimator_objects_are_keyed_by_their_attributes():
    from gradnoise.baselines import ControlVariate, Baseline
    from gradnoise.score_function import ScoreFunction

    class Shift(Baseline):
        def __init__(self, c):
            self.c = c

        def value(self, state, f):
            return ControlVariate(per_sample=self.c)

    problem = gn.make_problem("gaussian-quadratic")
    one = provenance.cell_version(problem, ScoreFunction(Shift(0.1), name="shift")).text
    two = provenance.cell_version(problem, ScoreFunction(Shift(0.2), name="shift")).text
    assert one != two and one.startswith(provenance.code_version() + "+estimator:")
