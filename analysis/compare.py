r"""Compare asv results of two commits (or two results folders): ratios, intervals, tests, verdicts.

Results are read with asv's own API (:mod:`asv.results`, :mod:`asv.config`): a commit is looked
up with ``asv.results.get_result_hash_from_prefix`` under the ``results_dir`` of
``asv.conf.json``; a folder is read with ``asv.results.iter_results`` (it must hold the results
of one commit), a single file with ``asv.results.Results.load``. One row per benchmark x cell
(x asv environment). A cell is matched on its label (:func:`cell_label`: asv's parameter string
without quotes), so the grid benchmarks' one ``cell`` parameter (``'gaussian-cos, reinforce,
10'``) meets the problem x estimator x N product it replaced (``'gaussian-cos', 'reinforce', 10``).

The test suits the quantity (asv treats lower as better for all of them):

* ``time_*``, ``peakmem_*``, ``mem_*`` (timings, memory; samples are repeated measurements with a
  skewed, outlier-prone noise): ``before``/``after`` are medians with the distribution-free
  order-statistic interval of asv (``asv_runner.statistics.quantile_ci``); ``ratio`` is
  after/before with a percentile bootstrap interval (``scipy.stats.bootstrap``, resampling each
  side); the p-value is the two-sided **Mann-Whitney U** test (``scipy.stats.mannwhitneyu``).
* ``track_*`` (quality: variance, MSE, |bias z|, ...; each sample is an independent batch
  estimate of a positive quantity, as ``{"samples": [...], "number": 1}`` stores them):
  compared on the log scale, where a variance estimate is close to normal (the large-sample form
  of the F-test on variances, applied to batch estimates): ``before``/``after`` are geometric
  means with t intervals, ``ratio`` = exp(mean log after - mean log before) with the **Welch
  t-test** (``scipy.stats.ttest_ind(equal_var=False)``) interval and two-sided p-value.
  A doubled variance gives a ratio of 2.

  A quantity that is 0 on a side (``track_bias_excess`` of an unbiased estimator) is compared
  like a timing (medians, Mann-Whitney); its ratio is infinite when it leaves 0.

Multiple testing: the p-values of all rows are adjusted with Benjamini-Hochberg
(``scipy.stats.false_discovery_control``), controlling the false discovery rate at ``alpha``
(default 0.05). Verdict: ``regressed`` if the adjusted p-value is below ``alpha`` and the ratio
exceeds the row's ``factor``, ``improved`` if below ``alpha`` and the ratio is under 1/``factor``,
else ``unchanged``. Significance alone is not enough: timings on a shared machine shift by tens
of percent between runs of the same code, a shift the test resolves. The default factor of a
benchmark is 1 + its ``regressions_thresholds`` entry in ``asv.conf.json`` (the largest
``re.match``-ing key, as ``asv publish`` does; :data:`DEFAULT_THRESHOLDS` without a config),
so ``compare`` and ``asv publish`` flag the same size of change; ``--factor`` sets one factor
for all. Rows whose samples were not recorded (no ``--record-samples``) but rest on at least two
samples a side have a NaN p-value, and the verdict uses asv's stored 99% intervals
(``stats_ci_99_a/b``) instead: non-overlapping intervals and a ratio beyond the factor give a
verdict (``test`` says ``ci-overlap``, ``reason`` says why). Peak memory (``peakmem_*``), which asv
stores as one plain value a run and which is all but deterministic, is judged by the factor alone
(``test`` says ``factor``), as ``asv compare`` judges it. Other rows with fewer than two samples
a side (``asv run --quick`` times a benchmark once; asv's interval is then infinite) or one plain
value without samples or stats cannot be tested at all: their verdict is ``untestable``, with
the ratio, and ``reason`` says why and whether the ratio is beyond the factor.
A side that is exactly 0 (a zero-variance estimator's variance) is compared on medians
(Mann-Whitney); ``reason`` says which side is 0.

Cells asv skipped (``NotImplementedError`` in ``setup``: the estimator does not apply; stored as
NaN) are ``skipped``, as are cells benchmarked on one side only (a benchmark or parameter added
or removed) and, as ``asv compare`` does, cells whose benchmark code differs between the sides
(asv's benchmark version). The exception is a benchmark whose parameters changed shape (a
different number of parameters; its code had to change with them): its cells are compared on
their labels, and ``reason`` says so. Cells that asv recorded as failed (stored as null: the benchmark raised another
error, timed out, or its ``setup_cache`` or build failed) on either side are ``failed``; the
``reason`` column says which side. asv does not store the error message in its results files:
its log of the run has it.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from asv import config as asv_config
from asv import results as asv_results
from asv import util as asv_util
from asv_runner.statistics import quantile_ci
from scipy import stats

from gradnoise.io import atomic_write_markdown, fmt, fmt_ci, markdown_table

ALPHA = 0.05
LEVEL = 0.95
COMPARE_COLUMNS = [
    "benchmark", "cell", "env", "kind", "before", "before_ci_low", "before_ci_high",
    "after", "after_ci_low", "after_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high",
    "n_before", "n_after", "test", "p_value", "p_adjusted", "verdict", "family", "factor", "reason",
]
VERDICTS = ("regressed", "improved", "unchanged", "untestable", "skipped", "failed")
#: Verdicts of cells that were not judged (no test ran, or none could).
NOT_JUDGED = ("untestable", "skipped", "failed")
FAMILY_ORDER = {"time": 0, "memory": 1, "variance": 2, "MSE": 3, "bias": 4, "1/SNR": 5}
#: How ``reason`` begins for a cell compared across a change of its benchmark's parameters.
BRIDGED = "compared on the cell label"
#: ``regressions_thresholds`` used when there is no ``asv.conf.json`` (the project's values).
DEFAULT_THRESHOLDS = {r".*\.time_": 1.0, r".*\.peakmem_": 0.2, r".*\.track_": 0.35, r".*\.track_bias_excess": 1.0}


@dataclass(frozen=True)
class Side:
    """The asv results of one side: a label and its ``asv.results.Results`` objects."""

    label: str
    results: tuple


def asv_machines(results_dir: str, machine: str | None = None) -> list[str]:
    """The machines with asv results under ``results_dir`` (only ``machine`` when given, which
    must be one of them: a one-line ``ValueError`` otherwise)."""
    if not os.path.isdir(results_dir):
        raise ValueError(f"no asv results folder {results_dir}")
    machines = sorted(d for d in os.listdir(results_dir) if os.path.isfile(os.path.join(results_dir, d, "machine.json")))
    if machine is not None:
        if machine not in machines:
            raise ValueError(f"no asv results for machine {machine!r} in {results_dir} (machines: {', '.join(machines) or 'none'})")
        return [machine]
    return machines


def _git_commit(name: str, repo: str) -> str | None:
    """Full hash of a commit name (branch, tag, ``HEAD~1``, prefix) via git, or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                             cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


#: the random streams of commits before ``gradnoise.engine.RANDOM_STREAMS`` existed
OLD_STREAMS = "cell-1 (one stream a cell, chunks by memory)"


def random_streams(commit: str, repo: str = ".") -> str | None:
    """``gradnoise.engine.RANDOM_STREAMS`` at ``commit`` (read from git, as the commit has it):
    which random numbers its cells draw; :data:`OLD_STREAMS` before it existed; None where git
    cannot show the commit's engine (not a commit of this repository)."""
    try:
        out = subprocess.run(["git", "show", f"{commit}:estimators/engine.py"], cwd=repo, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    found = re.search(r'^RANDOM_STREAMS = "([^"]+)"', out.stdout, re.M)
    return found.group(1) if found else OLD_STREAMS


def streams_note(before: str | None, after: str | None) -> str:
    """One sentence when the two sides draw other random numbers, else ``""``."""
    if before is None or after is None or before == after:
        return ""
    return (f"The random streams changed between the sides ({before} -> {after}): every quality track drew "
            f"other random numbers, so their values moved by chance alone; a verdict on them tests the "
            f"estimators, as before, but no value is bitwise comparable.")


def thresholds_from_config(config: str | None) -> dict[str, float]:
    """``regressions_thresholds`` of an asv config (default ``./asv.conf.json``), else the defaults."""
    path = config or "asv.conf.json"
    if not os.path.isfile(path):
        if config:
            raise FileNotFoundError(f"no such asv config: {config}")
        return dict(DEFAULT_THRESHOLDS)
    try:
        conf = asv_config.Config.load(path)
    except asv_util.UserError as err:
        raise ValueError(f"cannot read asv config {path}: {err}") from None
    return {k: float(v) for k, v in (conf.regressions_thresholds or {}).items()}


def threshold_for(name: str, thresholds: dict[str, float]) -> float:
    """asv's rule (``asv.plugins.regressions``): the largest threshold whose key ``re.match``-es."""
    hits = [v for k, v in thresholds.items() if re.match(k, name)]
    return max(hits) if hits else 0.05


def results_dir_from_config(config: str | None) -> str:
    """``results_dir`` of an asv config file (relative paths resolved against its folder)."""
    path = config or "asv.conf.json"
    if not os.path.isfile(path):
        if config:
            raise FileNotFoundError(f"no such asv config: {config}")
        return os.path.abspath(os.path.join(".asv", "results"))
    try:
        conf = asv_config.Config.load(path)
    except asv_util.UserError as err:
        raise ValueError(f"cannot read asv config {path}: {err}") from None
    return os.path.join(os.path.dirname(os.path.abspath(path)), conf.results_dir)


def load_results_file(path: str, machine: str | None = None):
    """``asv.results.Results.load(path)``, or a one-line ``ValueError`` naming the file (a truncated
    or corrupted file, which ``asv.results.iter_results`` would skip with only a log warning)."""
    try:
        return asv_results.Results.load(path, machine_name=machine)
    except (asv_util.UserError, KeyError, ValueError, TypeError, IndexError, OSError) as err:
        raise ValueError(f"{path} is not a readable asv results file ({err})") from None


def _load_folder(path: str) -> list:
    if os.path.isfile(path):
        return [load_results_file(path)]
    # a results folder (machine sub-folders with machine.json), or a machine folder itself
    return [load_results_file(os.path.join(root, name), machine)
            for root, name, machine in asv_results.iter_results_paths(path)]


def load_side(spec: str, *, results_dir: str | None = None, machine: str | None = None,
              repo: str = ".") -> Side:
    """Resolve ``spec`` (a results file, a results folder of one commit, or a commit) to results.

    A commit may be anything git resolves (``HEAD~1``, a branch, a hash) or a hash prefix with
    results; it is looked up under ``results_dir`` (default: that of ``asv.conf.json``, else
    ``.asv/results``) for ``machine`` (default: the only machine with results for it).
    """
    if os.path.exists(spec):
        found = _load_folder(spec)
        if not found:
            raise ValueError(f"no asv results found in {spec}")
        commits = sorted({r.commit_hash for r in found})
        if len(commits) > 1:
            raise ValueError(f"{spec} holds results of {len(commits)} commits ({', '.join(c[:8] for c in commits)}); "
                             "give a commit instead, with --results-dir")
        return Side(spec, tuple(found))
    results_dir = results_dir or results_dir_from_config(None)
    if not os.path.isdir(results_dir):
        raise ValueError(f"unknown commit or path {spec!r}: no such file, and no asv results folder {results_dir}")
    machines = asv_machines(results_dir, machine)
    full = _git_commit(spec, repo)
    candidates = [c for c in (full, spec) if c]
    hits = {}
    for m in machines:
        for c in candidates:
            try:
                h = asv_results.get_result_hash_from_prefix(results_dir, m, c)
            except asv_util.UserError as err:
                raise ValueError(f"ambiguous commit {spec!r}: {err}") from None
            if h:
                hits[m] = h
                break
    if not hits:
        raise ValueError(f"unknown commit {spec!r}: no asv results for it in {results_dir}"
                         + ("" if full else " (and git does not know it)"))
    if len(hits) > 1:
        raise ValueError(f"commit {spec!r} has results on machines {', '.join(sorted(hits))}; choose one with --machine")
    (m, h), = hits.items()
    # asv's iter_results_for_machine_and_hash, but a broken file is named, not skipped
    found = [load_results_file(os.path.join(root, name), machine_name)
             for root, name, machine_name in asv_results.iter_results_paths(os.path.join(results_dir, m))
             if name.split("-")[0] == h]
    return Side(f"{spec} ({h[:8]} on {m})", tuple(found))


def tidy_results(side: Side) -> pd.DataFrame:
    """One row per benchmark x parameter combination x env: value, samples and asv's 99% CI.

    ``cell`` is the combination's :func:`cell_label`, ``axes`` the benchmark's number of
    parameters, ``n`` the number of samples behind ``value``: the stored samples, else asv's
    ``stats["repeat"]`` (``asv run --quick`` takes one), else 1 (a plain value with no samples and
    no interval, as asv stores ``peakmem_*``). ``status`` is ``ok``, ``skipped`` (asv stored NaN: ``NotImplementedError`` in
    ``setup``) or ``failed`` (asv stored null: an error, a timeout, or a failed ``setup_cache`` or
    build).
    """
    rows = []
    for res in side.results:
        for key in res.get_all_result_keys():
            params = res.get_result_params(key)
            values = res.get_result_value(key, params)
            samples = res.get_result_samples(key, params)
            stats_ = res.get_result_stats(key, params)
            combos = list(itertools.product(*params)) if params else [()]
            for combo, value, samp, st in zip(combos, values, samples, stats_):
                status = "failed" if value is None else "skipped" if value != value else "ok"
                rows.append({
                    "benchmark": key, "cell": cell_label(", ".join(combo)), "axes": len(params),
                    "env": res.env_name, "status": status,
                    "version": res.benchmark_version.get(key),
                    "value": np.nan if value is None else float(value),
                    "samples": None if samp is None else [float(s) for s in samp],
                    "n": len(samp) if samp is not None else int(st.get("repeat") or 1) if st else 1,
                    "ci_99_a": np.nan if not st else float(st.get("ci_99_a", np.nan)),
                    "ci_99_b": np.nan if not st else float(st.get("ci_99_b", np.nan)),
                })
    return pd.DataFrame(rows, columns=["benchmark", "cell", "axes", "env", "status", "version", "value", "samples",
                                       "n", "ci_99_a", "ci_99_b"])


def benchmark_kind(name: str) -> str:
    """``time``, ``memory``, ``track`` or ``other`` from the benchmark's method name."""
    method = name.rsplit(".", 1)[-1]
    if method.startswith("time_"):
        return "time"
    if method.startswith(("peakmem_", "mem_")):
        return "memory"
    if method.startswith("track_"):
        return "track"
    return "other"


def benchmark_family(name: str) -> str:
    """What a benchmark measures: ``time``, ``memory``, ``variance``, ``MSE``, ``bias``, ``1/SNR``."""
    method = name.rsplit(".", 1)[-1]
    for prefix, family in (("time_", "time"), ("peakmem_", "memory"), ("mem_", "memory"),
                           ("track_variance", "variance"), ("track_mse", "MSE"), ("track_bias", "bias"),
                           ("track_inverse_snr", "1/SNR"), ("track_", "track")):
        if method.startswith(prefix):
            return family
    return "other"


def _median_ci(x, level):
    m, (lo, hi) = quantile_ci(sorted(x), 0.5, alpha_min=1 - level)
    return m, lo, hi


def compare_pair(before, after, kind: str, *, level: float = LEVEL, seed: int = 0) -> dict:
    """Estimates, intervals and the p-value for one benchmark's ``before`` and ``after`` samples."""
    a = np.asarray(before, dtype=float)
    b = np.asarray(after, dtype=float)
    out = {"n_before": a.size, "n_after": b.size}
    if kind == "track" and np.all(a > 0) and np.all(b > 0):
        la, lb = np.log(a), np.log(b)
        q = lambda x: stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)  # noqa: E731
        if np.all(la == la[0]) and np.all(lb == lb[0]):  # no noise at all: only equality is testable
            p = 1.0 if la[0] == lb[0] else 0.0
            lo = hi = lb[0] - la[0]
        else:
            t = stats.ttest_ind(lb, la, equal_var=False)
            p = float(t.pvalue)
            lo, hi = t.confidence_interval(confidence_level=level)
        d = lb.mean() - la.mean()
        out.update(test="welch-t-log", p_value=p,
                   before=np.exp(la.mean()), before_ci_low=np.exp(la.mean() - q(la)), before_ci_high=np.exp(la.mean() + q(la)),
                   after=np.exp(lb.mean()), after_ci_low=np.exp(lb.mean() - q(lb)), after_ci_high=np.exp(lb.mean() + q(lb)),
                   ratio=np.exp(d), ratio_ci_low=np.exp(lo), ratio_ci_high=np.exp(hi))
        return out
    ma, la_, ha = _median_ci(a, level)
    mb, lb_, hb = _median_ci(b, level)
    if np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]:
        p = 1.0                        # the same constant on both sides (e.g. no bias beyond chance)
    else:
        p = float(stats.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    ratio = mb / ma if ma != 0 else (1.0 if mb == 0 else np.inf)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        rlo = rhi = ratio
    elif ma == 0:                      # leaving (or staying at) zero: no finite interval for a ratio
        rlo = rhi = np.nan
    else:
        with np.errstate(divide="ignore", invalid="ignore"):   # resamples whose median is 0
            boot = stats.bootstrap((b, a), lambda y, x: np.median(y) / np.median(x), confidence_level=level,
                                   method="percentile", n_resamples=2000, vectorized=False,
                                   rng=np.random.default_rng(seed))
        rlo, rhi = boot.confidence_interval
    out.update(test="mann-whitney", p_value=p, before=ma, before_ci_low=la_, before_ci_high=ha,
               after=mb, after_ci_low=lb_, after_ci_high=hb, ratio=ratio, ratio_ci_low=rlo, ratio_ci_high=rhi)
    return out


def _bridged(r) -> str:
    """The ``reason`` of a cell compared across a change of its benchmark's parameters, else ``""``."""
    if r.axes_b == r.axes_a:
        return ""
    return f"{BRIDGED} across a change of the benchmark's parameters ({int(r.axes_b)} -> {int(r.axes_a)})"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _zero_note(before: float, after: float) -> str:
    """The ``reason`` of a quantity that is exactly 0 on a side (a zero-variance estimator), else ``""``."""
    if before == 0 and after == 0:
        return "exactly 0 before and after"
    if before == 0 or after == 0:
        return f"exactly 0 {'before' if before == 0 else 'after'}: the ratio is {'infinite' if before == 0 else '0'}"
    return ""


def _untestable_reason(n_before: int, n_after: int, plain: bool, ratio: float, factor: float) -> str:
    """Why a cell could not be tested (``plain``: asv stored one value a side, without samples or
    stats), with where its ratio lies against the factor."""
    if plain:
        why = "one value a side, no samples and no interval (asv stores only the value, as for peakmem_*)"
    else:
        plural = lambda n: f"{n} sample" + ("" if n == 1 else "s")  # noqa: E731
        why = (f"{plural(n_before)} before and {n_after} after (asv run --quick takes one): too few to test"
               if min(n_before, n_after) < 2 else "no finite 99% interval on a side: nothing to test with")
    if not np.isfinite(ratio) or ratio > factor or ratio < 1 / factor:
        where = f"the ratio {fmt(ratio)} is beyond the factor {factor:g}, untested"
    else:
        where = f"the ratio {fmt(ratio)} is within the factor {factor:g}"
    return f"{why}; {where}"


def compare_results(before: pd.DataFrame, after: pd.DataFrame, *, alpha: float = ALPHA, factor: float | None = None,
                    level: float = LEVEL, thresholds: dict[str, float] | None = None) -> pd.DataFrame:
    """Compare two :func:`tidy_results` frames; see the module docstring for tests and verdicts.

    ``factor`` None gives each row the factor 1 + its threshold in ``thresholds`` (default
    :data:`DEFAULT_THRESHOLDS`); a number sets it for every row.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if factor is not None and factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    merged = before.merge(after, on=["benchmark", "cell", "env"], suffixes=("_b", "_a"), how="outer",
                          indicator="side")
    rows = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for r in merged.itertuples(index=False):
            kind = benchmark_kind(r.benchmark)
            row = {"benchmark": r.benchmark, "cell": r.cell, "env": r.env, "kind": kind,
                   "family": benchmark_family(r.benchmark),
                   "factor": factor if factor is not None else 1.0 + threshold_for(r.benchmark, thresholds),
                   "reason": ""}
            sb, sa = r.samples_b, r.samples_a
            if r.side != "both":            # merge indicator: benchmarked on one side only
                side = "before" if r.side == "left_only" else "after"
                row.update(before=r.value_b, after=r.value_a, test="none", p_value=np.nan, verdict="skipped",
                           reason=f"benchmarked {side} only (added or removed)")
            elif (r.version_b is not None and r.version_a is not None and r.version_b != r.version_a
                  and r.axes_b == r.axes_a):
                methods = [v for v in (r.version_b, r.version_a) if str(v).startswith("interval method:")]
                why = (f"the interval method changed ({r.version_b} -> {r.version_a}): not comparable" if methods
                       else "the benchmark's code changed between the sides (asv version differs): not comparable")
                row.update(before=r.value_b, after=r.value_a, test="none", p_value=np.nan, verdict="skipped",
                           reason=why)
            elif "failed" in (r.status_b, r.status_a):
                sides = [s for s, st in (("before", r.status_b), ("after", r.status_a)) if st == "failed"]
                row.update(before=r.value_b, after=r.value_a, test="none", p_value=np.nan, verdict="failed",
                           reason=f"failed {' and '.join(sides)} (asv stored no value; its log has the error)")
            elif "skipped" in (r.status_b, r.status_a):
                sides = [s for s, st in (("before", r.status_b), ("after", r.status_a)) if st == "skipped"]
                row.update(before=r.value_b, after=r.value_a, test="none", p_value=np.nan, verdict="skipped",
                           reason=f"skipped {' and '.join(sides)} (NotImplementedError in setup: does not apply)")
            elif not all(np.isfinite(np.asarray([v for v in (r.value_b, r.value_a, *(sb or ()), *(sa or ()))
                                                 if v is not None], dtype=float))):
                ratio = r.value_a / r.value_b if r.value_b else np.nan
                row.update(before=r.value_b, after=r.value_a, ratio=ratio, test="none", p_value=np.nan,
                           verdict="untestable", n_before=int(r.n_b), n_after=int(r.n_a),
                           reason=_join("a non-finite value (inf or NaN) on a side: nothing to test with", _bridged(r)))
            elif sb is not None and sa is not None and len(sb) >= 2 and len(sa) >= 2:
                row.update(compare_pair(sb, sa, kind, level=level))
                row["reason"] = _join(_bridged(r), _zero_note(row["before"], row["after"]))
            else:
                ratio = r.value_a / r.value_b if r.value_b else (1.0 if r.value_a == 0 else np.inf)
                row.update(before=r.value_b, after=r.value_a, ratio=ratio, p_value=np.nan,
                           n_before=int(r.n_b), n_after=int(r.n_a))
                intervals = (r.ci_99_a_b, r.ci_99_b_b, r.ci_99_a_a, r.ci_99_b_a)
                # one value a side with neither samples nor stats (asv's peakmem_*, a plain track value)
                plain = sb is None and sa is None and bool(np.all(np.isnan(intervals)))
                if plain and kind == "memory":
                    # peak memory is one number a run (asv stores no samples for peakmem_*), all but
                    # deterministic (0.93-1.09 between runs of the same code): judged by the factor
                    # alone, as asv compare judges it
                    row.update(test="factor", reason=_join("one value a side (asv stores peak memory without "
                                                           "samples): judged by the factor alone, as asv compare does",
                                                           _bridged(r), _zero_note(r.value_b, r.value_a)))
                elif r.n_b >= 2 and r.n_a >= 2 and np.all(np.isfinite(intervals)):
                    row.update(before_ci_low=r.ci_99_a_b, before_ci_high=r.ci_99_b_b, after_ci_low=r.ci_99_a_a,
                               after_ci_high=r.ci_99_b_a, test="ci-overlap",
                               reason=_join("samples not recorded (asv run without --record-samples): "
                                            "asv's 99% intervals compared", _bridged(r),
                                            _zero_note(r.value_b, r.value_a)))
                else:
                    row.update(test="none", verdict="untestable",
                               reason=_join(_untestable_reason(r.n_b, r.n_a, plain, ratio, row["factor"]),
                                            _bridged(r)))
            rows.append(row)
    df = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    tested = df["p_value"].notna()
    df["p_adjusted"] = np.nan
    if tested.any():
        df.loc[tested, "p_adjusted"] = stats.false_discovery_control(df.loc[tested, "p_value"].to_numpy(float), method="bh")
    verdicts = []
    for _, r in df.iterrows():
        if r["verdict"] in NOT_JUDGED:
            verdicts.append(r["verdict"])
            continue
        if r["test"] == "factor":
            significant = True
        elif r["test"] == "ci-overlap":
            significant = bool(r["after_ci_low"] > r["before_ci_high"] or r["after_ci_high"] < r["before_ci_low"])
        else:
            significant = bool(r["p_adjusted"] < alpha)
        if significant and r["ratio"] > r["factor"]:
            verdicts.append("regressed")
        elif significant and r["ratio"] < 1 / r["factor"]:
            verdicts.append("improved")
        else:
            verdicts.append("unchanged")
    df["verdict"] = verdicts
    return df.sort_values(["benchmark", "cell", "env"], kind="stable").reset_index(drop=True)


def compare(before: str, after: str, *, results_dir: str | None = None, machine: str | None = None,
            alpha: float = ALPHA, factor: float | None = None, level: float = LEVEL, repo: str = ".",
            thresholds: dict[str, float] | None = None) -> pd.DataFrame:
    """Load both sides (:func:`load_side`) and compare them (:func:`compare_results`); where the
    sides' commits draw other random streams (:func:`random_streams`), ``df.attrs["streams_note"]``
    says so."""
    sides = [load_side(spec, results_dir=results_dir, machine=machine, repo=repo) for spec in (before, after)]
    b, a = (tidy_results(side) for side in sides)
    common = b.merge(a, on=["benchmark", "cell", "env"])
    if common.empty:
        raise ValueError(f"{before} and {after} have no benchmark (and environment) in common")
    df = compare_results(b, a, alpha=alpha, factor=factor, level=level, thresholds=thresholds)
    streams = [random_streams(side.results[0].commit_hash, repo) if side.results else None for side in sides]
    df.attrs["streams_note"] = streams_note(*streams)
    return df


def verdict_counts(df: pd.DataFrame) -> dict[str, int]:
    """``{verdict: rows}`` for every verdict in :data:`VERDICTS`, zeros included."""
    counts = df["verdict"].value_counts()
    return {v: int(counts.get(v, 0)) for v in VERDICTS}


def cell_label(params: str) -> str:
    """A cell's label, asv's parameter string without quotes: ``'gaussian-cos', 'reinforce', 10``
    (three parameters) and ``'gaussian-cos, reinforce, 10'`` (one) are both ``gaussian-cos, reinforce, 10``."""
    return str(params).replace("'", "")


def short_name(benchmark: str) -> str:
    """The method name of a benchmark (``quality.TrackVariance.track_variance`` -> ``track_variance``)."""
    return benchmark.rsplit(".", 1)[-1]


def _with_interval(v, lo, hi) -> str:
    if lo is None or hi is None or np.isnan(lo) or np.isnan(hi):
        return fmt(v)
    return fmt_ci(v, lo, hi, bound_digits=2)


def _table(header: list[str], rows: list[list[str]]) -> str:
    return markdown_table(pd.DataFrame(rows, columns=header))


def changed_rows(df: pd.DataFrame, verdict: str) -> pd.DataFrame:
    """Rows with ``verdict``, largest effect (``|log ratio|``) first."""
    sub = df[df["verdict"] == verdict].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        sub["_effect"] = np.abs(np.log(sub["ratio"].astype(float)))
    return sub.sort_values("_effect", ascending=False, kind="stable").drop(columns="_effect")


def factor_summary(df: pd.DataFrame) -> str:
    """``time 2, memory 1.2, ...``: the factor each family was judged with."""
    tested = df[~df["verdict"].isin(NOT_JUDGED)]
    parts = []
    groups = sorted(tested.groupby("family", sort=False), key=lambda fg: FAMILY_ORDER.get(fg[0], len(FAMILY_ORDER)))
    for fam, g in groups:
        fs = sorted(set(g["factor"].round(6)))
        parts.append(f"{fam} {'/'.join(f'{f:g}' for f in fs)}")
    return ", ".join(parts) or "none (no cell was judged)"


def comparison_markdown(df: pd.DataFrame, before: str, after: str, *, alpha: float = ALPHA, level: float = LEVEL,
                        figure: str | None = None) -> str:
    """The report of one change: counts first, then what regressed and improved, failures, skips."""
    counts = verdict_counts(df)
    short = lambda name: name[:8] if re.fullmatch(r"[0-9a-f]{40}", name) else name  # noqa: E731
    lines = [f"# Benchmarks: {short(after)} vs {short(before)}", "",
             "**" + " · ".join(f"{counts[v]} {v}" for v in VERDICTS) + "**", "",
             f"Verdicts at Benjamini-Hochberg FDR {alpha:g} over {int(df['p_value'].notna().sum())} tests, and a "
             f"ratio (after / before; lower is better) beyond the family's factor: {factor_summary(df)}. "
             f"Intervals {level:.0%}."]
    if df.attrs.get("streams_note"):
        lines += ["", df.attrs["streams_note"]]
    bridged = int(df["reason"].str.startswith(BRIDGED).sum())
    if bridged:
        lines += ["", f"{bridged} cells were compared across a change of their benchmark's parameters (asv's "
                  "benchmark versions differ): matched on the cell label, which reads the same on both sides."]
    header = ["benchmark", "cell", "before", "after", "ratio", "p adj."]
    for verdict in ("regressed", "improved"):
        sub = changed_rows(df, verdict)
        if sub.empty:
            continue
        lines += ["", f"## {verdict.capitalize()} ({len(sub)})", "",
                  _table(header, [[f"`{short_name(r.benchmark)}`", r.cell,
                                   _with_interval(r.before, r.before_ci_low, r.before_ci_high),
                                   _with_interval(r.after, r.after_ci_low, r.after_ci_high),
                                   _with_interval(r.ratio, r.ratio_ci_low, r.ratio_ci_high),
                                   "–" if np.isnan(r.p_adjusted) else f"{r.p_adjusted:.2g}" + (
                                       "" if r.test != "ci-overlap" else " (99% intervals apart)")]
                                  for r in sub.itertuples()])]
    untestable = changed_rows(df, "untestable")
    if len(untestable):
        beyond = int(untestable["reason"].str.contains("beyond the factor").sum())
        lines += ["", f"## Untestable ({len(untestable)})", "",
                  f"Too few samples to test (one a side: `asv run --quick`, or a value stored without samples or "
                  f"interval); not counted as unchanged. With a ratio beyond their factor: {beyond}. Largest "
                  "ratios first; rerun both sides with `asv run --record-samples` (no `--quick`) to test them.", "",
                  _table(["benchmark", "cell", "before", "after", "ratio", "why"],
                         [[f"`{short_name(r.benchmark)}`", r.cell, fmt(r.before), fmt(r.after), fmt(r.ratio),
                           r.reason] for r in untestable.itertuples()])]
    failed = df[df["verdict"] == "failed"]
    if len(failed):
        lines += ["", f"## Failed ({len(failed)})", "",
                  _table(["benchmark", "cell", "why"],
                         [[f"`{short_name(r.benchmark)}`", r.cell, r.reason] for r in failed.itertuples()])]
    skipped = df[df["verdict"] == "skipped"]
    if len(skipped):
        lines += ["", f"## Skipped ({len(skipped)})", ""]
        for reason, g in skipped.groupby("reason", sort=True):
            per = g.groupby("benchmark").size()
            lines.append(f"- {reason}: {len(g)} cells (" + ", ".join(f"`{short_name(b)}` {n}" for b, n in per.items()) + ")")
    if figure:
        lines += ["", f"![ratios with their intervals, by family]({figure})"]
    lines += ["", "Method: timings and memory: medians with order-statistic intervals, ratio with a bootstrap "
              "interval, Mann-Whitney U; quality tracks: geometric means of batch estimates, Welch t-test on "
              "the log scale, or Mann-Whitney U where a side is 0 (the bias excess of an unbiased estimator); see "
              "`gradnoise compare --help`. Untestable: too few samples a side for any test. Skipped: the "
              "estimator does not apply to the cell."]
    return "\n".join(lines) + "\n"


def forest_plot(df: pd.DataFrame, *, level: float = LEVEL, max_changed: int = 15, unchanged: int = 3):
    """Ratios (after / before) with their intervals on a log axis, one panel per family.

    Each panel shows the family's regressed and improved cells (the ``max_changed`` largest
    effects), its ``unchanged`` largest unchanged effects (grey), so that a pull request shows
    both what moved and how far the rest moved by chance, and its untestable cells with the
    ``max_changed`` largest ratios (hollow orange, no interval: too few samples to test); the
    band is the family's factor, the line 1 = no change. An infinite ratio (0 -> positive) is
    drawn as a triangle at the right edge, a ratio of 0 (positive -> 0) at the left edge.
    Returns the matplotlib ``Figure``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    colours = {"regressed": "#d62728", "improved": "#2ca02c", "unchanged": "#7f7f7f", "untestable": "#ff7f0e"}
    tested = df[df["verdict"].isin(colours) & df["ratio"].astype(float).notna()]
    panels = []
    for fam, g in tested.groupby("family", sort=False):
        changed = pd.concat([changed_rows(g, "regressed"), changed_rows(g, "improved")]).head(max_changed)
        panels.append((fam, pd.concat([changed, changed_rows(g, "unchanged").head(unchanged),
                                       changed_rows(g, "untestable").head(max_changed)])))
    panels.sort(key=lambda p: FAMILY_ORDER.get(p[0], len(FAMILY_ORDER)))
    if not panels:
        fig, ax = plt.subplots(figsize=(8, 1.5))
        ax.text(0.5, 0.5, "nothing to compare: every cell skipped or failed", ha="center", va="center")
        ax.set_axis_off()
        return fig
    heights = [max(len(p[1]), 1) * 0.28 + 0.7 for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.5, sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (fam, g) in zip(axes[:, 0], panels):
        ratios = g["ratio"].astype(float).to_numpy()
        lo = g["ratio_ci_low"].astype(float).to_numpy()
        hi = g["ratio_ci_high"].astype(float).to_numpy()
        finite = np.concatenate([x[np.isfinite(x) & (x > 0)] for x in (ratios, lo, hi)])
        f = float(g["factor"].max())
        logs = np.log10(np.concatenate([finite, [1 / f, f]]))
        low, high = min(logs.min(), -np.log10(3)), max(logs.max(), np.log10(3))
        margin = 0.08 * (high - low)
        left, right = 10 ** (low - margin), 10 ** (high + margin)
        span = high - low
        y = np.arange(len(g))[::-1]
        ax.axvspan(1 / f, f, color="#dddddd", alpha=0.6, lw=0, label=f"factor {f:g}")
        ax.axvline(1, color="black", lw=0.8)
        for yi, r, l_, h_, v in zip(y, ratios, lo, hi, g["verdict"]):
            c = colours[v]
            hollow = {"markerfacecolor": "none"} if v == "untestable" else {}
            if np.isinf(r) or r == 0:
                edge = right / 1.15 if r > 0 else left * 1.15
                ax.plot([edge], [yi], marker=">" if r > 0 else "<", color=c, ms=8, ls="none", **hollow)
                ax.annotate("0 → >0" if r > 0 else ">0 → 0", (edge, yi), xytext=(-10 if r > 0 else 10, 0),
                            textcoords="offset points", ha="right" if r > 0 else "left", va="center", fontsize=8,
                            color=c)
                continue
            if np.isfinite(l_) and np.isfinite(h_) and l_ > 0:
                ax.plot([max(l_, left), min(h_, right)], [yi, yi], color=c, lw=2, solid_capstyle="butt")
            ax.plot([min(max(r, left), right)], [yi], marker="o", color=c, ms=5, ls="none", **hollow)
        ax.set_xscale("log")
        ax.set_xlim(left, right)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.7, len(g) - 0.3)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{c}" + ("" if len(set(g["benchmark"])) == 1 else f" ({short_name(b)})")
                            for c, b in zip(g["cell"], g["benchmark"])], fontsize=8)
        ax.set_title(f"{fam}: " + ", ".join(f"`{short_name(b)}`" for b in dict.fromkeys(g["benchmark"])).replace("`", ""),
                     fontsize=10, loc="left")
        ax.grid(True, axis="x", which="major", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    axes[-1, 0].set_xlabel(f"ratio after / before (log scale; > 1 is worse), with its {level:.0%} interval\n"
                           "red: regressed, green: improved, grey: unchanged (largest effects), hollow orange: "
                           "untestable (too few samples; ratio only); shaded: the factor")
    fig.tight_layout()
    return fig


def write_comparison(df: pd.DataFrame, out_dir: str, before: str, after: str, *, alpha: float = ALPHA,
                     level: float = LEVEL) -> dict[str, str]:
    """``comparison.csv``, ``comparison.md`` and ``comparison.png`` in ``out_dir``; returns their paths."""
    from gradnoise.io import atomic_write_csv

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out-dir {out_dir} is a file, not a folder")
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"comparison.{k}") for k in ("csv", "md", "png")}
    atomic_write_csv(df, paths["csv"])
    fig = forest_plot(df, level=level)
    fig.savefig(paths["png"], dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = comparison_markdown(df, before, after, alpha=alpha, level=level, figure="comparison.png")
    atomic_write_markdown(paths["md"], text, "gradnoise compare")
    return paths


def comparison_outputs(out_dir: str | None, out: str | None):
    """Before comparing: :func:`gradnoise.io.claim_outputs` of ``out_dir``'s ``comparison.*`` (returned;
    None without ``out_dir``) and :func:`gradnoise.io.claim_file` of the CSV ``out``."""
    from gradnoise.io import Columns, Figure, Markdown, claim_file, claim_outputs

    table = Columns(("benchmark", "cell", "verdict", "ratio"), "a gradnoise comparison CSV")
    if out:
        claim_file("gradnoise compare", out, table)
    return claim_outputs("gradnoise compare", out_dir, {
        "comparison.csv": table, "comparison.md": Markdown(r"^# Benchmarks: "), "comparison.png": Figure(),
    }) if out_dir else None


def run_compare(args: argparse.Namespace) -> int:
    from gradnoise.io import atomic_write_csv

    results_dir = args.results_dir or (results_dir_from_config(args.config) if args.config else None)
    if args.out_dir is None and args.out is None:
        args.out = "comparison.csv"
    if args.out and os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a folder; give a CSV file (or use --out-dir)")
    if args.out_dir and os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise ValueError(f"--out-dir {args.out_dir} is a file, not a folder")
    claim = comparison_outputs(args.out_dir, args.out)
    df = compare(args.before, args.after, results_dir=results_dir, machine=args.machine, alpha=args.alpha,
                 factor=args.factor, level=args.level, thresholds=thresholds_from_config(args.config), repo=args.repo)
    written = []
    if args.out_dir:
        paths = write_comparison(df, args.out_dir, args.before, args.after, alpha=args.alpha, level=args.level)
        written += list(paths.values())
    if args.out:
        atomic_write_csv(df, args.out)
        written.append(args.out)
    if claim is not None:
        claim.record()
    counts = verdict_counts(df)
    print(", ".join(f"{counts[v]} {v}" for v in VERDICTS)
          + f" (Benjamini-Hochberg FDR {args.alpha:g}; factors: {factor_summary(df)})")
    if df.attrs.get("streams_note"):
        print(f"  {df.attrs['streams_note']}")
    for verdict in ("regressed", "improved"):
        for r in changed_rows(df, verdict).itertuples():
            print(f"  {r.verdict:9s} {r.benchmark}({r.cell}) ratio {_with_interval(r.ratio, r.ratio_ci_low, r.ratio_ci_high)}"
                  f" p_adj={fmt(r.p_adjusted, 2)}")
    beyond = changed_rows(df, "untestable")
    beyond = beyond[beyond["reason"].str.contains("beyond the factor")]
    for r in beyond.head(10).itertuples():
        print(f"  untestable {r.benchmark}({r.cell}) ratio {fmt(r.ratio)} ({r.n_before} and {r.n_after} samples)")
    if len(beyond) > 10:
        print(f"  ... and {len(beyond) - 10} more untestable cells beyond their factor")
    for r in df[df["verdict"] == "failed"].itertuples():
        print(f"  failed    {r.benchmark}({r.cell}): {r.reason}")
    print("wrote " + ", ".join(written))
    if counts["untestable"] and (args.fail_on_regression or args.fail_on_untestable):
        print(f"{'--fail-on-untestable' if args.fail_on_untestable else '--fail-on-regression'}: "
              f"{counts['untestable']} cells could not be tested (too few samples a side), {len(beyond)} of them "
              "with a ratio beyond their factor" + ("; they fail" if args.fail_on_untestable else
                                                   "; not a failure without --fail-on-untestable"))
    failing = (args.fail_on_regression and counts["regressed"]) or (args.fail_on_untestable and counts["untestable"])
    return 1 if failing else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare asv results of two commits or results folders, with tests and verdicts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One row per benchmark x parameters: before, after, ratio (after/before; lower is\n"
        "better), their intervals, a p-value (timings and memory: Mann-Whitney U on the samples;\n"
        "track_* quantities such as variance: Welch t-test on log batch estimates) and a verdict\n"
        "regressed / improved / unchanged at Benjamini-Hochberg FDR ALPHA and a ratio beyond the\n"
        "benchmark's factor (default: 1 + its regressions_thresholds entry in asv.conf.json, so\n"
        "timing noise on a shared machine is not a regression), untestable (fewer than two samples\n"
        "a side, as `asv run --quick` stores: the ratio and the reason only), skipped (asv skipped\n"
        "it: the estimator does not apply) or failed (asv recorded an error). Samples must have been\n"
        "stored (`asv run --record-samples`); without them asv's 99% intervals are compared.\n"
        "--out-dir writes comparison.csv, comparison.md (for a pull request) and comparison.png.",
        epilog="examples:\n"
        "  gradnoise compare HEAD~1 HEAD --out-dir cmp                # commits, via asv.conf.json\n"
        "  gradnoise compare main HEAD --machine mybox --fail-on-regression --out-dir cmp\n"
        "  gradnoise compare old_results/ new_results/ --out cmp.csv     # results folders of one commit\n"
        "  gradnoise compare .asv/results/mybox/1a2b3c4d-virtualenv-py3.11.json \\\n"
        "      .asv/results/mybox/5e6f7a8b-virtualenv-py3.11.json --out cmp.csv",
    )
    p.add_argument("before", metavar="BEFORE", help="commit (anything git resolves, or a hash prefix), results folder or file")
    p.add_argument("after", metavar="AFTER", help="the same, for the new side")
    p.add_argument("--out", default=None, help="output CSV (default: comparison.csv unless --out-dir is given)")
    p.add_argument("--out-dir", default=None, help="folder for comparison.csv, comparison.md and comparison.png")
    p.add_argument("--config", default=None, help="asv config to find results_dir and thresholds (default: ./asv.conf.json)")
    p.add_argument("--results-dir", default=None, help="asv results folder (default: results_dir of the config)")
    p.add_argument("--machine", default=None, help="asv machine name (default: the only one with results)")
    p.add_argument("--repo", default=".", help="git repository that resolves commit names (default: the current folder)")
    p.add_argument("--alpha", type=float, default=ALPHA, help="false discovery rate for verdicts (default: %(default)s)")
    p.add_argument("--factor", type=float, default=None,
                   help="require ratio > FACTOR (or < 1/FACTOR) for a verdict, for every benchmark "
                   "(default: per family, 1 + the config's regressions_thresholds)")
    p.add_argument("--level", type=float, default=LEVEL, help="confidence level of the intervals (default: %(default)s)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 if anything regressed (and say how many cells could not be tested)")
    p.add_argument("--fail-on-untestable", action="store_true",
                   help="exit 1 if any cell had too few samples to test (e.g. `asv run --quick` results)")
    p.set_defaults(func=run_compare)
