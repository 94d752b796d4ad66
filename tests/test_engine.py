"""The engine: reproducible from a seed, per-cell random streams, vectorised, tidy output."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import gradnoise as gn
from gradnoise.engine import COLUMNS, cell_seed, replicate_estimates

STAT_COLUMNS = [c for c in COLUMNS if c != "seconds_per_estimate"]


def _measure(estimators, budgets, seed=3):
    return gn.measure(["gaussian-cos", "linear-gaussian-vae:d=3"], estimators, budgets,
                      replicates=50, seed=seed, on_invalid="skip")


def test_columns_and_tidy_rows():
    df = _measure(["reinforce", "reparam"], [2, 5])
    assert list(df.columns) == COLUMNS
    assert len(df) == (2 + 3) * 2 * 2        # params x estimators x budgets
    assert set(df.truth_kind) == {"closed-form"}
    assert not df[STAT_COLUMNS].isna().any().any()


def test_same_seed_same_numbers_bitwise():
    a, b = _measure(["reinforce-loo", "iwae"], [4]), _measure(["reinforce-loo", "iwae"], [4])
    pd.testing.assert_frame_equal(a[STAT_COLUMNS], b[STAT_COLUMNS], check_exact=True)
    c = _measure(["reinforce-loo", "iwae"], [4], seed=4)
    assert not c["mean"].equals(a["mean"])


def test_adding_cells_does_not_change_other_cells():
    small = _measure(["reinforce"], [4])
    big = _measure(["reparam", "reinforce", "reinforce-ema"], [2, 4, 8])
    keys = ["problem", "estimator", "param", "budget"]
    merged = small.merge(big, on=keys, suffixes=("", "_big"))
    assert len(merged) == len(small)
    for col in ["mean", "variance", "mse"]:
        assert (merged[col] == merged[col + "_big"]).all(), col


def test_blocks_bound_memory_and_stay_reproducible():
    """R=10^4, N=10^3 on a scalar problem is split into blocks of at most 2**22 elements."""
    from gradnoise.engine import BLOCK_ELEMENTS, block_size

    prob = gn.make_problem("gaussian-quadratic")
    est = gn.get_estimator("reparam")
    step = block_size(prob, est, 1000)
    assert step < 10_000 and 1000 * step * (1 + 2) <= BLOCK_ELEMENTS
    a, _ = replicate_estimates(prob, est, 10, 64, 0, max_elements=10 * 3 * 8)
    b, _ = replicate_estimates(prob, est, 10, 64, 0)
    assert a["loc"].shape == (64,) and torch.equal(a["loc"], b["loc"])


def test_cell_seed_is_stable_and_distinct():
    assert cell_seed(0, "p", "e", 10) == cell_seed(0, "p", "e", 10)
    assert len({cell_seed(0, "p", "e", n) for n in range(100)}) == 100
    assert 0 <= cell_seed(-1, "p", "e", 1) < 2**63


def test_caller_random_state_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    gn.measure("gaussian-cos", "reinforce", 4, replicates=10)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("event", [(), (3,), (2, 5)])
def test_sample_detached_is_sample_bitwise(dtype, event):
    """The score function's draw skips torch.normal's per-sample scale check by drawing through
    ``rsample`` (estimators/base.py): the same numbers as ``sample`` for the same seed, at sample
    counts on and off torch's 16-wide Box-Muller blocks, and plain ``sample`` for other families."""
    from torch.distributions import Bernoulli, Independent, Normal
    from gradnoise.base import sample_detached

    loc = torch.randn(7, *event, dtype=dtype, requires_grad=True)   # as the replicated leaves are
    scale = (torch.rand(7, *event, dtype=dtype) + 0.1).requires_grad_()
    dists = [Normal(loc, scale)] + ([Independent(Normal(loc, scale), len(event))] if event else [])
    dists.append(Bernoulli(logits=loc))
    for dist in dists:
        for n in (1, 2, 16, 33):
            torch.manual_seed(n)
            expected = dist.sample((n,))
            torch.manual_seed(n)
            got = sample_detached(dist, (n,))
            assert torch.equal(got, expected) and not got.requires_grad
