"""Problems' truths are right, checked by an independent route (quadrature, hand formulas, MC)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Categorical, Gamma, Independent, Normal

import gradnoise as gn
from gradnoise.engine import replicate_estimates
from stat_checks import is_unbiased

COSTS = {
    "gaussian-quadratic": lambda x, k: (x - k) ** 2,
    "gaussian-exp": lambda x, k: np.exp(-k * x**2),
    "gaussian-cos": lambda x, k: np.cos(k * x),
}


def _expectation(cost, loc, scale):
    return integrate.quad(lambda x: cost(x) * stats.norm.pdf(x, loc, scale), -np.inf, np.inf,
                          epsabs=1e-13, epsrel=1e-12)[0]


@pytest.mark.parametrize("name", list(COSTS))
@pytest.mark.parametrize("k, loc, scale", [(2.0, 1.0, 1.0), (5.0, 0.3, 0.7)])
def test_gaussian_closed_forms_match_quadrature(name, k, loc, scale):
    """Central differences of the quadrature integral (float64) vs autograd of the closed form."""
    prob = gn.make_problem(f"{name}:k={k},loc={loc},scale={scale}")
    truth = prob.true_gradient()
    assert truth.kind == "closed-form"
    cost, h = (lambda x: COSTS[name](x, k)), 1e-4
    d_loc = (_expectation(cost, loc + h, scale) - _expectation(cost, loc - h, scale)) / (2 * h)
    d_scale = (_expectation(cost, loc, scale + h) - _expectation(cost, loc, scale - h)) / (2 * h)
    # truths are float32: compare at float32 resolution
    assert truth.values["loc"].item() == pytest.approx(d_loc, rel=1e-5, abs=1e-6)
    assert truth.values["scale"].item() == pytest.approx(d_scale, rel=1e-5, abs=1e-6)


def test_bernoulli_enumeration_matches_hand_formula():
    theta, t = 0.4, 0.499
    truth = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}").true_gradient()
    s = 1 / (1 + math.exp(-theta))
    assert truth.kind == "enumeration"
    assert truth.values["logits"].item() == pytest.approx(s * (1 - s) * ((1 - t) ** 2 - t**2), rel=1e-5)


def test_gaussian_nd_truth():
    truth = gn.make_problem("gaussian-quadratic-nd:d=3,k=2,loc=1,scale=0.5").true_gradient()
    torch.testing.assert_close(truth.values["loc"], torch.full((3,), 2 * (1 - 2.0)))
    torch.testing.assert_close(truth.values["scale"], torch.full((3,), 2 * 0.5))


def test_linear_gaussian_vae_elbo_closed_form_matches_monte_carlo():
    prob = gn.make_problem("linear-gaussian-vae")
    p = {k: v.double() for k, v in prob.params.items()}
    prob.x = prob.x.double()
    torch.manual_seed(0)
    z = prob.distribution(p).sample((200_000,))
    f = prob.cost(z, p)                     # log p(x, z) - log q(z | x)
    z_score = (f.mean() - prob.elbo(p)) / (f.std() / math.sqrt(len(f)))
    assert abs(z_score.item()) < 4
    assert prob.elbo(p) < prob.log_marginal()                 # the ELBO is a lower bound


def test_linear_gaussian_vae_shapes_and_objectives():
    prob = gn.make_problem("linear-gaussian-vae:d=5")
    assert {k: tuple(v.shape) for k, v in prob.params.items()} == {"mu": (5,), "A": (5, 5), "b": (5,)}
    assert prob.true_gradient(gn.Objective("iwae", 1)) is prob.true_gradient()
    oracle = prob.true_gradient(gn.Objective("iwae", 8))
    assert oracle.kind == "oracle" and all((se > 0).all() for se in oracle.se.values())


def test_canonical_specs():
    assert gn.make_problem("gaussian-cos:loc=1,k=2").spec == gn.make_problem("gaussian-cos").spec
    assert gn.make_problem("gaussian-cos:k=5").spec == "gaussian-cos:k=5,loc=1,scale=1"


def test_bring_your_own_oracle_truth():
    """A Gamma distribution with no closed form given: oracle truth with an SE, reparam unbiased."""
    prob = gn.ExpectationProblem(Gamma, {"concentration": 2.0, "rate": 1.5}, torch.log1p,
                                 name="gamma-log1p", oracle_samples=2**18)
    truth = prob.true_gradient()
    assert truth.kind == "oracle" and (truth.se["rate"] > 0).all()
    estimates, _ = replicate_estimates(prob, gn.get_estimator("reparam"), 4, 4000, 5)
    assert is_unbiased(estimates, truth)[0]
    df = gn.measure(prob, "reinforce", 4, replicates=100)
    assert set(df.truth_kind) == {"oracle"} and (df.truth_se > 0).all()


def test_bring_your_own_enumeration_truth():
    """A Categorical distribution: truth by exact enumeration, checked against the hand formula."""
    values = torch.tensor([0.0, 1.0, 3.0])
    prob = gn.ExpectationProblem(Categorical, {"logits": torch.tensor([0.1, -0.2, 0.3])},
                                 lambda c: values[c], name="categorical")
    truth = prob.true_gradient()
    p = torch.softmax(prob.params["logits"], 0)
    assert truth.kind == "enumeration"
    torch.testing.assert_close(truth.values["logits"], p * (values - (p * values).sum()))


def test_vector_family_without_independent_is_refused():
    from torch.distributions import Normal

    with pytest.raises(ValueError, match="Independent"):
        gn.ExpectationProblem(Normal, {"loc": torch.zeros(3), "scale": torch.ones(3)}, lambda x: x.sum(-1))


# ------------------------------------------------------------------------------------------
# Problem.to: every tensor a problem uses moves, also those its functions capture.
# The meta device stands in for a GPU: no memory, no kernels, but a mixed-device
# operation (a tensor left on the CPU) raises as it would on CUDA.
# ------------------------------------------------------------------------------------------
META = torch.device("meta")


@pytest.fixture
def no_validation():
    """Distributions built without checking their arguments (a check reads values, which meta has not)."""
    with gn.engine.distribution_validation(False):
        yield


def _closure_values(function) -> dict:
    import inspect

    return inspect.getclosurevars(function).nonlocals


def test_a_tensor_captured_by_a_users_cost_moves_with_the_problem(no_validation):
    import functools

    target = torch.tensor([1.0, 2.0, 3.0])
    weights = [torch.ones(3), {"scale": torch.tensor(2.0)}]
    scaled = functools.partial(lambda x, w: x * w, w=torch.tensor(0.5))

    def cost(x):
        return (weights[1]["scale"] * scaled(x - target) ** 2 * weights[0]).sum(-1)

    prob = gn.ExpectationProblem(
        lambda loc, scale: Independent(Normal(loc, scale), 1),
        {"loc": torch.zeros(3), "scale": torch.ones(3)}, cost, name="captured")
    assert prob.to(META) is prob
    captured = _closure_values(cost)
    assert captured["target"].device == META
    assert captured["weights"][0].device == META and captured["weights"][1]["scale"].device == META
    assert captured["scaled"].keywords["w"].device == META
    assert all(p.device == META for p in prob.params.values())
    x = prob.distribution(prob.params).rsample((4,))
    assert x.device == META and prob.cost(x, prob.params).shape == (4,)
    assert prob.cost(x, prob.params).device == META


def test_a_tensor_captured_by_a_default_argument_moves():
    target = torch.tensor(2.0)
    prob = gn.ExpectationProblem(Normal, {"loc": 0.0, "scale": 1.0}, lambda x, t=target: (x - t) ** 2)
    prob.to(META)
    assert prob._cost.__defaults__[0].device == META


@pytest.mark.parametrize("spec", ["bernoulli-toy-nd", "categorical-toy", "bernoulli-toy", "gaussian-quadratic-nd",
                                  "linear-gaussian-vae:d=3", "bayes-logreg:n_data=20"])
def test_a_built_in_problem_moved_to_a_device_computes_there(spec, no_validation):
    """Its distribution and cost run on the device with nothing left on the CPU (which raises)."""
    prob = gn.make_problem(spec).to(META)
    assert all(p.device == META for p in prob.params.values())
    for value in vars(prob).values():
        if isinstance(value, torch.Tensor):
            assert value.device == META
    dist = prob.distribution(gn.replicate(prob.params, (2,)))
    x = torch.zeros((5, 2, *dist.event_shape), device=META)
    f = prob.cost(x, gn.replicate(prob.params, (2,)))
    assert f.device == META and f.shape == (5, 2)


def test_bernoulli_toy_nd_keeps_its_targets_on_the_problem():
    prob = gn.make_problem("bernoulli-toy-nd:p=0.2 0.7").to(META)
    assert prob.targets.device == META and prob.targets.shape == (2,)


def test_a_users_model_problem_moves_its_encoder_and_log_joint_data(no_validation):
    data = torch.tensor([0.5, -1.0])
    prior_loc = torch.zeros(2)
    prob = gn.ModelProblem(
        lambda p: Independent(Normal(p["a"] * data, 1.0), 1),
        lambda z, p: Independent(Normal(prior_loc, 1.0), 1).log_prob(z) + Normal(z, 1.0).log_prob(data).sum(-1),
        {"a": torch.tensor(1.0)}, name="captured-model")
    prob.to(META)
    assert _closure_values(prob.encoder)["data"].device == META
    assert _closure_values(prob.log_joint)["prior_loc"].device == META
    params = gn.replicate(prob.params, (2,))
    f = prob.cost(torch.zeros(3, 2, 2, device=META), params)
    assert f.device == META and f.shape == (3, 2)


def test_a_wrapped_problem_moves_with_its_wrapper():
    inner = gn.make_problem("linear-gaussian-vae:d=3")
    wrapped = gn.StoppedScoreTerm(inner).to(META)
    assert wrapped.problem is inner and inner.x.device == META
    assert all(p.device == META for p in inner.params.values())
    assert all(p.device == META for p in wrapped.params.values())


def test_moving_to_the_device_it_is_on_replaces_nothing():
    """``engine.cells`` moves every problem to its device, the CPU by default: nothing is copied or
    rebound, so a user's function keeps its captured objects (and its fingerprint)."""
    target = torch.tensor([1.0, 2.0])
    cost = lambda x: ((x - target) ** 2).sum(-1)  # noqa: E731
    prob = gn.ExpectationProblem(lambda loc: Independent(Normal(loc, 1.0), 1), {"loc": torch.zeros(2)}, cost)
    params, attrs = prob.params, dict(vars(prob))
    prob.to("cpu")
    assert _closure_values(cost)["target"] is target and prob.params is params
    assert all(vars(prob)[k] is v for k, v in attrs.items())
