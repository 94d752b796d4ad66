"""gradnoise analysis: runs the engine over grids and turns its rows into fits, figures and reports.

Sweeps, the report and the studies call the measurement engine (:mod:`gradnoise.engine`) over
grids of cells; fits, plots and comparisons read the rows it writes (and asv's results). No
estimator maths lives here. The ``gradnoise`` command line lives in :mod:`gradnoise.analysis.cli`.
"""
