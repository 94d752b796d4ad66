"""bayes-logreg: the data, the oracle truth against Gauss-Hermite quadrature, the new estimators
unbiased against that quadrature truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import gradnoise as gn
from gradnoise.engine import replicate_estimates
from stat_checks import is_unbiased

SEED = 20261128


def quadrature_truth(problem) -> gn.Truth:
    """Gradient of E_q[f] by adaptive quadrature (scipy.integrate.quad), float64, no sampling.

    Under q, a_i = s_i x_i^T w is Normal(m_i, v_i) with m_i = s_i x_i^T mu, v_i = sum_j x_ij^2 sigma_j^2.
    With l(a) = log sigmoid(a), l' = sigmoid(-a), l'' = -sigmoid(a) sigmoid(-a), and Gaussian
    identities d/dm E[l(a)] = E[l'(a)], d/dv E[l(a)] = E[l''(a)] / 2:
    d/dmu_j = sum_i s_i x_ij E[l'(a_i)] - mu_j and d/dsigma_j = sum_i x_ij^2 sigma_j E[l''(a_i)] - sigma_j
    (the last terms from E_q[log N(w; 0, I)] = -(D/2) log(2 pi) - (1/2) sum_j (mu_j^2 + sigma_j^2)).
    """
    x, s = problem.features.double().numpy(), problem.signs.double().numpy()
    mu, sigma = problem.params["loc"].double().numpy(), problem.params["scale"].double().numpy()
    m, sd = s * (x @ mu), np.sqrt((x**2) @ sigma**2)
    sig = lambda a: 0.5 * (1 + np.tanh(a / 2))  # noqa: E731   (stable logistic)

    def normal_mean(fn, mi, si):
        kink = -mi / si
        return integrate.quad(lambda t: fn(mi + si * t) * stats.norm.pdf(t), -12, 12,
                              points=[kink] if -12 < kink < 12 else None, limit=200, epsabs=1e-13)[0]

    d1 = np.array([normal_mean(lambda a: sig(-a), mi, si) for mi, si in zip(m, sd)])
    d2 = np.array([normal_mean(lambda a: -sig(a) * sig(-a), mi, si) for mi, si in zip(m, sd)])
    g_mu = (s * d1) @ x - mu
    g_sigma = d2 @ x**2 * sigma - sigma
    dtype = problem.params["loc"].dtype
    return gn.Truth({"loc": torch.tensor(g_mu, dtype=dtype), "scale": torch.tensor(g_sigma, dtype=dtype)},
                    "closed-form")


@pytest.fixture(scope="module")
def problem():
    return gn.make_problem("bayes-logreg")


@pytest.fixture(scope="module")
def exact(problem):
    return quadrature_truth(problem)


def test_data(problem):
    assert problem.features.shape == (100, 30) and set(problem.signs.tolist()) == {-1.0, 1.0}
    everything = gn.make_problem("bayes-logreg:n_data=0,intercept=true")
    assert everything.features.shape == (569, 31) and (everything.features[:, -1] == 1).all()
    torch.testing.assert_close(everything.features[:, :30].mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    torch.testing.assert_close(everything.features[:, :30].std(0, unbiased=False), torch.ones(30), atol=1e-5, rtol=0)
    assert torch.equal(gn.make_problem("bayes-logreg").features, problem.features)       # fixed subset
    assert not torch.equal(gn.make_problem("bayes-logreg:seed=1").features, problem.features)
    assert "bayes-logreg" in gn.problem_names() and "bayes-logreg" not in gn.problem_names(default_sweep=True)
    with pytest.raises(ValueError, match="n_data"):
        gn.make_problem("bayes-logreg:n_data=600")


def test_oracle_agrees_with_quadrature(problem, exact):
    """The labelled oracle is within 4 of its own standard errors, Holm-corrected over 60 coordinates."""
    oracle = problem.true_gradient()
    assert oracle.kind == "oracle"
    fake_estimates = {k: torch.stack([v, v]) for k, v in oracle.values.items()}   # zero sample variance
    ok, pmin = is_unbiased(fake_estimates, gn.Truth(exact.values, "oracle", oracle.se))
    assert ok, pmin


@pytest.mark.parametrize("estimator, n", [("measure-valued", 1), ("measure-valued:coupled=false", 1),
                                          ("reinforce-delta", 4), ("reparam-delta", 4)])
def test_new_estimators_unbiased_against_quadrature(problem, exact, estimator, n):
    estimates, _ = replicate_estimates(problem, gn.get_estimator(estimator), n, 2000, SEED)
    ok, pmin = is_unbiased(estimates, exact)
    assert ok, f"{estimator}: smallest p-value {pmin:.2e}"


def test_measure_valued_spends_two_evaluations_per_sample_and_coordinate(problem):
    assert gn.get_estimator("measure-valued").cost_evals_for(problem, 10) == 2 * 60 * 10
