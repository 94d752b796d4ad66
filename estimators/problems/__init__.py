r"""Problems whose true gradient is known, each labelled with how it is known.

* :mod:`.base`: bring your own, :class:`ExpectationProblem` (a distribution family and a cost)
  and :class:`ModelProblem` (an encoder and a log joint);
* :mod:`.truths`: closed form and enumeration by autograd, oracles with their standard error and
  their disk cache;
* one module per family of built-in problems, each registering its problems by name:
  :mod:`.gaussian`, :mod:`.discrete`, :mod:`.linear_gaussian`, :mod:`.digits` (whose model and
  training live apart, in :mod:`.digits_model` and :mod:`.digits_training`), :mod:`.bayes_logreg`.

A problem declares its parameter groups (``groups``, e.g. ``{"encoder": [...], "decoder":
[...]}``) so that analysis can summarise them together. Adding a problem is one new module here
(imported below, in the order problems are listed).
"""
from .base import ExpectationProblem, ModelProblem, StoppedScoreTerm
from .truths import ORACLE_SAMPLES, autograd_truth, oracle_truth
from . import gaussian  # noqa: F401  (fill the registry, in this order)
from .discrete import BernoulliProblem
from .linear_gaussian import LinearGaussianVAE
from .digits import DigitsVAE
from . import bayes_logreg  # noqa: F401  (fill the registry)

__all__ = ["BernoulliProblem", "DigitsVAE", "ExpectationProblem", "LinearGaussianVAE", "ModelProblem",
           "ORACLE_SAMPLES", "StoppedScoreTerm", "autograd_truth", "oracle_truth"]
