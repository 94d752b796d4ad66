"""gradnoise estimators: Monte Carlo gradient estimators behind one contract, on problems with
known true gradients, and the engine that measures their bias, variance and cost.

>>> import gradnoise as gn
>>> df = gn.measure("gaussian-cos:k=5", ["reinforce", "reinforce-loo", "reparam"], [1, 10, 100])

See :mod:`gradnoise.base` for the contract, :mod:`gradnoise.registry` for names and options,
:mod:`gradnoise.engine` for the measurement.
"""
from .base import (
    EstimatorNotApplicable, GradientEstimator, NonFiniteCostError, Objective, Problem, Truth,
    grad_of, replicate,
)
from .registry import (
    estimator_names, get_estimator, make_problem, parse_spec, problem_names, register_estimator,
    register_problem,
)
from . import score_function, pathwise, importance_weighted  # noqa: F401  (fill the registry)
from . import vimco  # noqa: F401  (fill the registry)
from . import measure_valued, control_variates  # noqa: F401  (fill the registry)
from . import discrete, rebar, unordered_set  # noqa: F401  (fill the registry)
from .baselines import Baseline, LeaveOneOut, MovingAverage, OptimalConstant
from .score_function import ScoreFunction
from .pathwise import Pathwise
from .importance_weighted import DoublyReparameterised, ImportanceWeighted, StickingTheLanding
from .vimco import VIMCO
from .problems import (
    BernoulliProblem, DigitsVAE, ExpectationProblem, LinearGaussianVAE, ModelProblem, StoppedScoreTerm,
)
from .discrete import ARM, DisARM, GumbelRao, GumbelSoftmax, StraightThrough
from .rebar import REBAR, RELAX
from .unordered_set import UnorderedSet
from .engine import COLUMNS, cell_seed, measure, measure_cell, replicate_estimates, summarise_estimates
from .training import TRAIN_COLUMNS, train

__all__ = [
    "Baseline", "COLUMNS", "EstimatorNotApplicable", "ExpectationProblem", "GradientEstimator",
    "ImportanceWeighted", "LeaveOneOut", "LinearGaussianVAE", "ModelProblem", "MovingAverage",
    "NonFiniteCostError", "Objective", "OptimalConstant", "Pathwise", "Problem", "ScoreFunction",
    "Truth", "cell_seed", "estimator_names", "get_estimator", "grad_of", "make_problem", "measure",
    "measure_cell", "parse_spec", "problem_names", "register_estimator", "register_problem",
    "replicate", "replicate_estimates", "summarise_estimates", "TRAIN_COLUMNS", "train",
    "DoublyReparameterised", "StickingTheLanding", "VIMCO", "DigitsVAE",
    "ARM", "DisARM", "GumbelRao", "GumbelSoftmax", "StraightThrough", "BernoulliProblem", "StoppedScoreTerm",
    "REBAR", "RELAX", "UnorderedSet",
]
