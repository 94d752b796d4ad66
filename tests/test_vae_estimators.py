"""The IWAE family and VIMCO: unbiased (or detectably biased), and exact where they must be."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

import gradnoise as gn
from two_bit_model import TwoBitModel
from gradnoise.engine import replicate_estimates
from gradnoise.vimco import leave_one_out_bounds
from stat_checks import is_unbiased, replay

SEED = 20261125
LGV = "linear-gaussian-vae:d=3,perturbation=0.2"   # small, and away from the optimum


# ---------------------------------------------------------------------------------------------
# models with exact truths: TwoBitModel (tests/two_bit_model.py) and the exact posterior
# ---------------------------------------------------------------------------------------------
class ExactPosteriorModel(gn.ModelProblem):
    """Linear-Gaussian model, p(z) = N(mu, I), p(x|z) = N(z, I), with q = N(a*x + b, s^2) at the
    exact posterior (a = 1/2, b = mu/2, s^2 = 1/2): log w = log p(x) for every z."""

    X = torch.tensor([1.0, -0.5])

    def __init__(self):
        params = {"mu": torch.tensor([0.3, 0.1]), "a": torch.full((2,), 0.5), "b": torch.tensor([0.15, 0.05]),
                  "log_s": torch.full((2,), 0.5 * math.log(0.5))}
        super().__init__(self._encoder, self._log_joint, params, name="exact-posterior")

    def _encoder(self, p):
        return Independent(Normal(p["a"] * self.X + p["b"], p["log_s"].exp()), 1)

    def _log_joint(self, z, p):
        return Normal(p["mu"], 1.0).log_prob(z).sum(-1) + Normal(z, 1.0).log_prob(self.X).sum(-1)


_replay = functools.partial(replay, r=4)


# ---------------------------------------------------------------------------------------------
# statistical: unbiased for the objective each one declares, and the negative control
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator, k", [("iwae-stl", 1), ("iwae-dreg", 1), ("iwae-dreg", 5),
                                          ("vimco", 2), ("vimco", 5)])
def test_unbiased_on_linear_gaussian_vae(estimator, k):
    """|mean - truth| within 4 SE (oracle SE included for K > 1), Holm-corrected over coordinates."""
    est, prob = gn.get_estimator(estimator), gn.make_problem(LGV)
    assert est.unbiased_at(k)
    estimates, _ = replicate_estimates(prob, est, k, 4000, SEED)
    truth = prob.true_gradient(est.objective(k))
    assert truth.kind == ("closed-form" if k == 1 else "oracle")
    ok, pmin = is_unbiased(estimates, truth)
    assert ok, f"{estimator} at K={k}: smallest coordinate p-value {pmin:.2e}"


@pytest.mark.parametrize("k", [2, 4])
def test_vimco_unbiased_on_discrete_latents_exact_truth(k):
    prob, est = TwoBitModel(), gn.get_estimator("vimco")
    estimates, _ = replicate_estimates(prob, est, k, 20000, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient(est.objective(k)))
    assert ok, f"vimco at K={k}: smallest coordinate p-value {pmin:.2e}"


def test_vimco_negative_control_on_discrete_latents():
    """The same check has power here: VIMCO's mean is not the gradient of the ELBO (K=1) at K=4."""
    prob, est = TwoBitModel(), gn.get_estimator("vimco")
    estimates, _ = replicate_estimates(prob, est, 4, 20000, SEED)
    ok, _ = is_unbiased(estimates, prob.true_gradient(gn.Objective("iwae", 1)))
    assert not ok


def test_stl_is_labelled_and_detected_biased_for_k_above_one():
    """Negative control: STL drops -sum_k w~_k d log q(z_k)/d phi, whose mean is not zero for K > 1."""
    est, prob = gn.get_estimator("iwae-stl"), gn.make_problem(LGV)
    assert est.unbiased_at(1) and not est.unbiased_at(5) and est.objective(5) == gn.Objective("iwae", 5)
    estimates, _ = replicate_estimates(prob, est, 5, 20000, SEED)
    truth = prob.true_gradient(est.objective(5))
    ok, _ = is_unbiased(estimates, truth)
    assert not ok, "iwae-stl at K=5: bias not detected"
    # the bias is in the encoder only: the decoder (mu) gradient is the IWAE one
    assert is_unbiased({"mu": estimates["mu"]}, truth)[0]


# ---------------------------------------------------------------------------------------------
# exact: replayed noise
# ---------------------------------------------------------------------------------------------
def test_dreg_equals_stl_at_k1_and_decoders_equal_iwae():
    _, _, dreg1 = _replay("iwae-dreg", LGV, 1)
    _, _, stl1 = _replay("iwae-stl", LGV, 1)
    for name in dreg1:
        torch.testing.assert_close(dreg1[name], stl1[name])
    _, _, iwae5 = _replay("iwae", LGV, 5)
    for est in ("iwae-dreg", "iwae-stl"):
        _, _, g = _replay(est, LGV, 5)
        torch.testing.assert_close(g["mu"], iwae5["mu"])          # decoder: identical
        assert not torch.allclose(g["A"], iwae5["A"])             # encoder: a different estimator


def test_stl_is_reparam_without_the_score_term():
    """K=1: reparam - STL = -d log q(z)/d(A, b) at fixed z = (z - m) / s^2 * (x, 1), times -1."""
    prob, p, stl = _replay("iwae-stl", LGV, 1)
    _, _, reparam = _replay("reparam", LGV, 1)
    z = prob.distribution(p).rsample((1,))[0]
    m = p["A"] @ prob.x + p["b"]
    score_b = (z - m) / prob.VARIANCE
    torch.testing.assert_close(reparam["b"] - stl["b"], -score_b)
    torch.testing.assert_close(reparam["A"] - stl["A"], -score_b.unsqueeze(-1) * prob.x)
    torch.testing.assert_close(reparam["mu"], stl["mu"])


@pytest.mark.parametrize("estimator", ["iwae-stl", "iwae-dreg"])
@pytest.mark.parametrize("k", [1, 6])
def test_path_estimators_stick_the_landing(estimator, k):
    """q = exact posterior: log w is constant in z, so the encoder gradient is zero for every sample
    (zero variance), while IWAE's is not."""
    prob = ExactPosteriorModel()
    params = gn.replicate(prob.params, (5,))
    torch.manual_seed(SEED)
    g = gn.get_estimator(estimator)(prob, params, k)
    for name in ("a", "b", "log_s"):
        torch.testing.assert_close(g[name], torch.zeros_like(g[name]))
    torch.manual_seed(SEED)
    iwae = gn.get_estimator("iwae")(prob, params, k)
    assert iwae["b"].abs().max() > 1e-2
    torch.testing.assert_close(g["mu"], iwae["mu"])


def test_vimco_matches_the_formula():
    """Replay: sum_k (L - L_{-k}) d log q(z_k) + sum_k w~_k d log w_k, with L_{-k} by brute force."""
    k, r = 4, 3
    prob = TwoBitModel()
    params = gn.replicate(prob.params, (r,))
    torch.manual_seed(SEED)
    g = gn.get_estimator("vimco")(prob, params, k)
    torch.manual_seed(SEED)
    p = {n: v.detach() for n, v in params.items()}
    z = prob.distribution(p).sample((k,))                              # (K, R, 2)
    phi = p["phi"].clone().requires_grad_(True)
    log_q = Independent(Bernoulli(logits=phi), 1).log_prob(z)          # (K, R)
    log_w = prob.cost(z, p)
    bound = torch.logsumexp(log_w, 0) - math.log(k)
    signal = []
    for j in range(k):
        others = torch.cat([log_w[:j], log_w[j + 1:]])
        replaced = torch.cat([others, others.mean(0, keepdim=True)])
        signal.append(bound - (torch.logsumexp(replaced, 0) - math.log(k)))
    signal = torch.stack(signal)
    wt = torch.softmax(log_w, 0)
    score_phi = torch.autograd.grad((signal * log_q).sum(), phi)[0]
    phi2 = p["phi"].clone().requires_grad_(True)
    direct_phi = torch.autograd.grad(-(wt * Independent(Bernoulli(logits=phi2), 1).log_prob(z)).sum(), phi2)[0]
    torch.testing.assert_close(g["phi"], score_phi + direct_phi)
    # generative parameters: only the direct term sum_k w~_k d log p(x, z_k)
    theta = p["theta"].clone().requires_grad_(True)
    lp = Bernoulli(logits=theta).log_prob(z).sum(-1)
    torch.testing.assert_close(g["theta"], torch.autograd.grad((wt * lp).sum(), theta)[0])


def test_leave_one_out_bounds_stable_and_exact():
    log_w = torch.tensor([[0.0, -800.0, 3.0], [1.0, 0.0, 3.0], [-2.0, 900.0, 3.0], [0.5, 0.0, -1.0]],
                         dtype=torch.float64)
    k = log_w.shape[0]
    got = leave_one_out_bounds(log_w)
    for j in range(k):
        others = torch.cat([log_w[:j], log_w[j + 1:]])
        want = torch.logsumexp(torch.cat([others, others.mean(0, keepdim=True)]), 0) - math.log(k)
        torch.testing.assert_close(got[j], want)
    assert torch.isfinite(got).all()


# ---------------------------------------------------------------------------------------------
# capabilities
# ---------------------------------------------------------------------------------------------
def test_vimco_needs_two_samples_and_a_model():
    with pytest.raises(ValueError, match="N >= 2"):
        gn.measure(LGV, "vimco", 1, replicates=10)
    with pytest.raises(gn.EstimatorNotApplicable, match="model problem"):
        gn.measure("gaussian-cos", "vimco", 4, replicates=10)


def test_vimco_runs_without_rsample_and_path_estimators_refuse():
    prob = TwoBitModel()
    df = gn.measure(prob, "vimco", 3, replicates=50)
    assert set(df["param"]) == {"phi", "theta", "W"} and (df["truth_kind"] == "enumeration").all()
    for est in ("iwae-stl", "iwae-dreg"):
        with pytest.raises(gn.EstimatorNotApplicable, match="rsample"):
            gn.measure(prob, est, 3, replicates=10)
