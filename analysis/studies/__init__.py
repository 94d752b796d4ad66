r"""``gradnoise study``: reproducible studies of published claims about gradient estimators.

Each study is one module here, registered with :func:`~gradnoise.analysis.studies.base.study`; the steps
every study shares live in :mod:`.base`, the command line in :mod:`.cli`. Adding a study is one
new module, imported below.
"""
from .base import Config, Outcome, get_study, run_study, study, study_names
from . import vae_vs_reinforce, iwae_snr, no_single_winner, measure_valued, discrete_estimators  # noqa: F401,E501
from . import toy_training, discrete_training  # noqa: F401

__all__ = ["Config", "Outcome", "get_study", "run_study", "study", "study_names"]
