r"""Score-function (REINFORCE) estimators, with and without baselines.

.. math::
   \nabla_\phi \mathbb{E}_{q_\phi}[f_\phi(x)]
   = \mathbb{E}_{q_\phi}\big[(f_\phi(x) - b)\,\nabla_\phi \log q_\phi(x)\big]
     + \mathbb{E}_{q_\phi}\big[\nabla_\phi f_\phi(x)\big]

estimated with ``n`` samples :math:`x_i \sim q_\phi` drawn *without* gradient
(``dist.sample``). The second, direct term is zero for a plain expectation; on model problems
(``f = log p(x, z) - log q(z|x)``) it carries the generative gradient :math:`\nabla_\theta \log
p_\theta(x, z)` and :math:`-\nabla_\phi \log q_\phi(z)`, whose mean is zero. The cost is used as a
scalar: no :math:`\nabla_x f` is needed, so these estimators apply to discrete distributions.
The baseline ``b`` is any :class:`gradnoise.baselines.Baseline`; it keeps the estimator unbiased
when it is independent of the sample it multiplies (Williams 1992).
"""
from __future__ import annotations

from .base import Estimate, GradientEstimator, Problem, evaluate_cost, grad_of, sample_detached
from .baselines import Baseline, ControlVariate, LeaveOneOut, MovingAverage, OptimalConstant
from .registry import register_estimator


def _is_zero(value) -> bool:
    """True for the plain number 0 (no baseline): ``f - 0`` is ``f`` bitwise, one pass saved."""
    return isinstance(value, (int, float)) and value == 0


class ScoreFunction(GradientEstimator):
    """REINFORCE composed with an optional baseline; see the module docstring for the maths.

    Cost: ``n`` cost evaluations plus the baseline's extra (pilot) evaluations.
    """

    def __init__(self, baseline: Baseline | None = None, name: str = "reinforce"):
        self.baseline, self.name = baseline, name
        self.min_budget = baseline.min_budget if baseline else 1
        self.amortised_prepare = bool(baseline and baseline.amortised)
        self.init_each_step = bool(baseline and baseline.per_estimate)

    def cost_evals(self, n):
        return n + (self.baseline.extra_evals(n) if self.baseline else 0)

    def amortised_evals(self, n):
        return self.baseline.amortised_evals(n) if self.baseline else 0

    def largest_batch(self, n):
        return self.baseline.largest_batch(n) if self.baseline else n

    def init(self, problem, params, n):
        return self.baseline.init(problem, params, n) if self.baseline else None

    def warmup_steps(self, n):
        return self.baseline.warmup_steps if self.baseline else 0

    def estimate(self, problem: Problem, params, n, state):
        dist = problem.distribution(params)
        x = sample_detached(dist, (n,))           # (n, R, *event), no gradient path
        log_q = dist.log_prob(x)                  # (n, R)
        f = evaluate_cost(problem, x, params)     # (n, R); direct dependence on params kept
        cv = self.baseline.value(state, f.detach()) if self.baseline else ControlVariate()
        weight = f.detach() if _is_zero(cv.per_sample) else f.detach() - cv.per_sample
        # the direct term only where the cost depends on the parameters: adding a tensor without
        # a gradient path changes the surrogate's value, never its gradient (one sample-sized pass)
        surrogate = weight * log_q + f if f.requires_grad else weight * log_q
        g = grad_of(surrogate.mean(0), params, retain_graph=bool(cv.per_coordinate))
        if cv.per_coordinate:
            score = grad_of(log_q.mean(0), params)
            g = {k: g[k] - cv.per_coordinate[k] * score[k] if k in cv.per_coordinate else g[k] for k in g}
        return Estimate(g, self.baseline.update(state, f.detach())) if self.baseline else g


@register_estimator("reinforce")
def reinforce():
    """Score function, no baseline (Williams 1992); unbiased; n evaluations."""
    return ScoreFunction()


@register_estimator("reinforce-ema")
def reinforce_ema(*, beta: float = 0.9, warmup: int = 20):
    """Score function with an exponential-moving-average baseline, warmed up; unbiased; n evaluations."""
    return ScoreFunction(MovingAverage(beta, warmup))


@register_estimator("reinforce-loo")
def reinforce_loo():
    """Score function with the leave-one-out baseline (Kool et al. 2019); unbiased; N >= 2."""
    return ScoreFunction(LeaveOneOut())


@register_estimator("reinforce-optimal")
def reinforce_optimal(*, pilot: int = 0):
    """Score function with the per-coordinate optimal constant baseline from a pilot batch; unbiased; 2n evaluations."""
    return ScoreFunction(OptimalConstant(pilot))
