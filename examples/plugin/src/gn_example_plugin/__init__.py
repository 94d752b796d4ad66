"""An example gradnoise plugin (docs/plugins.md): ``reinforce-split`` (estimators.py),
``exponential-quadratic`` (problems.py) and the study ``split-baseline`` (studies.py).

Each module imports only ``gradnoise``, so each also works alone as ``--plugin path/to/module.py``.
"""
