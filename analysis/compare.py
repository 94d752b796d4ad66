r"""Compare asv results of two commits (or two results folders): ratios, intervals, tests, verdicts.

Results are read with asv's own API (:mod:`asv.results`, :mod:`asv.config`): a commit is looked
up with ``asv.results.get_result_hash_from_prefix`` under the ``results_dir`` of
``asv.conf.json``; a folder is read with ``asv.results.iter_results`` (it must hold the results
of one commit), a single file with ``asv.results.Results.load``. One row per benchmark x
parameter combination (x asv environment) present on both sides.

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

Multiple testing: the p-values of all rows are adjusted with Benjamini-Hochberg
(``scipy.stats.false_discovery_control``), controlling the false discovery rate at ``alpha``
(default 0.05). Verdict: ``regressed`` if the adjusted p-value is below ``alpha`` and the ratio
exceeds ``factor`` (default 1.0: significance alone), ``improved`` if below ``alpha`` and the ratio
is under 1/``factor``, else ``unchanged``. Rows whose samples were not recorded (no
``--record-samples``) or that have fewer than two samples a side cannot be tested: their p-value
is NaN and the verdict uses asv's stored 99% intervals (``stats_ci_99_a/b``) instead:
non-overlapping intervals and a ratio beyond ``factor`` give a verdict (``test`` says
``ci-overlap``). Benchmarks that failed on one side are reported with verdict ``failed``.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
from dataclasses import dataclass

import numpy as np
import pandas as pd
from asv import config as asv_config
from asv import results as asv_results
from asv import util as asv_util
from asv_runner.statistics import quantile_ci
from scipy import stats

ALPHA = 0.05
LEVEL = 0.95
COMPARE_COLUMNS = [
    "benchmark", "params", "env", "kind", "before", "before_ci_low", "before_ci_high",
    "after", "after_ci_low", "after_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high",
    "n_before", "n_after", "test", "p_value", "p_adjusted", "verdict",
]


@dataclass(frozen=True)
class Side:
    """The asv results of one side: a label and its ``asv.results.Results`` objects."""

    label: str
    results: tuple


def _git_commit(name: str, repo: str) -> str | None:
    """Full hash of a commit name (branch, tag, ``HEAD~1``, prefix) via git, or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                             cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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


def _load_folder(path: str) -> list:
    if os.path.isfile(path):
        try:
            return [asv_results.Results.load(path)]
        except (asv_util.UserError, KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path} is not an asv results file ({err})") from None
    # a results folder (machine sub-folders with machine.json), or a machine folder itself
    return list(asv_results.iter_results(path))


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
    machines = sorted(d for d in os.listdir(results_dir) if os.path.isfile(os.path.join(results_dir, d, "machine.json")))
    if machine is not None:
        if machine not in machines:
            raise ValueError(f"no asv results for machine {machine!r} in {results_dir} (machines: {', '.join(machines) or 'none'})")
        machines = [machine]
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
    found = list(asv_results.iter_results_for_machine_and_hash(results_dir, m, h))
    return Side(f"{spec} ({h[:8]} on {m})", tuple(found))


def tidy_results(side: Side) -> pd.DataFrame:
    """One row per benchmark x parameter combination x env: value, samples and asv's 99% CI."""
    rows = []
    for res in side.results:
        for key in res.get_all_result_keys():
            params = res.get_result_params(key)
            values = res.get_result_value(key, params)
            samples = res.get_result_samples(key, params)
            stats_ = res.get_result_stats(key, params)
            combos = list(itertools.product(*params)) if params else [()]
            for combo, value, samp, st in zip(combos, values, samples, stats_):
                rows.append({
                    "benchmark": key, "params": ", ".join(combo), "env": res.env_name,
                    "value": np.nan if value is None else float(value),
                    "samples": None if samp is None else [float(s) for s in samp],
                    "ci_99_a": np.nan if not st else float(st.get("ci_99_a", np.nan)),
                    "ci_99_b": np.nan if not st else float(st.get("ci_99_b", np.nan)),
                })
    return pd.DataFrame(rows, columns=["benchmark", "params", "env", "value", "samples", "ci_99_a", "ci_99_b"])


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
    p = float(stats.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    ratio = mb / ma if ma != 0 else np.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        rlo = rhi = ratio
    else:
        boot = stats.bootstrap((b, a), lambda y, x: np.median(y) / np.median(x), confidence_level=level,
                               method="percentile", n_resamples=2000, vectorized=False,
                               rng=np.random.default_rng(seed))
        rlo, rhi = boot.confidence_interval
    out.update(test="mann-whitney", p_value=p, before=ma, before_ci_low=la_, before_ci_high=ha,
               after=mb, after_ci_low=lb_, after_ci_high=hb, ratio=ratio, ratio_ci_low=rlo, ratio_ci_high=rhi)
    return out


def compare_results(before: pd.DataFrame, after: pd.DataFrame, *, alpha: float = ALPHA, factor: float = 1.0,
                    level: float = LEVEL) -> pd.DataFrame:
    """Compare two :func:`tidy_results` frames; see the module docstring for tests and verdicts."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    merged = before.merge(after, on=["benchmark", "params", "env"], suffixes=("_b", "_a"))
    rows = []
    for r in merged.itertuples(index=False):
        kind = benchmark_kind(r.benchmark)
        row = {"benchmark": r.benchmark, "params": r.params, "env": r.env, "kind": kind}
        sb, sa = r.samples_b, r.samples_a
        if np.isnan(r.value_b) or np.isnan(r.value_a):
            row.update(before=r.value_b, after=r.value_a, test="none", p_value=np.nan, verdict="failed")
        elif sb is not None and sa is not None and len(sb) >= 2 and len(sa) >= 2:
            row.update(compare_pair(sb, sa, kind, level=level))
        else:
            row.update(before=r.value_b, before_ci_low=r.ci_99_a_b, before_ci_high=r.ci_99_b_b,
                       after=r.value_a, after_ci_low=r.ci_99_a_a, after_ci_high=r.ci_99_b_a,
                       ratio=r.value_a / r.value_b if r.value_b else np.nan, test="ci-overlap", p_value=np.nan,
                       n_before=len(sb or []), n_after=len(sa or []))
        rows.append(row)
    df = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    tested = df["p_value"].notna()
    df["p_adjusted"] = np.nan
    if tested.any():
        df.loc[tested, "p_adjusted"] = stats.false_discovery_control(df.loc[tested, "p_value"].to_numpy(float), method="bh")
    verdicts = []
    for _, r in df.iterrows():
        if r["verdict"] == "failed":
            verdicts.append("failed")
            continue
        if r["test"] == "ci-overlap":
            significant = bool(r["after_ci_low"] > r["before_ci_high"] or r["after_ci_high"] < r["before_ci_low"])
        else:
            significant = bool(r["p_adjusted"] < alpha)
        if significant and r["ratio"] > factor:
            verdicts.append("regressed")
        elif significant and r["ratio"] < 1 / factor:
            verdicts.append("improved")
        else:
            verdicts.append("unchanged")
    df["verdict"] = verdicts
    return df


def compare(before: str, after: str, *, results_dir: str | None = None, machine: str | None = None,
            alpha: float = ALPHA, factor: float = 1.0, level: float = LEVEL, repo: str = ".") -> pd.DataFrame:
    """Load both sides (:func:`load_side`) and compare them (:func:`compare_results`)."""
    b = tidy_results(load_side(before, results_dir=results_dir, machine=machine, repo=repo))
    a = tidy_results(load_side(after, results_dir=results_dir, machine=machine, repo=repo))
    df = compare_results(b, a, alpha=alpha, factor=factor, level=level)
    if df.empty:
        raise ValueError(f"{before} and {after} have no benchmark (and environment) in common")
    return df


def run_compare(args: argparse.Namespace) -> int:
    results_dir = args.results_dir or (results_dir_from_config(args.config) if args.config else None)
    df = compare(args.before, args.after, results_dir=results_dir, machine=args.machine, alpha=args.alpha,
                 factor=args.factor, level=args.level)
    from estimators.io import atomic_write_csv

    atomic_write_csv(df, args.out)
    counts = df["verdict"].value_counts()
    print(f"wrote {len(df)} comparisons to {args.out}: "
          + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("regressed", "improved", "unchanged", "failed"))
          + f" (Benjamini-Hochberg FDR {args.alpha:g})")
    for r in df[df["verdict"].isin(["regressed", "improved"])].itertuples():
        print(f"  {r.verdict:9s} {r.benchmark}({r.params}) ratio {r.ratio:.3g} "
              f"[{r.ratio_ci_low:.3g}, {r.ratio_ci_high:.3g}] p_adj={r.p_adjusted:.2g}")
    return 1 if args.fail_on_regression and (df["verdict"] == "regressed").any() else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare asv results of two commits or results folders, with tests and verdicts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One row per benchmark x parameters: before, after, ratio (after/before; lower is\n"
        "better), their intervals, a p-value (timings and memory: Mann-Whitney U on the samples;\n"
        "track_* quantities such as variance: Welch t-test on log batch estimates) and a verdict\n"
        "improved / regressed / unchanged at Benjamini-Hochberg FDR ALPHA. Samples must have been\n"
        "stored (`asv run --record-samples`); without them asv's 99%% intervals are compared.",
        epilog="examples:\n"
        "  gradnoise compare HEAD~1 HEAD --out comparison.csv          # commits, via asv.conf.json\n"
        "  gradnoise compare main HEAD --machine mybox --fail-on-regression --out cmp.csv\n"
        "  gradnoise compare old_results/ new_results/ --out cmp.csv     # results folders of one commit\n"
        "  gradnoise compare .asv/results/mybox/1a2b3c4d-virtualenv-py3.11.json \\\n"
        "      .asv/results/mybox/5e6f7a8b-virtualenv-py3.11.json --out cmp.csv",
    )
    p.add_argument("before", metavar="BEFORE", help="commit (anything git resolves, or a hash prefix), results folder or file")
    p.add_argument("after", metavar="AFTER", help="the same, for the new side")
    p.add_argument("--out", default="comparison.csv", help="output CSV (default: %(default)s)")
    p.add_argument("--config", default=None, help="asv config to find results_dir (default: ./asv.conf.json)")
    p.add_argument("--results-dir", default=None, help="asv results folder (default: results_dir of the config)")
    p.add_argument("--machine", default=None, help="asv machine name (default: the only one with results)")
    p.add_argument("--alpha", type=float, default=ALPHA, help="false discovery rate for verdicts (default: %(default)s)")
    p.add_argument("--factor", type=float, default=1.0,
                   help="also require ratio > FACTOR (or < 1/FACTOR) for a verdict (default: %(default)s)")
    p.add_argument("--level", type=float, default=LEVEL, help="confidence level of the intervals (default: %(default)s)")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 if anything regressed")
    p.set_defaults(func=run_compare)
