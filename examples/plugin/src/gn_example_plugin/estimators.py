r"""``reinforce-split``: REINFORCE with a split-half baseline.

The N samples are cut into two halves, :math:`A = \{1..h\}` and :math:`B = \{h+1..N\}` with
:math:`h = \lfloor N/2 \rfloor`; each sample's baseline is the mean cost of the *other* half:

.. math::
   \hat g = \frac1N \Big[\sum_{i\in A} (f_i - \bar f_B)\,\nabla\log q(x_i)
                      + \sum_{i\in B} (f_i - \bar f_A)\,\nabla\log q(x_i)\Big].

**Unbiased.** For :math:`i \in A`, :math:`\bar f_B` is a function of the samples of B only, which
are independent of :math:`x_i`, so
:math:`\mathbb E[\bar f_B \nabla\log q(x_i)] = \mathbb E[\bar f_B]\,\mathbb E[\nabla\log q(x_i)] = 0`
(the score has mean zero: :math:`\int \nabla q = \nabla \int q = 0`); the same holds for B. What is
left is plain REINFORCE's :math:`\frac1N\sum_i f_i\nabla\log q(x_i)`, unbiased (Williams 1992).
This is the leave-one-out baseline (Kool et al. 2019) with a coarser fold: each baseline averages
N/2 costs instead of N-1, so its variance is higher, and it needs N >= 2. N cost evaluations.
"""
from __future__ import annotations

import torch

from gradnoise import ScoreFunction, register_estimator
from gradnoise.baselines import Baseline, ControlVariate


class SplitHalf(Baseline):
    """Each half's baseline is the other half's mean cost; stateless; ``f`` of shape ``(N, R)``."""

    min_budget = 2

    def value(self, state, f):
        h = f.shape[0] // 2
        first, second = f[:h].mean(0, keepdim=True), f[h:].mean(0, keepdim=True)     # (1, R) each
        return ControlVariate(per_sample=torch.cat([second.expand(h, -1), first.expand(f.shape[0] - h, -1)]))


@register_estimator("reinforce-split")
def reinforce_split():
    """Score function with a split-half baseline (each half's is the other half's mean cost); unbiased; N >= 2."""
    return ScoreFunction(SplitHalf(), name="reinforce-split")
