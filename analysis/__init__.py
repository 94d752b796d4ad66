"""gradnoise analysis: turns measurement results into tables, fits, plots and reports.

It only reads results (CSV written by ``gradnoise sweep``, asv results); it holds no estimator
maths. The ``gradnoise`` command line lives in :mod:`analysis.cli`.
"""
