r"""Training by a registered estimator: the loop the digits checkpoints come from, built on the
estimator contract (``init``, then ``step`` after ``step``), so that training and measurement use
one implementation of each estimator.

:func:`minimise` takes, at each step ``t``, a problem whose replicate axis holds independent
*terms* of one objective (the images of a minibatch, each its own data for the same shared
parameters): the parameters are replicated once per term, the estimator's ``step`` gives each
term's gradient estimate in one vectorised pass, and the optimiser receives their mean,

.. math:: \nabla_\phi \Big(s\,\frac1B \sum_{b=1}^{B} \mathbb{E}_{q_\phi}[f_b]\Big) \approx
          \frac{s}{B} \sum_b \hat g_b,

with ``sign`` :math:`s = -1` to maximise (an ELBO) and :math:`+1` to minimise. The estimator's
state is carried from step to step (its ``adapt`` hook runs each step), as a training run of an
adaptive estimator needs.

:func:`train` runs training *experiments*: several seeds of one (problem, estimator, budget),
each a run from the problem's parameters with its own random stream, the objective, the
estimator's variance and the cost recorded along the way (one tidy row per seed and evaluation
step, :data:`TRAIN_COLUMNS`); see its docstring and docs/train.md.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from . import provenance
from .base import (GradientEstimator, NonFiniteCostError, Objective, Problem,
                   all_finite, forked_stream, replicate, sample_detached)
from .engine import derived_seed
from .registry import get_estimator, make_problem


def minimise(
    problem_at: Callable[[int], Problem], estimator: GradientEstimator, n: int, params: dict[str, Tensor],
    optimiser: torch.optim.Optimizer, steps: int, *, sign: float = 1.0,
    on_step: Callable[[int, dict[str, Tensor]], Any] | None = None,
) -> Any:
    """Run ``steps`` optimiser steps on ``params`` (leaf tensors the ``optimiser`` holds, shared by
    every term) with ``estimator``'s ``n``-sample gradient estimates of the problem
    ``problem_at(t)`` (``t = 1 .. steps``), each replicate of which is one term; the parameters
    get ``sign`` times the mean of the terms' estimates as their gradient. ``on_step(t, params)``
    runs after each step. Random draws come from torch's current stream (the caller seeds it).
    Returns the estimator's final state."""
    state = None
    for t in range(1, steps + 1):
        problem = problem_at(t)
        terms = _terms(problem)
        leaves = replicate({k: v.detach() for k, v in params.items()}, (terms,))
        if state is None:
            state = estimator.init(problem, leaves, n)
        est = estimator.step(problem, leaves, n, state)
        state = est.state
        optimiser.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.grad = sign * est.grads[name].mean(0)
        optimiser.step()
        if on_step is not None:
            on_step(t, params)
    return state


def _terms(problem: Problem) -> int:
    """The number of terms (replicates) a per-term problem declares: its ``terms`` attribute."""
    terms = getattr(problem, "terms", None)
    if not isinstance(terms, int) or terms < 1:
        raise ValueError(f"problem {problem.spec!r} declares no number of terms (an int attribute 'terms' >= 1)")
    return terms


# -- training experiments ----------------------------------------------------------------------

#: what identifies a run's row, then what was recorded, then the settings and the code
TRAIN_COLUMNS = [
    "problem", "estimator", "budget", "seed", "step", "cost_evals", "seconds",
    "objective", "objective_se", "objective_kind", "objective_name",
    "variance", "variance_ci_low", "variance_ci_high", "variance_replicates",
    "optimizer", "lr", "steps", "eval_every", "objective_samples", "base_seed", "group", "seed_group",
    "basket", "code_version", "threads",
]
#: the settings a finished run is reused by (with ``code_version``): a resumed ``gradnoise train``
#: reuses a group's rows only when all of these and the code that computed them are the same
RUN_KEY = ("problem", "estimator", "budget", "optimizer", "lr", "steps", "eval_every", "objective_samples",
           "variance_replicates", "base_seed", "group", "seed_group", "basket", "objective_name")
OPTIMIZERS = ("adam", "sgd")
#: parameters of problems with at most this many scalars are recorded (``param:NAME[i]`` columns)
MAX_RECORDED_SCALARS = 16
#: seeds trained together in one vectorised pass (a *seed group*), by default
SEED_GROUP = 8


@dataclass(frozen=True)
class TrainSettings:
    """The settings of a training experiment that every run shares (see :func:`train`)."""

    steps: int
    lr: float
    optimizer: str = "adam"
    eval_every: int = 1
    variance_replicates: int = 0
    objective_samples: int = 1000
    seed: int = 0
    seed_group: int = SEED_GROUP
    #: the objective recorded (None: the one the estimator's gradient targets)
    objective: Objective | None = None


def group_seed(settings: TrainSettings, problem: Problem, estimator: GradientEstimator, budget: int, group: int) -> int:
    r"""The stream of seed group ``group``: :func:`gradnoise.engine.block_seed` of the cell seed
    :func:`gradnoise.engine.cell_seed` ``(seed, problem spec, estimator name, N)``, as the engine
    seeds block ``group`` of a cell: the seeds of a group are the replicates of a block."""
    from .engine import block_seed, cell_seed

    return block_seed(cell_seed(settings.seed, problem.spec, estimator.name, int(budget)), group)


def seed_groups(seeds: int, seed_group: int) -> list[tuple[int, int, int]]:
    """``(group, first seed, size)`` for ``seeds`` seeds in groups of ``seed_group``."""
    return [(g, first, min(seed_group, seeds - first)) for g, first in enumerate(range(0, seeds, seed_group))]


def make_optimiser(name: str, params: list[Tensor], lr: float, *, maximize: bool = False) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (its defaults but ``lr``) or ``torch.optim.SGD`` (plain, ``lr``);
    ``maximize``: ascend the gradient (torch negates it inside the step, as minimising its negative)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, maximize=maximize)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, maximize=maximize)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def budget_for_evals(problem: Problem, estimator: GradientEstimator, evals: int) -> int:
    """The budget N at which one estimate of ``estimator`` on ``problem`` spends exactly ``evals``
    cost evaluations (:meth:`~gradnoise.base.GradientEstimator.cost_evals_for`: ARM and DisARM
    N = B/2, ``reinforce-optimal`` N = B/2 with its pilot), the smallest such N >= its
    ``min_budget``; one ``ValueError`` where none does."""
    if isinstance(evals, bool) or not isinstance(evals, numbers.Integral) or evals < 1:
        raise ValueError(f"evaluations per step must be an integer >= 1, got {evals!r}")
    spent = {}
    for n in range(max(1, estimator.min_budget), int(evals) + 1):
        c = estimator.cost_evals_for(problem, n)
        spent[n] = c
        if c == evals:
            return n
        if c > evals:
            break
    near = ", ".join(f"N={n}: {c}" for n, c in list(spent.items())[-2:]) or f"N={estimator.min_budget}: " \
        f"{estimator.cost_evals_for(problem, max(1, estimator.min_budget))}"
    raise ValueError(f"estimator {estimator.name!r} cannot spend exactly {evals} cost evaluations per step on "
                     f"{problem.spec!r} (evaluations per estimate: {near}); choose another --evals-per-step")


def objective_name(problem: Problem, objective: Objective) -> str:
    """What the ``objective`` column holds: ``E_q[f]`` (expectation problems, minimised), ``-ELBO`` or
    ``-IWAE-K`` (model problems: the negative bound, minimised)."""
    objective = objective.canonical()
    if not problem.is_model:
        return "E_q[f]"
    return "-ELBO" if objective == Objective() else f"-IWAE-{objective.k}"


def objective_estimate(problem: Problem, params: dict[str, Tensor], objective: Objective, samples: int,
                       seed: int) -> tuple[Tensor, Tensor]:
    r"""Monte Carlo estimate of the objective at each replicate of ``params`` (``(S, *shape)``) and
    its standard error, from ``samples`` draws of torch's generator seeded ``seed`` (forked: the
    caller's stream untouched): the mean of :math:`f(x_i)`, :math:`x_i \sim q` (expectation, ELBO)
    or of :math:`\log \frac1K\sum_k w_k` over ``samples // K`` groups (IWAE-K, :math:`\log w = f`
    on a model problem), with SE = sd / sqrt(count). Returns two ``(S,)`` tensors."""
    objective = objective.canonical()
    device = next(iter(params.values())).device
    with forked_stream(seed, device), torch.no_grad():
        x = sample_detached(problem.distribution(params), (samples,))
        f = problem.cost(x, params).double()                          # (M, S)
        if objective.kind == "iwae" and objective.k > 1:
            k = objective.k
            m = f.shape[0] // k
            if m < 2:
                raise ValueError(f"objective_samples must be at least 2 K = {2 * k} to estimate the IWAE-{k} bound")
            f = torch.logsumexp(f[:m * k].reshape(m, k, -1), 1) - math.log(k)
    return f.mean(0), f.std(0, correction=1) / math.sqrt(f.shape[0])


def _flat_params(problem: Problem) -> list[tuple[str, str, int]]:
    """``(column, name, flat index)`` for the recorded parameters (none beyond :data:`MAX_RECORDED_SCALARS`)."""
    if problem.param_numel() > MAX_RECORDED_SCALARS:
        return []
    return [(f"param:{name}[{i}]", name, i) for name, p in problem.params.items() for i in range(p.numel())]


def run_version(problem: Problem, estimator: GradientEstimator, basket: Sequence[tuple[GradientEstimator, int]] = ()) -> provenance.CellVersion:
    """The code a run depends on: :func:`gradnoise.provenance.cell_version` of the problem with
    the driving estimator, and with each basket estimator (their fingerprints added)."""
    version = provenance.cell_version(problem, estimator)
    text, reason = version.text, version.reason
    for other, _ in basket:
        extra = provenance.cell_version(problem, other)
        reason = reason or extra.reason
        for part in extra.text.split("+")[1:]:
            if part not in text.split("+"):
                text += "+" + part
    return provenance.CellVersion(text, reason)


def train_group(problem: Problem, estimator: GradientEstimator, budget: int, settings: TrainSettings,
                group: int, first: int, size: int, basket: Sequence[tuple[GradientEstimator, int]] = ()) -> list[dict]:
    r"""One seed group: seeds ``first .. first + size - 1`` trained together, as the ``size``
    replicates of one set of replicated leaves (``(size, *shape)``, row ``j`` seed ``first + j``'s
    parameters), in one vectorised pass per step. Every draw of the training (the estimator's
    ``init``, its estimates) comes from torch's generator seeded :func:`group_seed`; measurements
    (objective estimates, variances) fork their own streams, seeded from it, so that recording
    changes no training number. Each step: ``init`` (first step only, or every step for an
    estimator with ``init_each_step``), ``step`` (= estimate + ``adapt``: an adaptive estimator
    adapts every step), the gradient :math:`s\,\hat g` (:math:`s = +1` on expectation problems,
    :math:`-1` on model problems, whose estimators estimate :math:`\nabla` ELBO) handed to the
    optimiser (``maximize`` on model problems; Adam and SGD act elementwise, so each row is its own run). Rows at step 0, every
    ``eval_every`` steps and the last. Returns the rows (:data:`TRAIN_COLUMNS`, ``param:`` and
    ``basket:`` columns)."""
    from .engine import replicate_estimates, seeded
    from .statistics import variance_interval

    version = run_version(problem, estimator, basket).text        # before anything runs
    device = next(iter(problem.params.values())).device
    sign = -1.0 if problem.is_model else 1.0
    objective = (settings.objective or estimator.objective(budget)).canonical()
    name = objective_name(problem, objective)
    stream = group_seed(settings, problem, estimator, budget, group)
    params = {k: v.detach().expand(size, *v.shape).clone().requires_grad_(True) for k, v in problem.params.items()}
    # model problems: the estimates are of the ELBO's gradient, ascended (= -ELBO minimised)
    optimiser = make_optimiser(settings.optimizer, list(params.values()), settings.lr, maximize=sign == -1.0)
    per_step = estimator.cost_evals_for(problem, budget)
    # evaluations of a once-only init: the amortised warm-up's, less its steps (an EMA's first batch)
    init_evals = 0 if estimator.init_each_step else max(
        0, estimator.amortised_evals(budget) - estimator.warmup_steps(budget) * per_step)
    recorded = _flat_params(problem)
    basket_label = ",".join(f"{b.name}@{n}" for b, n in basket)
    where = f"training problem {problem.spec!r} with estimator {estimator.name!r}, N = {budget}"
    threads = torch.get_num_threads()
    rows: list[dict] = []

    def record(step: int, evals: int, seconds: float) -> None:
        now = {k: v.detach().clone() for k, v in params.items()}
        exact = [problem.exact_objective({k: v[j] for k, v in now.items()}, objective) for j in range(size)]
        if any(e is None for e in exact):
            mean, se = objective_estimate(problem, now, objective, settings.objective_samples,
                                          derived_seed(stream, "objective", step))
        for j in range(size):
            point = {k: v[j] for k, v in now.items()}
            if exact[j] is not None:
                value, kind, err = float(exact[j][0]), exact[j][1], 0.0
            else:
                value, kind, err = float(mean[j]), "estimate", float(se[j])
            row = {"problem": problem.spec, "estimator": estimator.name, "budget": budget, "seed": first + j,
                   "step": step, "cost_evals": evals, "seconds": seconds, "objective": sign * value,
                   "objective_se": err, "objective_kind": kind, "objective_name": name,
                   "variance": math.nan, "variance_ci_low": math.nan, "variance_ci_high": math.nan,
                   "variance_replicates": settings.variance_replicates, "optimizer": settings.optimizer,
                   "lr": settings.lr, "steps": settings.steps, "eval_every": settings.eval_every,
                   "objective_samples": settings.objective_samples, "base_seed": settings.seed,
                   "group": group, "seed_group": settings.seed_group, "basket": basket_label,
                   "code_version": version, "threads": threads}
            for column, pname, i in recorded:
                row[column] = float(point[pname].reshape(-1)[i])
            if settings.variance_replicates:
                at = problem.at(point)
                for label, est, n in [(None, estimator, budget)] + [(b.name, b, nb) for b, nb in basket]:
                    g, _ = replicate_estimates(at, est, n, settings.variance_replicates,
                                               derived_seed(stream, "variance", first + j, step, est.name))
                    flat = torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], 1).double().cpu().numpy()
                    v, lo, hi = variance_interval(flat)
                    prefix = "" if label is None else f"basket:{label}:"
                    row[prefix + "variance"], row[prefix + "variance_ci_low"], row[prefix + "variance_ci_high"] = v, lo, hi
            rows.append(row)

    evals, seconds, state = init_evals, 0.0, None
    with seeded(stream, device):
        record(0, evals, seconds)
        for t in range(1, settings.steps + 1):
            start = time.perf_counter()
            leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
            if state is None or estimator.init_each_step:
                state = estimator.init(problem, leaves, budget)
            est = estimator.step(problem, leaves, budget, state)
            state = est.state
            for k, p in params.items():
                p.grad = est.grads[k].detach()
            optimiser.step()
            seconds += time.perf_counter() - start
            evals += per_step
            if t % settings.eval_every == 0 or t == settings.steps:
                # a NaN or inf estimate makes the parameters NaN: checked where they are recorded
                for k, p in params.items():
                    if not all_finite(p):
                        raise NonFiniteCostError(f"{where}: parameter {k!r} became NaN or inf by step {t} "
                                                 f"(a NaN or inf gradient estimate, or lr {settings.lr} too large?)")
                record(t, evals, seconds)
    return rows


def group_task(threads: int | None, problem: Problem, estimator: GradientEstimator, budget: int,
               settings: TrainSettings, group: int, first: int, size: int, basket) -> list[dict]:
    """:func:`train_group` as a cell task (:func:`gradnoise.cluster.run_in_cell`): what a Dask
    worker runs, at ``threads`` intra-op threads."""
    from .cluster import run_in_cell

    return run_in_cell(threads, train_group, problem, estimator, budget, settings, group, first, size, basket)


def check_settings(steps, lr, optimizer, seeds, eval_every, variance_replicates, objective_samples, seed_group) -> None:
    """One ``ValueError`` line for the first bad setting of :func:`train`."""
    def count(value, what, low):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")

    count(steps, "steps", 1)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr (the learning rate) must be a finite number > 0, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    count(seeds, "seeds", 1)
    count(eval_every, "eval_every", 1)
    count(objective_samples, "objective_samples", 2)
    count(seed_group, "seed_group", 1)
    if variance_replicates != 0:
        count(variance_replicates, "variance_replicates (0 to skip)", 2)


@dataclass
class Run:
    """One unit of work: a seed group of one (problem, estimator, budget)."""

    problem: Problem
    estimator: GradientEstimator
    budget: int
    group: int
    first: int
    size: int
    basket: list = field(default_factory=list)

    def label(self) -> str:
        return f"{self.estimator.name} N={self.budget} seeds {self.first}-{self.first + self.size - 1}"


def plan(problem, estimators, *, budget=None, evals_per_step=None, seeds=5, seed_group=SEED_GROUP,
         basket=(), device="cpu") -> list[Run]:
    """The runs of a training experiment, checked up front: each estimator applicable at its budget
    (``budget``, or the one spending ``evals_per_step``), each basket estimator too."""
    from .engine import check_device

    if (budget is None) == (evals_per_step is None):
        raise ValueError("give exactly one of budget (N) and evals_per_step (B)")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1):
        raise ValueError(f"budget N must be an integer >= 1, got {budget!r}")
    problem = (make_problem(problem) if isinstance(problem, str) else problem).to(check_device(device))
    if isinstance(estimators, (str, GradientEstimator)):
        estimators = [estimators]
    ests = [get_estimator(e) for e in estimators]
    if not ests:
        raise ValueError("no estimator given")
    names = [e.name for e in ests]
    if len(set(names)) != len(names):
        raise ValueError(f"an estimator is named twice: {', '.join(names)}")

    def budget_of(est):
        n = int(budget) if budget is not None else budget_for_evals(problem, est, evals_per_step)
        est.check(problem, n)
        return n

    bask = [(b, budget_of(b)) for b in (get_estimator(e) for e in basket)]
    runs = []
    for est in ests:
        n = budget_of(est)
        for group, first, size in seed_groups(seeds, seed_group):
            runs.append(Run(problem, est, n, group, first, size, bask))
    return runs


def reusable_rows(previous: pd.DataFrame | None, run: Run, settings: TrainSettings, version) -> list[dict] | None:
    """The rows ``previous`` holds for ``run`` when they are complete and computed by the same code
    (``version``: :func:`run_version`, reusable), else None."""
    if previous is None or previous.empty or not version.reusable:
        return None
    objective = (settings.objective or run.estimator.objective(run.budget)).canonical()
    values = {"problem": run.problem.spec, "estimator": run.estimator.name, "budget": run.budget,
              "optimizer": settings.optimizer, "lr": settings.lr, "steps": settings.steps,
              "eval_every": settings.eval_every, "objective_samples": settings.objective_samples,
              "variance_replicates": settings.variance_replicates, "base_seed": settings.seed, "group": run.group,
              "seed_group": settings.seed_group, "basket": ",".join(f"{b.name}@{n}" for b, n in run.basket),
              "objective_name": objective_name(run.problem, objective)}
    key = {k: values[k] for k in RUN_KEY}
    if any(k not in previous.columns for k in key):
        return None
    mask = np.ones(len(previous), dtype=bool)
    for k, v in key.items():
        column = previous[k]
        mask &= (column.astype(object).where(column.notna(), "").astype(str) == str(v)).to_numpy() if isinstance(v, str) else \
            np.isclose(column.astype(float).to_numpy(), float(v), rtol=0, atol=0)
    rows = previous[mask]
    steps = sorted({0, settings.steps, *range(settings.eval_every, settings.steps + 1, settings.eval_every)})
    want = {(s, t) for s in range(run.first, run.first + run.size) for t in steps}
    have = set(zip(rows["seed"].astype(int), rows["step"].astype(int)))
    if have != want or len(rows) != len(want) or set(rows["code_version"]) != {version.text}:
        return None
    return rows.to_dict("records")


def train(
    problem: str | Problem, estimator: str | GradientEstimator | Iterable[str | GradientEstimator],
    budget: int | None = None, *, steps: int, lr: float, optimizer: str = "adam", seeds: int = 5,
    seed: int = 0, eval_every: int | None = None, variance_replicates: int = 0, objective_samples: int = 1000,
    evals_per_step: int | None = None, basket: Sequence[str | GradientEstimator] = (),
    seed_group: int = SEED_GROUP, objective: Objective | None = None, device: str = "cpu",
    threads: int | None = 1, client=None, progress: bool = False, previous: pd.DataFrame | None = None,
    on_run: Callable[[list[dict], bool], Any] | None = None,
) -> pd.DataFrame:
    r"""Train: ``seeds`` runs of each estimator from the problem's parameters, recorded as they go.

    >>> df = gn.train("bernoulli-toy:t=0.45", ["reinforce", "disarm"], 2, steps=500, lr=0.1, seeds=8)

    **Objective** (minimised): :math:`\mathbb{E}_{q_\phi}[f]` on expectation problems; on model
    problems the negative of the bound the estimator's gradient targets (``-ELBO``, or ``-IWAE-K``
    for ``iwae*`` and ``vimco``), or of ``objective`` where given (e.g. ``Objective()``: the ELBO
    for every estimator). Recorded exactly where the problem knows it
    (:meth:`~gradnoise.base.Problem.exact_objective`: closed form or enumeration; ``objective_se``
    0), else as a labelled ``estimate`` from ``objective_samples`` draws of a stream of its own
    (:func:`objective_estimate`) with its standard error.

    **Optimiser**: ``torch.optim.Adam`` (its defaults but ``lr``) or ``"sgd"``, on the gradient
    estimate (negated on model problems); the estimator's state carried over (``adapt`` each step).

    **Cost**: ``budget`` N per estimate, or ``evals_per_step`` B: each estimator the N at which
    an estimate spends exactly B evaluations (:func:`budget_for_evals`). ``cost_evals`` is
    cumulative (pilots included; an EMA baseline's first batch too); ``seconds`` the cumulative
    wall time of the steps alone (not of the recording), of the seed group, whose seeds advance
    together.

    **Seeds and streams**: seeds are trained in *seed groups* of ``seed_group`` (the last may be
    smaller), each one vectorised pass per step over replicated leaves ``(G, *shape)``; group g of
    (problem, estimator, N) draws from :func:`group_seed`, derived from ``seed`` like the engine's
    cell and block seeds. A seed's numbers are thus a function of (seed, problem, estimator, N,
    group size, its index), bitwise reproducible and independent of the order runs execute in or
    where (``client``: a ``distributed.Client``, the groups run on its workers). Changing
    ``seed_group`` changes the streams.

    **Variance along the trajectory**: with ``variance_replicates`` R > 0, at each recorded step
    and seed, R independent estimates at that seed's parameters (the engine,
    :func:`~gradnoise.engine.replicate_estimates`, at :meth:`~gradnoise.base.Problem.at` the
    point, a stream derived from the group's) give the trace variance and its 95% interval
    (:func:`~gradnoise.statistics.variance_interval`); ``basket`` estimators the same at the same
    point (columns ``basket:NAME:variance`` ...). Measurements spend no training evaluations.

    Rows: one per estimator, seed and recorded step (0, every ``eval_every``, default
    ``max(1, steps // 50)``, and the last), :data:`TRAIN_COLUMNS` plus ``param:NAME[i]`` for
    problems of at most 16 scalars. ``previous`` (an earlier result) lends its complete runs
    computed by the same code with the same settings (:func:`reusable_rows`); ``on_run(rows,
    reused)`` is called as each group finishes.
    """
    from .engine import torch_threads

    if eval_every is None and isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        eval_every = max(1, int(steps) // 50)
    check_settings(steps, lr, optimizer, seeds, eval_every, variance_replicates, objective_samples, seed_group)
    if basket and not variance_replicates:
        raise ValueError("a basket needs variance_replicates >= 2 (the variances it measures)")
    settings = TrainSettings(int(steps), float(lr), optimizer, int(eval_every), int(variance_replicates),
                             int(objective_samples), int(seed), int(seed_group), objective)
    runs = plan(problem, estimator, budget=budget, evals_per_step=evals_per_step, seeds=seeds,
                seed_group=seed_group, basket=basket, device=device)
    results: dict[int, list[dict]] = {}
    todo = []
    for i, run in enumerate(runs):
        rows = reusable_rows(previous, run, settings, run_version(run.problem, run.estimator, run.basket))
        if rows is not None:
            results[i] = rows
            if on_run is not None:
                on_run(rows, True)
        else:
            todo.append(i)
    calls = [(threads, runs[i].problem, runs[i].estimator, runs[i].budget, settings, runs[i].group,
              runs[i].first, runs[i].size, runs[i].basket) for i in todo]
    if client is not None:
        from .cluster import map_calls

        done = ((todo[j], rows) for j, rows in map_calls(client, group_task, calls))
    else:
        def sequential():
            with torch_threads(threads):
                for i, call in zip(todo, calls):
                    yield i, train_group(*call[1:])
        done = sequential()
    if progress:
        from tqdm.auto import tqdm

        done = tqdm(done, total=len(todo), unit="run", desc="training")
    for i, rows in done:
        results[i] = rows
        if on_run is not None:
            on_run(rows, False)
    frame = pd.DataFrame([row for i in range(len(runs)) for row in results[i]])
    extra = [c for c in frame.columns if c not in TRAIN_COLUMNS]
    return frame.reindex(columns=TRAIN_COLUMNS + extra)
