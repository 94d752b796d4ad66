"""The core contract: state in and state out, random streams by fixed blocks, the parameter point
apart from the problem (issue 17).

* A cell's numbers depend on the cell alone: not on the memory limit, the order its blocks run
  in, or how its blocks are split (e.g. across workers).
* An estimator's state is explicit: ``init``, then ``estimate`` returns the state after it, and an
  adaptive estimator's ``adapt`` moves its control parameters; a frozen-point warm-up is a number
  of such steps, reproducible from the seed.
* A problem measured at explicit parameters (``Problem.at``) is the problem built at them.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

import gradnoise as gn
from gradnoise.base import Estimate, GradientEstimator, evaluate_cost, grad_of, sample_detached
from gradnoise.baselines import MovingAverage
from gradnoise.engine import block_estimates, block_seed, blocks, cell_seed, replicate_estimates

CELL = ("gaussian-quadratic-nd", "reinforce-optimal", 100)     # 3 blocks at R = 3000 (a pilot inside each)
R = 3000


def _estimates(**kw):
    problem, estimator = gn.make_problem(CELL[0]), gn.get_estimator(CELL[1])
    return replicate_estimates(problem, estimator, CELL[2], R, 7, **kw)[0]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_cell_has_several_blocks_of_a_fixed_size():
    problem, estimator = gn.make_problem(CELL[0]), gn.get_estimator(CELL[1])
    parts = blocks(problem, estimator, CELL[2], R)
    assert len(parts) == 3 and [first for _, first, _ in parts] == [0, parts[0][2], 2 * parts[0][2]]
    assert sum(size for _, _, size in parts) == R


@pytest.mark.parametrize("max_elements", [2**12, 2**16, 2**24])
def test_the_numbers_do_not_depend_on_the_memory_limit(max_elements):
    assert _equal(_estimates(max_elements=max_elements), _estimates())


@pytest.mark.parametrize("order", [[2, 1, 0], [1, 2, 0]])
def test_the_numbers_do_not_depend_on_the_order_of_the_blocks(order):
    assert _equal(_estimates(order=order), _estimates())


def test_blocks_computed_apart_and_gathered_are_the_cell():
    """What a worker would do with one block: seed it from (cell, index), compute it alone."""
    problem, estimator = gn.make_problem(CELL[0]), gn.get_estimator(CELL[1])
    cell = cell_seed(7, problem.spec, estimator.name, CELL[2])
    parts = [block_estimates(problem, estimator, CELL[2], size, block_seed(cell, i))[0]
             for i, _, size in reversed(blocks(problem, estimator, CELL[2], R))][::-1]
    gathered = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    assert _equal(gathered, _estimates())


def test_another_seed_gives_other_numbers():             # negative control
    problem, estimator = gn.make_problem(CELL[0]), gn.get_estimator(CELL[1])
    other = replicate_estimates(problem, estimator, CELL[2], R, 8)[0]
    assert not _equal(other, _estimates())


def test_the_ema_warm_up_is_steps_of_the_estimator_with_the_same_draws():
    """The EMA baseline's warm-up runs through the estimator's ``step`` (state out of each
    estimate, into the next); its state equals a plain loop of cost batches on the same stream."""
    problem, estimator = gn.make_problem("gaussian-cos"), gn.get_estimator("reinforce-ema:warmup=5")
    leaves = gn.base.replicate(problem.params, (16,))
    with gn.engine.seeded(11, torch.device("cpu")):
        state = estimator.init(problem, leaves, 4)
        states = [state]
        for _ in range(estimator.warmup_steps(4)):
            state = estimator.step(problem, leaves, 4, state).state
            states.append(state)
    baseline = MovingAverage(0.9, 5)
    with gn.engine.seeded(11, torch.device("cpu")):
        by_hand = baseline._batch_cost(problem, leaves, 4).mean(0)
        for _ in range(5):
            by_hand = baseline.update(by_hand, baseline._batch_cost(problem, leaves, 4))
    assert torch.equal(state, by_hand)
    assert all(not torch.equal(a, b) for a, b in zip(states, states[1:]))      # it moves every step


class LearnedConstant(GradientEstimator):
    r"""A toy adaptive estimator: REINFORCE with a per-replicate constant baseline :math:`c` (its
    state), unbiased for any :math:`c` independent of the samples, adapted by gradient descent on
    its own single-sample variance proxy :math:`\|\hat g\|^2`, differentiated through the estimate
    (``create_graph``), as REBAR and RELAX adapt theirs."""

    def __init__(self, lr=0.05, warmup=0):
        self.lr, self.warmup, self.name = lr, warmup, "learned-constant"

    def init(self, problem, params, n):
        return torch.zeros(next(iter(params.values())).shape[0])

    def warmup_steps(self, n):
        return self.warmup

    def estimate(self, problem, params, n, state):
        c = state.detach().requires_grad_(True)
        dist = problem.distribution(params)
        x = sample_detached(dist, (n,))
        f = evaluate_cost(problem, x, params).detach()
        g = grad_of(((f - c) * dist.log_prob(x)).mean(0), params, create_graph=True)
        proxy = sum(v.square().reshape(v.shape[0], -1).sum(1) for v in g.values())   # (R,)
        (dc,) = torch.autograd.grad(proxy.sum(), c)
        return Estimate({k: v.detach() for k, v in g.items()}, state, aux=dc)

    def adapt(self, problem, params, n, estimate):
        return estimate.state - self.lr * estimate.aux


def test_an_adaptive_estimators_state_moves_and_its_warm_up_is_reproducible():
    problem = gn.make_problem("gaussian-quadratic:k=3")
    estimator = LearnedConstant(warmup=30)
    leaves = gn.base.replicate(problem.params, (64,))
    with gn.engine.seeded(3, torch.device("cpu")):
        state = estimator.init(problem, leaves, 8)
        trail = [state]
        for _ in range(30):
            state = estimator.step(problem, leaves, 8, state).state
            trail.append(state)
    assert not torch.equal(trail[0], trail[-1])
    assert len({float(s.mean()) for s in trail}) == len(trail)                # a different state each step
    # toward the cost's scale (E f = (loc - k)^2 + scale^2 = 5 here): the variance-minimising c is near it
    assert 0 < float(trail[-1].mean()) < 20
    one = block_estimates(problem, estimator, 8, 64, 123)[0]
    two = block_estimates(problem, estimator, 8, 64, 123)[0]
    cold = block_estimates(problem, LearnedConstant(warmup=0), 8, 64, 123)[0]
    assert _equal(one, two) and not _equal(one, cold)


def test_measuring_at_explicit_parameters_is_measuring_the_problem_built_there():
    base, built = gn.make_problem("gaussian-cos:k=2"), gn.make_problem("gaussian-cos:k=2,loc=-0.5,scale=2")
    point = base.at({"loc": torch.tensor(-0.5), "scale": torch.tensor(2.0)})
    assert point is base.at({"loc": -0.5, "scale": 2.0})                        # cached by the values
    assert point.spec.startswith(base.spec + "@") and point.spec != base.spec
    for objective_truth in (point.true_gradient(), ):
        expected = built.true_gradient()
        assert all(torch.equal(objective_truth.values[k], expected.values[k]) for k in expected.values)
    assert not torch.equal(base.true_gradient().values["loc"], point.true_gradient().values["loc"])
    estimator = gn.get_estimator("reinforce-loo")
    assert _equal(block_estimates(point, estimator, 5, 40, 9)[0], block_estimates(built, estimator, 5, 40, 9)[0])
    rows = gn.measure("gaussian-cos:k=2", "reparam", [4], replicates=50, params={"loc": -0.5, "scale": 2.0})
    assert set(rows["problem"]) == {point.spec}
    assert rows["truth"].tolist() == [float(v) for v in expected.values.values()]


def test_a_point_is_validated_where_it_is():
    base = gn.make_problem("gaussian-cos")
    with pytest.raises(ValueError, match="'scale' is not finite"):
        base.at({"loc": torch.tensor(0.0), "scale": torch.tensor(math.inf)})
    with pytest.raises(ValueError, match="has shape"):
        base.at({"loc": torch.zeros(2), "scale": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="parameters"):
        base.at({"loc": torch.tensor(0.0)})


def test_a_user_problem_at_a_point_keys_its_oracle_by_the_values(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADNOISE_CACHE", str(tmp_path))
    problem = gn.ExpectationProblem(Normal, {"loc": torch.tensor(0.3), "scale": torch.tensor(1.0)},
                                    cost=lambda x: torch.cos(3 * x), name="mine", oracle_samples=2**14)
    a = problem.at({"loc": 0.5, "scale": 1.0}).true_gradient()
    b = problem.at({"loc": 0.5, "scale": 1.5}).true_gradient()
    assert a.kind == "oracle" and not torch.equal(a.values["scale"], b.values["scale"])


def test_compare_and_history_name_the_change_of_random_streams(tmp_path):
    """The one change of numbers is named: ``random_streams`` reads ``RANDOM_STREAMS`` from each
    commit's engine (none before the blocks), and history marks the commit where it changed."""
    import subprocess

    from gradnoise.analysis.compare import OLD_STREAMS, random_streams, streams_note
    from gradnoise.analysis.history import streams_changes

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                              cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "estimators").mkdir()
    commits = []
    for text in ("MAX_ELEMENTS = 2**22\n", "RANDOM_STREAMS = \"blocks-1\"\n", "RANDOM_STREAMS = \"blocks-1\"\nX = 1\n"):
        (tmp_path / "estimators" / "engine.py").write_text(text)
        git("add", "-A")
        git("commit", "-qm", "c")
        commits.append(git("rev-parse", "HEAD"))
    assert [random_streams(c, str(tmp_path)) for c in commits] == [OLD_STREAMS, "blocks-1", "blocks-1"]
    assert random_streams("0" * 40, str(tmp_path)) is None
    assert streams_changes(commits, str(tmp_path)) == [(commits[1], OLD_STREAMS, "blocks-1")]
    assert "random streams changed" in streams_note(OLD_STREAMS, "blocks-1").lower()
    assert streams_note("blocks-1", "blocks-1") == ""


def test_the_digits_models_train_through_the_registered_estimators():
    """The checkpoints come from the estimator contract's training loop (gradnoise.training),
    with the registered ``reparam``: it equals, up to float32 summation order, a hand-written
    loop of the reparameterised ELBO gradient over the same minibatches and noise."""
    from gradnoise.problems import digits_training as dt
    from gradnoise.problems.digits_model import TRAIN_IMAGES, DigitsModel, binarised_digits, init_params

    steps, seed = 20, 3
    trained = dt.train("gaussian", 4, 16, steps, seed)["end"]
    data = binarised_digits()[:TRAIN_IMAGES]
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.requires_grad_(True) for k, v in init_params("gaussian", 4, 16, gen).items()}
    optimiser = torch.optim.Adam(params.values(), lr=dt.LEARNING_RATE)
    with gn.base.forked_stream(seed):
        for _ in range(steps):
            batch = data[torch.randint(0, TRAIN_IMAGES, (dt.MINIBATCH,), generator=gen)]
            model = DigitsModel("gaussian", batch)
            q = model.encoder_points(params)
            z = q.rsample()
            optimiser.zero_grad()
            (-(model.log_joint_points(z, params) - q.log_prob(z)).mean()).backward()
            optimiser.step()
    for name, value in params.items():
        scale = float(value.detach().abs().max())
        assert float((trained[name] - value.detach()).abs().max()) <= 1e-5 * max(scale, 1.0), name
