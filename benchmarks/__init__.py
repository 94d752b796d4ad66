"""asv benchmarks of gradnoise: runtime, peak memory and gradient quality, per estimator and budget.

One class per question (scipy style):

* :mod:`benchmarks.timing`   -- seconds for one gradient estimate at budget N, and for one full
  variance measurement of R replicates (``time_*``);
* :mod:`benchmarks.memory`   -- peak resident memory of a variance measurement at a large R x N
  (``peakmem_*``);
* :mod:`benchmarks.quality`  -- variance, MSE, bias beyond chance and inverse SNR of the N-sample estimate
  (``track_*``, one class per :data:`benchmarks.common.TRACKS` entry), each returned as several
  independent batch estimates so that asv stores a median
  with a confidence interval and ``asv compare``/``asv continuous`` can test significance.

The grids are: a fixed list of fast problems (:data:`benchmarks.common.PROBLEMS`) x every
estimator registered in the installed package x budgets N, as one asv parameter ``cell`` that
lists only the combinations the installed commit can run (:data:`benchmarks.common.CELLS`,
labelled ``"problem, estimator, N"``); those an estimator cannot run (pathwise on
``bernoulli-toy``, leave-one-out at N=1, IWAE on a plain expectation) are not benchmarked, so
asv starts no process for them. Only the installed package is imported (``import gradnoise``);
see docs/benchmarks.md.
"""
