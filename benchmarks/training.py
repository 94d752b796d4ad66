r"""Training quality: what each estimator does to a small fixed training run (lower is better).

``track_train_gap`` returns ``{"samples": [...], "number": 1}``: per seed, the final objective of
a run of :data:`STEPS` Adam steps at :data:`EVALS_PER_STEP` cost evaluations per step (each
estimator its N: :func:`gradnoise.training.budget_for_evals`), minus the problem's optimum: the
*gap*, a positive number that a noisier or biased estimator makes larger. The seeds are
independent runs (one seed group of :data:`SEEDS`, one vectorised pass, the stream derived from
the run like the engine's cells), so the samples are what :mod:`benchmarks.quality`'s batches
are: ``gradnoise compare`` tests a change on the log scale (Welch), and a doubled gap is a
ratio of 2. The objective is exact (enumeration, closed form), so the only noise is the runs'.

Optima, derived by hand:

* ``bernoulli-toy:t=0.45``: :math:`\mathbb{E}[(b - t)^2] = \sigma(\theta)(1-t)^2 + (1-\sigma(\theta))t^2`
  decreases to :math:`t^2 = 0.2025` as :math:`\theta \to -\infty` (:math:`t < 1/2`).
* ``linear-gaussian-vae``: the negative ELBO is
  :math:`\tfrac12(\|m-\mu\|^2 + \|x-m\|^2) + D s^2 + D\log 2\pi - \tfrac D2\log(2\pi e s^2)` with
  :math:`m = Ax + b` (:class:`gradnoise.LinearGaussianVAE`), smallest at :math:`m = \mu = x`:
  :math:`D s^2 + D\log 2\pi - \tfrac D2\log(2\pi e s^2)`, :math:`s^2 = 2/3`.

Cells: every registered estimator that applies to the problem and can spend exactly
:data:`EVALS_PER_STEP` evaluations per estimate (new estimators join by themselves). In a commit
without :func:`gradnoise.train` the benchmark is skipped (``NotImplementedError``).
"""
from __future__ import annotations

import math

import gradnoise
from .common import label_of, one_thread, problem

STEPS = 200
SEEDS = 10
EVALS_PER_STEP = 4
SEED = 0
VAE_D = 5
#: problem -> (learning rate, optimum of its objective)
PROBLEMS = {
    "bernoulli-toy:t=0.45": (0.1, 0.45**2),
    f"linear-gaussian-vae:d={VAE_D},perturbation=0.5": (
        0.02, VAE_D * 2 / 3 + VAE_D * math.log(2 * math.pi) - 0.5 * VAE_D * math.log(2 * math.pi * math.e * 2 / 3)),
}


def _runs() -> dict[str, tuple[str, str]]:
    """``{label: (problem, estimator)}`` for the runs that can go ahead in the installed commit."""
    if not hasattr(gradnoise, "train"):
        return {}
    from gradnoise.training import budget_for_evals

    out = {}
    for spec in PROBLEMS:
        prob = problem(spec)
        for name in gradnoise.estimator_names():
            estimator = gradnoise.get_estimator(name)
            try:
                estimator.check(prob, budget_for_evals(prob, estimator, EVALS_PER_STEP))
            except ValueError:        # not applicable (EstimatorNotApplicable), or no N spends exactly B
                continue
            out[label_of(spec, name)] = (spec, name)
    return out


RUNS = _runs()


def final_gaps(spec: str, name: str) -> list[float] | dict:
    """The final objective minus the optimum, one per seed, or ``{"error": what}``."""
    lr, optimum = PROBLEMS[spec]
    try:
        df = gradnoise.train(problem(spec), name, evals_per_step=EVALS_PER_STEP, steps=STEPS, lr=lr, seeds=SEEDS,
                             seed=SEED, seed_group=SEEDS, eval_every=STEPS, objective=gradnoise.Objective())
    except Exception as err:   # reported by this run's benchmark, not by every run's
        return {"error": f"{type(err).__name__}: {err}"}
    final = df[df["step"] == STEPS].sort_values("seed")
    return [float(v) - optimum for v in final["objective"]]


class TrackTrainGap:
    """Final objective minus the optimum after a small fixed training run, one sample per seed."""

    params = [list(RUNS) or ["none"]]
    param_names = ["run"]
    unit = "objective gap"

    def setup_cache(self):
        one_thread()
        return {label: final_gaps(*key) for label, key in RUNS.items()}

    setup_cache.timeout = 600

    def setup(self, cache, label):
        one_thread()
        if label not in cache:
            raise NotImplementedError("gradnoise.train is not in this commit")
        self.gaps = cache[label]
        if isinstance(self.gaps, dict):
            raise RuntimeError(f"{label}: {self.gaps['error']}")

    def track_train_gap(self, cache, label):
        return {"samples": self.gaps, "number": 1}
