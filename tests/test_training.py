"""Training runs (gradnoise.training.train, ``gradnoise train``): the recorded objective is the
exact value at the recorded parameters; an exact-gradient "estimator" follows plain torch Adam
bit for bit; runs are bitwise reproducible and independent of order and of Dask workers; equal
evaluation budgets hold; resume reuses only same-code runs; bad input is one line."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import gradnoise as gn
from gradnoise import training
from gradnoise.analysis.cli import main
from gradnoise.analysis import train as train_cli

import cloudpickle  # noqa: E402
import distributed  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TOY = "bernoulli-toy-nd"                        # three logits, targets p = (0.6, 0.51, 0.48)
P = np.array([0.6, 0.51, 0.48])


def toy_objective(theta: np.ndarray) -> float:
    r"""E[sum_i (b_i - p_i)^2] with b_i ~ Bernoulli(sigma(theta_i)), derived by hand in float64:
    :math:`\sum_i \sigma_i (1 - p_i)^2 + (1 - \sigma_i) p_i^2`."""
    s = 1 / (1 + np.exp(-np.asarray(theta, dtype=float)))
    return float((s * (1 - P) ** 2 + (1 - s) * P**2).sum())


def param_columns(df, name, size):
    return df[[f"param:{name}[{i}]" for i in range(size)]].to_numpy()


def test_recorded_objective_is_the_exact_value_at_the_recorded_params():
    df = gn.train(TOY, ["reinforce-loo", "disarm"], 4, steps=40, lr=0.2, seeds=3, eval_every=10)
    assert set(df["objective_kind"]) == {"enumeration"} and (df["objective_se"] == 0).all()
    theta = param_columns(df, "logits", 3)
    exact = np.array([toy_objective(t) for t in theta])
    # float32 arithmetic of a sum of three terms of size <= 0.36: a few ulps of 1
    np.testing.assert_allclose(df["objective"].to_numpy(), exact, rtol=0, atol=1e-6)
    assert df["step"].max() == 40 and (df.groupby(["estimator", "seed"])["objective"].last() < 0.75).all()


def test_linear_gaussian_vae_records_the_negative_closed_form_elbo():
    problem = gn.make_problem("linear-gaussian-vae:d=2")
    df = gn.train(problem, "reparam", 3, steps=5, lr=0.05, seeds=2, eval_every=5)
    assert set(df["objective_name"]) == {"-ELBO"} and set(df["objective_kind"]) == {"closed-form"}
    for _, row in df.iterrows():
        params = {name: torch.tensor([row[f"param:{name}[{i}]"] for i in range(p.numel())],
                                     dtype=torch.float32).reshape(p.shape) for name, p in problem.params.items()}
        assert row["objective"] == -float(problem._elbo(params))


def test_an_estimate_of_the_objective_is_within_its_standard_error_and_catches_a_bias():
    """Where no exact value is used the objective is an estimate with its SE: it agrees with the
    exact value within 4 SE (Holm over seeds), and a deliberately shifted estimate is caught."""
    problem = gn.make_problem(TOY)
    params = {"logits": torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.5]])}
    mean, se = training.objective_estimate(problem, params, gn.Objective(), 4000, seed=11)
    exact = np.array([toy_objective(t) for t in params["logits"].numpy()])
    z = (mean.numpy() - exact) / se.numpy()
    p = 2 * stats.norm.sf(np.abs(z))
    from stat_checks import holm_reject
    assert not holm_reject(p).any()
    assert holm_reject(2 * stats.norm.sf(np.abs(z + 8))).any()          # the negative control


def test_iwae_objective_is_labelled_and_estimated():
    df = gn.train("linear-gaussian-vae:d=2", "iwae", 4, steps=2, lr=0.01, seeds=2, eval_every=1, objective_samples=64)
    assert set(df["objective_name"]) == {"-IWAE-4"} and set(df["objective_kind"]) == {"estimate"}
    assert (df["objective_se"] > 0).all()


class ExactGradient(gn.GradientEstimator):
    """Not an estimator: the exact gradient of the toy's objective, row by row (autograd of the
    closed form), so that a training run must be plain Adam."""

    name = "exact-gradient"

    def estimate(self, problem, params, n, state):
        s = torch.sigmoid(params["logits"])
        p = problem.targets
        value = (s * (1 - p) ** 2 + (1 - s) * p**2).sum(-1)
        return gn.grad_of(value, params)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_an_exact_gradient_follows_plain_torch_optimiser_bit_for_bit(optimizer):
    problem = gn.make_problem(TOY)
    steps, seeds, lr = 30, 3, 0.1
    df = gn.train(problem, ExactGradient(), 1, steps=steps, lr=lr, seeds=seeds, eval_every=1, optimizer=optimizer)
    theta = problem.params["logits"].expand(seeds, 3).clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr) if optimizer == "adam" else torch.optim.SGD([theta], lr=lr)
    p = problem.targets
    for t in range(1, steps + 1):
        opt.zero_grad()
        s = torch.sigmoid(theta)
        (s * (1 - p) ** 2 + (1 - s) * p**2).sum(-1).sum().backward()
        opt.step()
        got = param_columns(df[df["step"] == t].sort_values("seed"), "logits", 3)
        assert np.array_equal(got.astype(np.float32), theta.detach().numpy()), f"step {t}"


class CountingAdaptive(gn.GradientEstimator):
    """REINFORCE whose state counts the ``adapt`` calls (an adaptive estimator's hook)."""

    name = "counting-adaptive"

    def init(self, problem, params, n):
        return torch.zeros(next(iter(params.values())).shape[0])

    def estimate(self, problem, params, n, state):
        return gn.base.Estimate(gn.get_estimator("reinforce").estimate(problem, params, n, None), state)

    def adapt(self, problem, params, n, estimate):
        return estimate.state + 1


def test_adapt_is_called_every_step():
    seen = []
    est = CountingAdaptive()
    orig_step = est.step

    def step(problem, params, n, state):
        out = orig_step(problem, params, n, state)
        seen.append(out.state.clone())
        return out

    est.step = step
    gn.train(TOY, est, 2, steps=7, lr=0.1, seeds=2)
    assert [int(s[0]) for s in seen] == list(range(1, 8))


def test_runs_are_bitwise_reproducible_and_independent_of_order():
    kw = dict(steps=25, lr=0.2, seeds=5, seed_group=2, eval_every=5, variance_replicates=16)
    a = gn.train(TOY, ["reinforce", "arm"], 2, **kw)
    b = gn.train(TOY, ["arm", "reinforce"], 2, **kw)
    drop = ["seconds"]
    for name in ("reinforce", "arm"):
        x = a[a["estimator"] == name].drop(columns=drop).reset_index(drop=True)
        y = b[b["estimator"] == name].drop(columns=drop).reset_index(drop=True)
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    # another seed group size is another stream (documented), the same seed group the same
    c = gn.train(TOY, ["reinforce"], 2, **{**kw, "seed_group": 5})
    assert not np.array_equal(c["objective"].to_numpy(), a[a["estimator"] == "reinforce"]["objective"].to_numpy())


def test_runs_on_dask_or_forked_workers_are_bitwise_the_sequential_ones(tmp_path):
    kw = dict(steps=15, lr=0.2, seeds=4, seed_group=2, eval_every=5, variance_replicates=8)
    sequential = gn.train(TOY, ["reinforce-loo", "disarm"], 2, **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={"GRADNOISE_CACHE": str(tmp_path)}) as lc, distributed.Client(lc) as c:
        parallel = gn.train(TOY, ["reinforce-loo", "disarm"], 2, client=c, **kw)
    pd.testing.assert_frame_equal(sequential.drop(columns="seconds"), parallel.drop(columns="seconds"),
                                  check_exact=True)
    # and on local workers forked from this process (what `gradnoise train --workers 2` runs on)
    from gradnoise.pool import LocalPool

    forked = gn.train(TOY, ["reinforce-loo", "disarm"], 2, client=LocalPool(2), **kw)
    pd.testing.assert_frame_equal(sequential.drop(columns="seconds"), forked.drop(columns="seconds"),
                                  check_exact=True)


def test_equal_evaluations_per_step():
    estimators = ["reinforce", "reinforce-loo", "arm", "disarm", "reinforce-optimal"]
    df = gn.train(TOY, estimators, evals_per_step=8, steps=6, lr=0.01, seeds=2, eval_every=2)
    budgets = df.groupby("estimator")["budget"].first().to_dict()
    assert budgets == {"reinforce": 8, "reinforce-loo": 8, "arm": 4, "disarm": 4, "reinforce-optimal": 4}
    for _, row in df.iterrows():
        assert row["cost_evals"] == 8 * row["step"]
    # an EMA baseline's first batch (its init) is counted once
    ema = gn.train(TOY, "reinforce-ema", evals_per_step=8, steps=4, lr=0.01, seeds=1, eval_every=2)
    assert list(ema["cost_evals"]) == [8, 24, 40]
    with pytest.raises(ValueError, match="cannot spend exactly 7"):
        gn.train(TOY, "arm", evals_per_step=7, steps=2, lr=0.1)


def test_a_pilot_estimator_draws_its_pilot_every_step():
    """reinforce-optimal's per-estimate pilot (counted in cost_evals) is redone at each step's
    parameters: its state differs from step to step."""
    est = gn.get_estimator("reinforce-optimal")
    assert est.init_each_step and not gn.get_estimator("reinforce-ema").init_each_step
    calls = []
    init = est.init
    est.init = lambda *a: calls.append(1) or init(*a)
    gn.train(TOY, est, 2, steps=5, lr=0.1, seeds=1)
    assert len(calls) == 5


def test_basket_variances_are_measured_at_the_same_params():
    df = gn.train(TOY, "reinforce", 4, steps=4, lr=0.1, seeds=2, eval_every=2, variance_replicates=32,
                  basket=["disarm", "reinforce-loo"])
    for name in ("disarm", "reinforce-loo"):
        v = df[f"basket:{name}:variance"]
        assert (v > 0).all()
        assert (df[f"basket:{name}:variance_ci_low"] <= v).all() and (v <= df[f"basket:{name}:variance_ci_high"]).all()
    # disarm's variance at theta = 0 is well below reinforce's at the same points
    assert (df["basket:disarm:variance"] < df["variance"]).all()


ARGS = ["train", "--problem", "bernoulli-toy:t=0.45", "--estimator", "reinforce,disarm", "--evals-per-step", "4",
        "--steps", "20", "--lr", "0.1", "--seeds", "3", "--eval-every", "5", "--quiet"]


def test_cli_writes_the_report_and_resumes_only_same_code_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGS, "--out-dir", str(out)]) == 0
    first = pd.read_csv(out / "train.csv")
    assert (out / "train.md").exists() and (out / "train-objective.png").exists()
    assert "reused 0" in capsys.readouterr().out
    assert main([*ARGS, "--out-dir", str(out)]) == 0
    assert "trained 0 seed groups, reused 2" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out / "train.csv"), first)
    # rows another code computed are not reused
    stale = first.copy()
    stale.loc[stale["estimator"] == "disarm", "code_version"] = "000000000000"
    gn.io.atomic_write_csv(stale, out / "train.csv")
    assert main([*ARGS, "--out-dir", str(out)]) == 0
    assert "trained 1 seed groups, reused 1" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out / "train.csv").drop(columns="seconds"), first.drop(columns="seconds"))
    # other settings are other runs
    assert main([*ARGS[:-1], "--lr", "0.2", "--quiet", "--out-dir", str(out)]) == 0
    assert "trained 2 seed groups, reused 0" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--lr", "0"], "lr (the learning rate) must be a finite number > 0"),
    (["--lr", "nan"], "lr (the learning rate) must be a finite number > 0"),
    (["--estimator", "reparam"], "is pathwise and needs rsample"),
    (["--evals-per-step", "3"], "cannot spend exactly 3"),
    (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
])
def test_bad_input_is_one_line(change, message, tmp_path, capsys):
    args = list(ARGS)
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += change
    assert main([*args, "--out-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradnoise train: error: ") and "\n" not in err and message in err
    assert not (tmp_path / "x" / "train.csv").exists()


def test_holm_adjustment_matches_the_step_down_rule():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    adjusted = train_cli.holm(p)
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_runs_of_unhashable_code_are_never_reused():
    """An estimator whose code cannot be hashed (a lock among its attributes) has no code version
    to match: its finished runs are computed anew, while a built-in's are reused."""
    import threading

    locked = gn.ScoreFunction(gn.LeaveOneOut(), name="locked-loo")
    locked.lock = threading.Lock()
    kw = dict(steps=5, lr=0.1, seeds=2, eval_every=5)
    first = gn.train(TOY, [locked, "reinforce-loo"], 2, **kw)
    assert first[first["estimator"] == "locked-loo"]["code_version"].str.endswith("estimator:unhashable").all()
    reused = []
    gn.train(TOY, [locked, "reinforce-loo"], 2, previous=first, on_run=lambda rows, r: reused.append(
        (rows[0]["estimator"], r)), **kw)
    assert sorted(reused) == [("locked-loo", False), ("reinforce-loo", True)]
