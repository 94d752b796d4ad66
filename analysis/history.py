r"""The history of benchmark quantities over a range of commits, and the commits where they stepped.

``gradnoise history [RANGE] --out-dir DIR`` reads the asv results of each commit through asv's
API (:mod:`asv.results`) and writes

* ``history.csv``: one row per commit x benchmark x cell x asv environment (a cell is matched
  across commits on its label, :func:`~gradnoise.analysis.compare.cell_label`, whatever the
  benchmark's parameter layout at each commit):
  ``commit, date, subject, env, benchmark, cell, status, value, ci_low, ci_high, samples``.
  ``value`` is what asv stores (the median of the samples), ``ci_low``/``ci_high`` asv's 99%
  interval of it, ``samples`` the number of samples behind it (the stored samples, else asv's
  ``stats["repeat"]``; empty where asv stores one plain value by design, as for ``peakmem_*``);
  ``status`` is ``ok``, ``skipped`` (asv: the benchmark does not apply), ``failed`` (asv stored no
  value), ``missing`` (the commit has no results: a gap in the range) or ``unreadable`` (its
  results file is truncated or corrupted; asv's own readers skip such a file with a log warning).
* ``history.md``: the steps, largest first, each named with the commit's hash and subject line,
  then the single-sample points, then the gaps, then the figures.
* one PNG per benchmark with a step: the value over commits with its interval, one line per
  cell that stepped; the step commits are marked and labelled. A gap (missing, failed or
  unreadable commit) is shaded and labelled on the axis; the line joins the commits on either
  side of it. Single-sample points are hollow.

Single-sample points (``samples`` = 1: ``asv run --quick`` times a benchmark once, and one cold
sample runs several times above a full run's median) are left out of step detection by default,
as if missing, and counted in the report; ``include_single`` (``--include-quick``) includes them.

Steps are found as ``asv publish`` finds them: :func:`asv.step_detect.detect_steps` fits a
piecewise-constant function to the series (missing points left out, each point weighted by the
inverse width of its interval, ``asv._stats.get_weight``), and
:func:`asv.step_detect.detect_regressions` keeps the upward steps whose relative size exceeds
the benchmark's ``regressions_thresholds`` entry (and its segments' own noise). Improvements are
the same rule applied to the reversed series (a downward step read backwards is upward), so a
quantity that got better and one that got worse are judged alike. The commit named is the first
one with the new level.

Commits: RANGE is anything ``git rev-list`` takes (``main~10..main``, ``v1..v2``, a branch for
its whole history), listed oldest first; commits in it without results are gaps. Without RANGE,
every commit with results for the machine, in git's topological order (commits git does not
know, e.g. from a deleted branch, follow in the order of their dates).
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import warnings

import numpy as np
import pandas as pd
from asv import _stats as asv_stats
from asv import results as asv_results
from asv import step_detect

from gradnoise.io import atomic_write_csv, atomic_write_markdown, fmt

from .compare import (asv_machines, benchmark_family, cell_label, load_results_file, random_streams,
                      results_dir_from_config, short_name, threshold_for, thresholds_from_config)
from .sweep import check_output_dir

HISTORY_COLUMNS = ["commit", "date", "subject", "env", "benchmark", "cell", "status", "value", "ci_low", "ci_high",
                   "samples"]
STEP_COLUMNS = ["benchmark", "cell", "env", "direction", "commit", "subject", "previous_commit", "before", "after",
                "ratio"]
#: Families plotted and reported by default (``--bench`` selects any benchmark).
TRACKED_FAMILIES = ("variance", "MSE", "bias", "1/SNR")


def _git(repo: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _machines(results_dir: str, machine: str | None) -> str:
    machines = asv_machines(results_dir, machine)
    if len(machines) != 1:
        raise ValueError(f"{results_dir} has results of {len(machines)} machines ({', '.join(machines) or 'none'}); "
                         "choose one with --machine")
    return machines[0]


def commits_in_order(results: dict[str, list], repo: str, range_spec: str | None) -> list[str]:
    """Full hashes to show, oldest first (see the module docstring)."""
    if range_spec:
        listed = _git(repo, "rev-list", "--reverse", "--topo-order", *range_spec.split())
        if listed is None:
            raise ValueError(f"git cannot list the range {range_spec!r} in {os.path.abspath(repo)}")
        commits = listed.split()
        if not commits:
            raise ValueError(f"the range {range_spec!r} has no commits")
        return commits
    known = _git(repo, "rev-list", "--reverse", "--topo-order", "--all") or ""
    order = {c: i for i, c in enumerate(known.split())}
    in_git = sorted((c for c in results if c in order), key=order.get)
    others = sorted((c for c in results if c not in order),
                    key=lambda c: min((r.date or 0 for r in results[c]), default=0))
    return in_git + others


def load_history(range_spec: str | None = None, *, results_dir: str | None = None, machine: str | None = None,
                 repo: str = ".", bench: str | None = None) -> pd.DataFrame:
    """The tidy history (``HISTORY_COLUMNS``) of the selected benchmarks over the commits.

    ``bench`` is a regular expression searched in the full benchmark name (default: the tracked
    quality families, :data:`TRACKED_FAMILIES`). A results file that cannot be read makes its
    commit's cells ``unreadable``; ``history.attrs["unreadable"]`` maps such a commit to
    ``"path (error)"``.
    """
    results_dir = results_dir or results_dir_from_config(None)
    machine = _machines(results_dir, machine)
    by_commit: dict[str, list] = {}
    unreadable: dict[str, str] = {}      # commit (full hash where git knows it) -> "path (error)"
    for root, name, machine_name in asv_results.iter_results_paths(os.path.join(results_dir, machine)):
        try:
            res = load_results_file(os.path.join(root, name), machine_name)
        except ValueError as err:
            prefix = name.split("-")[0]
            full = (_git(repo, "rev-parse", "--verify", "--quiet", f"{prefix}^{{commit}}") or "").strip() or prefix
            unreadable[full] = str(err)
            continue
        by_commit.setdefault(res.commit_hash, []).append(res)
    if not by_commit and not unreadable:
        raise ValueError(f"no asv results for machine {machine!r} in {results_dir}")
    try:
        pattern = re.compile(bench) if bench else None
    except re.error as err:
        raise ValueError(f"--bench {bench!r} is not a regular expression: {err}") from None

    def selected(name: str) -> bool:
        return bool(pattern.search(name)) if pattern else benchmark_family(name) in TRACKED_FAMILIES

    rows, cells = [], {}
    methods: dict[str, str] = {}         # commit -> the interval method its bias track names
    commits = commits_in_order({**{c: [] for c in unreadable}, **by_commit}, repo, range_spec)
    # a range lists full hashes; an unreadable file whose commit git did not resolve is a prefix
    unreadable = {next((c for c in commits if c.startswith(k)), k): v for k, v in unreadable.items()}
    for commit in commits:
        for res in by_commit.get(commit, []):
            for key in sorted(res.get_all_result_keys()):
                if not selected(key):
                    continue
                version = str(res.benchmark_version.get(key) or "")
                if version.startswith("interval method:"):
                    methods[commit] = version.split(":", 1)[1].strip()
                params = res.get_result_params(key)
                values = res.get_result_value(key, params)
                stats_ = res.get_result_stats(key, params)
                samples = res.get_result_samples(key, params)
                # matched on the label across commits, whatever the benchmark's parameter layout
                labels = [cell_label(", ".join(c)) for c in itertools.product(*params)] if params else [""]
                for cell, value, st, samp in zip(labels, values, stats_, samples):
                    cells[(key, cell, res.env_name)] = None
                    status = "failed" if value is None else "skipped" if value != value else "ok"
                    rows.append({"commit": commit, "env": res.env_name, "benchmark": key, "cell": cell,
                                 "status": status, "value": np.nan if value is None else float(value),
                                 "ci_low": np.nan if not st else float(st.get("ci_99_a", np.nan)),
                                 "ci_high": np.nan if not st else float(st.get("ci_99_b", np.nan)),
                                 "samples": len(samp) if samp is not None else
                                 st.get("repeat", np.nan) if st else np.nan})
    if not cells:
        raise ValueError("no benchmark in the results matches" + (f" --bench {bench!r}" if bench else
                                                                  " the tracked quality families; use --bench"))
    df = pd.DataFrame(rows, columns=[c for c in HISTORY_COLUMNS if c not in ("date", "subject")])
    # every selected cell at every commit: commits without results (or without this cell) are gaps
    full = pd.MultiIndex.from_tuples([(c, e, b, k) for c in commits for (b, k, e) in cells],
                                     names=["commit", "env", "benchmark", "cell"])
    df = df.set_index(["commit", "env", "benchmark", "cell"]).reindex(full).reset_index()
    df["status"] = df["status"].fillna(df["commit"].map(lambda c: "unreadable" if c in unreadable else "missing"))
    df["samples"] = df["samples"].astype("Int64")
    meta = commit_metadata(commits, by_commit, repo)
    df.insert(1, "date", df["commit"].map(lambda c: meta[c][0]))
    df.insert(2, "subject", df["commit"].map(lambda c: meta[c][1]))
    df = df[HISTORY_COLUMNS]
    df.attrs["unreadable"] = {c: why for c, why in unreadable.items() if c in set(commits)}
    df.attrs["streams_changes"] = streams_changes(commits, repo)
    known = [(c, methods.get(c, "delta method")) for c in commits if c in by_commit]
    df.attrs["method_changes"] = [(c, before, after) for (_, before), (c, after) in zip(known, known[1:])
                                  if before != after]
    return df


def streams_changes(commits: list[str], repo: str) -> list[tuple[str, str, str]]:
    """``(commit, before, after)`` for each commit whose cells draw other random numbers than the
    commit before it (:func:`~gradnoise.analysis.compare.random_streams`); commits git cannot show
    are passed over."""
    changes, previous = [], None
    for commit in commits:
        now = random_streams(commit, repo)
        if now is None:
            continue
        if previous is not None and now != previous:
            changes.append((commit, previous, now))
        previous = now
    return changes


def commit_metadata(commits: list[str], by_commit: dict[str, list], repo: str) -> dict[str, tuple[str, str]]:
    """``{commit: (ISO date, subject line)}`` from git, else the date asv stored."""
    out = {}
    for c in commits:
        line = _git(repo, "log", "-1", "--format=%cI%x00%s", c)
        if line:
            date, _, subject = line.strip().partition("\0")
        else:
            stamp = min((r.date for r in by_commit.get(c, []) if r.date), default=None)
            date = pd.Timestamp(stamp, unit="ms", tz="UTC").isoformat() if stamp else ""
            subject = ""
        out[c] = (date, subject)
    return out


def _steps_of(y: list, w: list, threshold: float) -> list[tuple[str, int, int, float, float]]:
    """``(direction, previous index, index, before, after)`` of the steps of one series."""
    if sum(v == v for v in y) < 2:
        return []
    steps = step_detect.detect_steps(y, w)
    found = []
    _, _, ups = step_detect.detect_regressions(steps, threshold)
    for prev, new, before, after in ups or []:
        found.append(("regression", prev, new, before, after))
    n = len(y)
    reversed_steps = [(n - r, n - l, v, mn, err) for l, r, v, mn, err in reversed(steps)]
    _, _, downs = step_detect.detect_regressions(reversed_steps, threshold)
    for prev, new, before, after in downs or []:
        # reversed index i is original n-1-i: the improved level starts after the original "new"
        found.append(("improvement", n - 1 - new, n - 1 - prev, after, before))
    return found


def single_sample(history: pd.DataFrame) -> pd.Series:
    """Points of :func:`load_history` measured from one sample (``asv run --quick``)."""
    return (history["status"] == "ok") & (history["samples"] == 1).fillna(False).astype(bool)


def detect_history_steps(history: pd.DataFrame, thresholds: dict[str, float], *,
                         include_single: bool = False) -> pd.DataFrame:
    """Steps of every (benchmark, cell, env) series of :func:`load_history` (``STEP_COLUMNS``).

    Single-sample points (:func:`single_sample`) count as missing unless ``include_single``, and
    so do non-finite values (asv's step detection cannot fit them)."""
    history = history.assign(_used=(history["status"] == "ok") & (include_single | ~single_sample(history)))
    commits = list(dict.fromkeys(history["commit"]))
    subjects = dict(zip(history["commit"], history["subject"]))
    rows = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for (bench, cell, env), g in history.groupby(["benchmark", "cell", "env"], sort=True):
            g = g.set_index("commit").reindex(commits)
            # a non-finite value (an infinite bias z) is left out: asv's step detection cannot fit
            # it (on an infinite series it allocated without bound: 24 GB, then the OOM killer)
            ok = g["_used"].fillna(False).astype(bool) & np.isfinite(g["value"].astype(float))
            y = [float(v) if k else None for v, k in zip(g["value"], ok)]
            w = [asv_stats.get_weight({"ci_99_a": lo, "ci_99_b": hi}) if k and np.isfinite(lo) and np.isfinite(hi) else None
                 for lo, hi, k in zip(g["ci_low"], g["ci_high"], ok)]
            for direction, prev, new, before, after in _steps_of(y, w, threshold_for(bench, thresholds)):
                commit = commits[new]
                rows.append({"benchmark": bench, "cell": cell, "env": env, "direction": direction, "commit": commit,
                             "subject": subjects.get(commit, ""), "previous_commit": commits[prev],
                             "before": before, "after": after,
                             "ratio": after / before if before else (np.inf if after else 1.0)})
    df = pd.DataFrame(rows, columns=STEP_COLUMNS)
    effect = np.abs(np.log(df["ratio"].astype(float).replace(0, np.nan))).fillna(np.inf) if len(df) else []
    return df.assign(_e=effect).sort_values("_e", ascending=False, kind="stable").drop(columns="_e").reset_index(drop=True)


def history_figure(history: pd.DataFrame, steps: pd.DataFrame, benchmark: str, *, max_cells: int = 8,
                   include_single: bool = False):
    """One benchmark over commits: a line per stepped cell, 99% intervals, steps and gaps marked.

    Single-sample points are hollow; unless ``include_single`` the line skips them, as step
    detection does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    commits = list(dict.fromkeys(history["commit"]))
    x_of = {c: i for i, c in enumerate(commits)}
    mine = steps[steps["benchmark"] == benchmark]
    keys = list(dict.fromkeys(zip(mine["cell"], mine["env"])))[:max_cells]
    envs = {e for _, e in keys}
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(commits) + 5.0), 4.5))
    sub = history[history["benchmark"] == benchmark]
    sub = sub.assign(_single=single_sample(sub))
    positive = True
    for i, (cell, env) in enumerate(keys):
        g = sub[(sub["cell"] == cell) & (sub["env"] == env)].set_index("commit").reindex(commits)
        ok = (g["status"] == "ok").to_numpy()
        single = g["_single"].fillna(False).to_numpy(bool)
        used = ok & (include_single | ~single)
        x = np.arange(len(commits))[used]
        v, lo, hi = (g[c].to_numpy(float)[used] for c in ("value", "ci_low", "ci_high"))
        positive &= bool(np.all(v > 0)) and bool(np.all(g["value"].to_numpy(float)[single] > 0))
        label = cell if len(envs) == 1 else f"{cell} ({env})"
        line, = ax.plot(x, v, marker="o", ms=5, lw=1.5, label=label)
        if single.any():
            ax.plot(np.arange(len(commits))[single], g["value"].to_numpy(float)[single], marker="o", ms=7, ls="none",
                    markerfacecolor="none", color=line.get_color(),
                    label="one sample (asv run --quick)" + ("" if include_single else ": not in step detection")
                    if i == 0 else None)
        have = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(x[have], v[have], yerr=[np.clip(v[have] - lo[have], 0, None), np.clip(hi[have] - v[have], 0, None)],
                    fmt="none", ecolor=line.get_color(), elinewidth=1.2, capsize=3)
    gaps = sub.groupby("commit")["status"].agg(lambda s: next((k for k in ("missing", "failed", "unreadable")
                                                               if (s == k).all()), ""))
    for commit, kind in gaps.items():
        if kind:
            ax.axvspan(x_of[commit] - 0.4, x_of[commit] + 0.4, color="#eeeeee", zorder=0)
            ax.text(x_of[commit], 0.5, {"missing": "no results"}.get(kind, kind), rotation=90,
                    transform=ax.get_xaxis_transform(), ha="center", va="center", fontsize=8, color="#666666")
    for commit in dict.fromkeys(mine["commit"]):
        ax.axvline(x_of[commit] - 0.5, color="#d62728", ls="--", lw=1)
        ax.text(x_of[commit] - 0.45, 0.98, f"step at {commit[:8]}", transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize=8, color="#d62728")
    if positive:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        if high / low < 100:           # under two decades: plain numbers on the ticks
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
    ax.set_xticks(range(len(commits)))
    ax.set_xticklabels([c[:8] for c in commits], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(commits) - 0.4)
    ax.set_xlabel("commit (oldest first)")
    unit = {"variance": "variance of one estimate", "MSE": "mean squared error", "bias": "|z| beyond the threshold",
            "1/SNR": "1 / SNR", "time": "seconds", "memory": "bytes"}.get(benchmark_family(benchmark), "value")
    ax.set_ylabel(f"{unit} (asv median, 99% interval)")
    ax.set_title(f"{short_name(benchmark)}: cells that stepped", loc="left", fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="problem, estimator, N",
              title_fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def single_sample_summary(history: pd.DataFrame, include_single: bool = False) -> str:
    """``"N single-sample points (asv run --quick) at M commits left out of step detection ..."``,
    or ``""`` when there are none."""
    single = history[single_sample(history)]
    if single.empty:
        return ""
    what = f"{len(single)} single-sample points (asv run --quick) at {single['commit'].nunique()} commits"
    return what + (" included in step detection (--include-quick)" if include_single else
                   " left out of step detection (--include-quick includes them)")


def history_markdown(history: pd.DataFrame, steps: pd.DataFrame, figures: dict[str, str], range_spec: str | None,
                     *, include_single: bool = False) -> str:
    """``history.md``: the steps (largest first, each with hash and subject), the single-sample
    points, the gaps, the figures."""
    commits = list(dict.fromkeys(history["commit"]))
    subjects = dict(zip(history["commit"], history["subject"]))
    status = history.groupby("commit")["status"]
    missing = [c for c in commits if (status.get_group(c) == "missing").all()]
    failed = {c: int((status.get_group(c) == "failed").sum()) for c in commits}
    unreadable = history.attrs.get("unreadable", {})
    lines = [f"# Benchmark history: {range_spec or 'every commit with results'}", "",
             f"**{len(commits)} commits, {len(steps)} steps** ({int((steps['direction'] == 'regression').sum())} "
             f"regressions, {int((steps['direction'] == 'improvement').sum())} improvements) in "
             f"{history.groupby(['benchmark', 'cell', 'env']).ngroups} series; "
             f"commits without results: {len(missing)}; commits with unreadable results: {len(unreadable)}."]
    single = single_sample_summary(history, include_single)
    if single:
        lines += ["", single[0].upper() + single[1:] + ": one cold sample is not the median of a full run, "
                  "so a commit measured quickly would take the blame for its neighbours' level."]
    for commit, before, after in history.attrs.get("method_changes", []):
        lines += ["", f"**The interval method changed at `{commit[:8]}` {subjects.get(commit, '')}** ({before} -> "
                  f"{after}): from there the bias track means something else; a step there is the method's."]
    for commit, before, after in history.attrs.get("streams_changes", []):
        lines += ["", f"**Random streams changed at `{commit[:8]}` {subjects.get(commit, '')}** ({before} -> {after}): "
                  "from there every quality track draws other random numbers, so its value moves by chance alone; "
                  "a step there in a quality track is the streams' unless it persists beyond its noise."]
    if len(steps):
        lines += ["", "## Steps", "", "| benchmark | cell | commit | before | after | ratio |", "|---|---|---|---|---|---|"]
        for r in steps.itertuples():
            arrow = "worse" if r.direction == "regression" else "better"
            zero = ", exactly 0" if r.after == 0 else ", from exactly 0" if r.before == 0 else ""
            lines.append(f"| `{short_name(r.benchmark)}` | {r.cell} | `{r.commit[:8]}` {r.subject} | {r.before:.3g} | "
                         f"{r.after:.3g} | {fmt(r.ratio)} ({arrow}{zero}) |")
    else:
        lines += ["", "No quantity stepped."]
    if single:
        ok = history[history["status"] == "ok"].groupby("commit").size()
        per = history[single_sample(history)].groupby("commit", sort=False).size()
        lines += ["", "## Single-sample points", ""] + [
            f"- `{c[:8]}` {subjects.get(c, '')}: {per[c]} of {ok[c]} points from one sample" for c in commits if c in per]
    gaps = ([(c, "no results") for c in missing] + [(c, f"{n} cells failed") for c, n in failed.items() if n]
            + [(c, f"results unreadable: {why}") for c, why in unreadable.items()])
    if gaps:
        lines += ["", "## Gaps", ""] + [f"- `{c[:8]}` {subjects.get(c, '')}: {why}" for c, why in gaps]
    for bench, path in figures.items():
        lines += ["", f"![{short_name(bench)} over commits]({path})"]
    lines += ["", "Steps: asv's step detection (`asv.step_detect`) with the `regressions_thresholds` of "
              "`asv.conf.json`; the commit named is the first with the new level. Values are asv's medians "
              "with their 99% intervals."]
    return "\n".join(lines) + "\n"


def history_outputs(out_dir: str):
    """Before reading any result: :func:`gradnoise.io.claim_outputs` of what ``history`` writes into ``out_dir``
    (its figures by the pattern ``history-*.png``: which benchmarks step is known only at the end)."""
    from gradnoise.io import Columns, Figure, Markdown, claim_outputs

    return claim_outputs("gradnoise history", out_dir, {
        "history.csv": Columns(("commit", "benchmark", "cell", "value"), "a gradnoise history CSV"),
        "steps.csv": Columns(("benchmark", "cell", "direction", "commit"), "a gradnoise steps CSV"),
        "history.md": Markdown(r"^# Benchmark history"), "history-*.png": Figure()})


def run_history(args: argparse.Namespace) -> int:

    check_output_dir(args.out_dir)
    claim = history_outputs(args.out_dir)
    results_dir = args.results_dir or results_dir_from_config(args.config)
    history = load_history(args.range, results_dir=results_dir, machine=args.machine, repo=args.repo, bench=args.bench)
    steps = detect_history_steps(history, thresholds_from_config(args.config), include_single=args.include_quick)
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write_csv(history, os.path.join(args.out_dir, "history.csv"))
    atomic_write_csv(steps, os.path.join(args.out_dir, "steps.csv"))
    import matplotlib.pyplot as plt

    figures = {}
    for bench in dict.fromkeys(steps["benchmark"]):
        name = f"history-{short_name(bench)}.png"
        fig = history_figure(history, steps, bench, include_single=args.include_quick)
        fig.savefig(os.path.join(args.out_dir, name), dpi=110, bbox_inches="tight")
        plt.close(fig)
        figures[bench] = name
    atomic_write_markdown(os.path.join(args.out_dir, "history.md"),
                          history_markdown(history, steps, figures, args.range, include_single=args.include_quick),
                          "gradnoise history")
    claim.record()
    print(f"{history['commit'].nunique()} commits, {len(steps)} steps; wrote {args.out_dir}/history.md, history.csv, "
          f"steps.csv and {len(figures)} figures")
    single = single_sample_summary(history, args.include_quick)
    if single:
        print(f"  {single}")
    for commit, before, after in history.attrs.get("method_changes", []):
        print(f"  the interval method changed at {commit[:8]} ({before} -> {after}): the bias track means something else from there")
    for commit, before, after in history.attrs.get("streams_changes", []):
        print(f"  random streams changed at {commit[:8]} ({before} -> {after}): quality tracks draw other numbers from there")
    unreadable = history.attrs.get("unreadable", {})
    if unreadable:
        print(f"  commits with unreadable results: {len(unreadable)}")
        for commit, why in unreadable.items():
            print(f"    {commit[:8]}: {why}")
    for r in steps.itertuples():
        print(f"  {r.direction:11s} {r.benchmark}({r.cell}) at {r.commit[:8]} {r.subject}: {r.before:.3g} -> {r.after:.3g}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "history", help="benchmark quantities over a range of commits, and the commits where they stepped",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reads the asv results of each commit and writes history.csv, steps.csv, history.md\n"
        "and one figure per benchmark that stepped. Steps are found with asv's own step detection\n"
        "and the regressions_thresholds of asv.conf.json; each is named with its commit's hash and\n"
        "subject. Commits in RANGE without results are shown as gaps, as are commits whose results\n"
        "file cannot be read (named in the report). Points measured from one sample (asv run\n"
        "--quick) are marked and left out of step detection unless --include-quick.",
        epilog="examples:\n"
        "  gradnoise history --out-dir history                      # every commit with results\n"
        "  gradnoise history main~20..main --out-dir history         # a range, gaps included\n"
        "  gradnoise history --bench 'track_variance|track_mse' --out-dir history",
    )
    p.add_argument("range", metavar="RANGE", nargs="?", default=None,
                   help="git revision range (default: every commit with results, in git order)")
    p.add_argument("--out-dir", default="history", help="output folder (default: %(default)s)")
    p.add_argument("--bench", default=None,
                   help="regular expression on benchmark names (default: the variance, MSE, bias and 1/SNR tracks)")
    p.add_argument("--config", default=None, help="asv config for results_dir and thresholds (default: ./asv.conf.json)")
    p.add_argument("--results-dir", default=None, help="asv results folder (default: results_dir of the config)")
    p.add_argument("--machine", default=None, help="asv machine name (default: the only one with results)")
    p.add_argument("--repo", default=".", help="git repository of the commits (default: the current folder)")
    p.add_argument("--include-quick", action="store_true",
                   help="include single-sample points (asv run --quick) in step detection (default: left out)")
    p.set_defaults(func=run_history)
