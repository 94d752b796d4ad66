"""The digits VAEs: load, train deterministically, cache, refuse what does not apply, and give
unbiased gradients against their truths (small sizes and short training, for speed)."""
from __future__ import annotations

import pytest
import torch
from torch.nn import Linear, Sequential, Tanh
from torch.func import functional_call

import gradnoise as gn
from gradnoise.problems import digits, digits_model, digits_training
from gradnoise.engine import replicate_estimates
from stat_checks import is_unbiased

SMALL = dict(latent=2, hidden=8, steps=40)
SPEC = "digits-vae:latent=2,hidden=8,steps=40"
BSPEC = "digits-bernoulli-vae:latent=2,hidden=8,steps=40"
SEED = 20261125


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("gradnoise-cache")
        mp.setenv("GRADNOISE_CACHE", str(path))
        yield path


def test_problems_load_with_prefixed_parameter_names():
    prob = gn.make_problem(SPEC + ",points=3")
    assert prob.is_model and prob.spec == "digits-vae:checkpoint=end,hidden=8,latent=2,points=3,seed=0,steps=40"
    assert {k: tuple(v.shape) for k, v in prob.params.items()} == {
        "encoder.0.weight": (8, 64), "encoder.0.bias": (8,), "encoder.2.weight": (4, 8), "encoder.2.bias": (4,),
        "decoder.0.weight": (8, 2), "decoder.0.bias": (8,), "decoder.2.weight": (64, 8), "decoder.2.bias": (64,),
    }
    assert prob.distribution(prob.params).event_shape == (3, 2)
    assert set(prob.x.unique().tolist()) == {0.0, 1.0} and prob.x.shape == (3, 64)
    bern = gn.make_problem(BSPEC)
    assert bern.params["encoder.2.weight"].shape == (2, 8)
    assert not bern.distribution(bern.params).has_rsample


def test_replicated_mlp_equals_nn_modules_per_replicate():
    """The batched functional MLP is nn.Sequential(Linear, Tanh, Linear) applied to each replicate."""
    torch.manual_seed(0)
    net = Sequential(Linear(2, 8), Tanh(), Linear(8, 64))
    weights = {f"decoder.{k}": torch.randn(5, 3, *v.shape) for k, v in net.state_dict().items()}  # L = (5, 3)
    z = torch.randn(4, 5, 3, 7, 2)                                                              # S=(4,), B=7
    out = digits_model.mlp(z, weights, "decoder")
    assert out.shape == (4, 5, 3, 7, 64)
    for i in range(5):
        for j in range(3):
            sd = {k.removeprefix("decoder."): v[i, j] for k, v in weights.items()}
            torch.testing.assert_close(out[:, i, j], functional_call(net, sd, (z[:, i, j],)))
    shared = digits_model.mlp(torch.randn(7, 2), weights, "decoder")                                  # data: (B, in)
    assert shared.shape == (5, 3, 7, 64)


def test_training_is_deterministic_from_the_seed():
    a, b = digits_training.train("gaussian", 2, 8, 40, seed=3), digits_training.train("gaussian", 2, 8, 40, seed=3)
    c = digits_training.train("gaussian", 2, 8, 40, seed=4)
    for ckpt in digits_model.CHECKPOINTS:
        for name in a[ckpt]:
            assert torch.equal(a[ckpt][name], b[ckpt][name]), (ckpt, name)
    assert not torch.equal(a["end"]["decoder.2.bias"], c["end"]["decoder.2.bias"])
    assert not torch.equal(a["start"]["encoder.0.weight"], a["middle"]["encoder.0.weight"])
    assert not torch.equal(a["middle"]["encoder.0.weight"], a["end"]["encoder.0.weight"])


def test_training_improves_the_elbo_and_leaves_the_random_stream_alone():
    torch.manual_seed(1)
    before = torch.rand(3)
    torch.manual_seed(1)
    saved = digits_training.train("bernoulli", 2, 8, 60, seed=0)
    assert torch.equal(torch.rand(3), before)
    prob = gn.make_problem(BSPEC + ",points=200")
    elbo = {c: prob.exact_elbo(saved[c]).item() for c in ("start", "end")}
    assert elbo["end"] > elbo["start"], elbo


def test_second_run_loads_the_cache_and_does_not_retrain(cache, monkeypatch):
    first = {c: gn.make_problem(SPEC + f",seed=7,checkpoint={c}") for c in digits_model.CHECKPOINTS}
    path = digits_training.checkpoint_path("gaussian", 2, 8, 40, 7)
    assert path.exists() and path.parent == cache / "digits"

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the checkpoints are cached")

    monkeypatch.setattr(digits_training, "train", no_training)
    for c in digits_model.CHECKPOINTS:
        again = gn.make_problem(SPEC + f",seed=7,checkpoint={c}")
        for name, value in first[c].params.items():
            assert torch.equal(again.params[name], value)
    with pytest.raises(AssertionError, match="retrained"):      # other settings: another file
        gn.make_problem(SPEC + ",seed=8")


@pytest.mark.parametrize("estimator", ["reparam", "iwae", "iwae-stl", "iwae-dreg"])
def test_bernoulli_latents_refuse_pathwise_estimators(estimator):
    with pytest.raises(gn.EstimatorNotApplicable, match="rsample"):
        gn.measure(BSPEC, estimator, 2, replicates=10)


@pytest.mark.parametrize("spec, match", [
    (SPEC + ",checkpoint=final", "checkpoint must be one of start, middle, end"),
    (SPEC + ",points=0", "points"), (SPEC + ",latent=0", "latent"),
    (SPEC + ",width=3", "unknown option"),
])
def test_invalid_options_are_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        gn.make_problem(spec)


@pytest.mark.parametrize("spec, estimators", [
    (SPEC, ["reinforce", "reinforce-loo", "reinforce-optimal", "reparam", "iwae", "iwae-stl", "iwae-dreg",
            "vimco"]),
    (BSPEC, ["reinforce", "reinforce-ema", "reinforce-loo", "reinforce-optimal", "vimco"]),
])
def test_measure_gives_one_row_per_parameter_tensor(spec, estimators):
    prob = digits.DigitsVAE("gaussian" if spec == SPEC else "bernoulli", **SMALL, oracle_samples=2**12)
    df = gn.measure(prob, estimators, [2], replicates=20)
    assert len(df) == len(estimators) * 8
    assert set(df["param"]) == set(prob.params)
    assert all(p.startswith(("encoder.", "decoder.")) for p in df["param"])
    assert df["variance"].gt(0).all()


@pytest.mark.parametrize("kind, estimator, n, truth_kind", [
    ("gaussian", "reparam", 2, "oracle"), ("gaussian", "reinforce-loo", 4, "oracle"),
    ("gaussian", "iwae", 3, "oracle"),
    ("bernoulli", "reinforce-loo", 4, "enumeration"), ("bernoulli", "reinforce", 2, "enumeration"),
])
def test_unbiased_against_the_truth(kind, estimator, n, truth_kind):
    """|mean - truth| within 4 SE (oracle SE included), Holm-corrected over all coordinates."""
    prob = digits.DigitsVAE(kind, **SMALL, checkpoint="middle", points=2, oracle_samples=2**15)
    est = gn.get_estimator(estimator)
    truth = prob.true_gradient(est.objective(n))
    assert truth.kind == truth_kind
    estimates, _ = replicate_estimates(prob, est, n, 2000, SEED)
    ok, pmin = is_unbiased(estimates, truth)
    assert ok, f"{estimator} on {kind} digits: smallest coordinate p-value {pmin:.2e}"


def test_reinforce_on_the_bernoulli_elbo_detects_a_wrong_truth():
    """Power check: the same test rejects the IWAE-2 truth for an ELBO estimator."""
    prob = digits.DigitsVAE("bernoulli", **SMALL, checkpoint="middle", points=2, oracle_samples=2**15)
    estimates, _ = replicate_estimates(prob, gn.get_estimator("reinforce-loo"), 4, 2000, SEED)
    wrong = prob.true_gradient(gn.Objective("iwae", 8))
    assert wrong.kind == "oracle"
    assert not is_unbiased(estimates, wrong)[0]
