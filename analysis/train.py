r"""``gradnoise train``: training runs of estimators on a problem, at equal cost, with intervals
over seeds, resumable, and their report (``train.md`` and figures).

The runs are :func:`gradnoise.training.train`'s (seed groups on replicated leaves, streams derived
like the engine's cells). This module writes them (``DIR/train.csv``, atomically after every
finished seed group, so an interrupted run resumes: a group is reused only when its rows are
complete and were computed by the same code with the same settings) and reads them back into a
report:

* figures: the objective against steps, evaluations and seconds, the mean over seeds with a 95%
  band (Student t over seeds); the variance along the trajectory (median over seeds);
  with ``--basket``, one figure per driving estimator: each basket estimator's variance at the
  driver's parameters;
* a table of the final objective per estimator with its 95% interval over seeds;
* pairwise differences of the final objective, Welch's t-test (``scipy.stats.ttest_ind``,
  ``equal_var=False``) with Holm's step-down correction over the pairs (Holm 1979);
* evaluations to reach a target objective (given, or halfway from the starting objective to the
  best final mean): per seed the first recorded ``cost_evals`` at or below it; the median over
  the seeds that reached it, and how many did.

``train.csv`` keeps the rows of other runs already in it (the union; a run is a problem,
estimator, N and seed, and a new run of one replaces its rows); ``train.md`` and the figures are
this command's runs.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import gradnoise as gn
from gradnoise.statistics import holm
from gradnoise.io import Columns, Figure, Markdown, atomic_write_csv, atomic_write_markdown, claim_outputs, fmt, markdown_table
from gradnoise.training import TRAIN_COLUMNS

from .cluster import add_cluster_arguments, check_cluster_arguments, client_from_args
from .sweep import check_output_dir, output_lock

LEVEL = 0.95
COMMAND = "gradnoise train"
FIGURES = ("train-objective.png", "train-variance.png")


def read_train_csv(path: str) -> pd.DataFrame | None:
    """The rows of an earlier ``train.csv`` (None when absent); one ``ValueError`` when it is not one."""
    if not os.path.exists(path):
        return None
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a gradnoise train.csv ({err})") from None
    missing = [c for c in TRAIN_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a gradnoise train.csv (no column {missing[0]!r}); move it away")
    return df


def mean_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and the Student-t ``level`` interval of the mean of ``values`` (over seeds)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def curves(df: pd.DataFrame) -> pd.DataFrame:
    """Per (problem, estimator, step): the mean objective over seeds with its 95% band, the mean
    evaluations and seconds, the median of the variance over seeds."""
    out = []
    for (problem, estimator, step), g in df.groupby(["problem", "estimator", "step"], sort=False):
        mean, low, high = mean_interval(g["objective"])
        var = g["variance"].astype(float)
        out.append({"problem": problem, "estimator": estimator, "step": step, "seeds": len(g),
                    "cost_evals": g["cost_evals"].mean(), "seconds": g["seconds"].mean(),
                    "objective": mean, "objective_low": low, "objective_high": high,
                    "variance": float(var.median())})
    return pd.DataFrame(out)


def final_table(df: pd.DataFrame) -> pd.DataFrame:
    """The final objective per (problem, estimator): mean over seeds and its 95% interval."""
    rows = []
    for (problem, estimator), g in df.groupby(["problem", "estimator"], sort=False):
        last = g[g["step"] == g["step"].max()]
        mean, low, high = mean_interval(last["objective"])
        rows.append({"problem": problem, "estimator": estimator, "budget": int(last["budget"].iloc[0]),
                     "seeds": len(last), "cost_evals": int(last["cost_evals"].max()),
                     "final_objective": mean, "ci_low": low, "ci_high": high,
                     "objective_kind": ",".join(sorted(set(last["objective_kind"])))})
    return pd.DataFrame(rows)


def pairwise(df: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Every pair of estimators on a problem: the difference of mean final objectives (first minus
    second), Welch's t-test p-value and its Holm adjustment over the pairs of that problem."""
    rows = []
    for problem, g in df.groupby("problem", sort=False):
        final = {e: h[h["step"] == h["step"].max()]["objective"].to_numpy(float)
                 for e, h in g.groupby("estimator", sort=False)}
        names = list(final)
        part = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                x, y = final[a], final[b]
                if len(x) < 2 or len(y) < 2:
                    p = math.nan
                elif x.std() > 0 or y.std() > 0:
                    p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
                else:                     # every seed the same on both sides: equal or not, exactly
                    p = 1.0 if x.mean() == y.mean() else 0.0
                part.append({"problem": problem, "first": a, "second": b, "difference": float(x.mean() - y.mean()), "p": p})
        ps = np.array([r["p"] for r in part], dtype=float)
        ok = np.isfinite(ps)
        adjusted = np.full(ps.shape, math.nan)
        if ok.any():
            adjusted[ok] = holm(ps[ok])
        for r, a in zip(part, adjusted):
            r["p_holm"] = float(a)
            r["significant"] = bool(a < 1 - level) if np.isfinite(a) else False
        rows += part
    return pd.DataFrame(rows, columns=["problem", "first", "second", "difference", "p", "p_holm", "significant"])


def evaluations_to_target(df: pd.DataFrame, target: float | None = None) -> pd.DataFrame:
    """Per (problem, estimator): evaluations to reach ``target`` (default: halfway from the mean
    starting objective to the best final mean of the problem): the median over seeds that
    reached it of the first recorded ``cost_evals`` with objective <= target, and how many did."""
    rows = []
    for problem, g in df.groupby("problem", sort=False):
        finals = final_table(g)
        start = float(g[g["step"] == 0]["objective"].mean())
        aim = target if target is not None else 0.5 * (start + float(finals["final_objective"].min()))
        for estimator, h in g.groupby("estimator", sort=False):
            reached = []
            seeds = h["seed"].nunique()
            for _, s in h.groupby("seed"):
                hit = s[s["objective"] <= aim].sort_values("step")
                if len(hit):
                    reached.append(float(hit["cost_evals"].iloc[0]))
            rows.append({"problem": problem, "estimator": estimator, "target": aim,
                         "seeds_reached": len(reached), "seeds": seeds,
                         "median_evals": float(np.median(reached)) if reached else math.nan})
    return pd.DataFrame(rows)


def draw_objective(df: pd.DataFrame, path: Path) -> str:
    """The objective against steps, evaluations and seconds: mean over seeds, 95% band."""
    from .plot import estimator_style
    from .studies.base import new_figure, save_figure

    c = curves(df)
    problems = list(c["problem"].unique())
    fig, axes = new_figure(len(problems), 3, width=4.2, height=3.2)
    for row, problem in enumerate(problems):
        g = c[c["problem"] == problem]
        for col, x in enumerate(("step", "cost_evals", "seconds")):
            ax = axes[row][col]
            for estimator, h in g.groupby("estimator", sort=False):
                colour, _ = estimator_style(estimator)
                ax.plot(h[x], h["objective"], color=colour, label=estimator)
                ax.fill_between(h[x], h["objective_low"], h["objective_high"], color=colour, alpha=0.2, lw=0)
            ax.set_xlabel({"step": "step", "cost_evals": "cost evaluations", "seconds": "seconds (steps only)"}[x])
            ax.set_ylabel(df["objective_name"].iloc[0])
            ax.set_title(problem.split(":")[0].split("@")[0], fontsize=8)
        axes[row][0].legend(fontsize=7)
    return save_figure(fig, path)


def draw_variance(df: pd.DataFrame, path: Path) -> str | None:
    """The variance along the trajectory against steps: the median over seeds (a variance may be
    exactly 0: DisARM's on one Bernoulli at theta = 0), log scale, one panel per problem; with a
    basket one panel per problem and driving estimator, the basket's variances dashed."""
    from .plot import estimator_style
    from .studies.base import new_figure, save_figure

    if df["variance"].isna().all():
        return None
    basket = sorted({c.split(":")[1] for c in df.columns if c.startswith("basket:") and c.endswith(":variance")})
    keys = ["problem", "estimator"] if basket else ["problem"]
    groups = list(df.groupby(keys, sort=False))
    fig, axes = new_figure(1, len(groups), width=4.4, height=3.2)
    for ax, (key, g) in zip(axes[0], groups):
        key = key if isinstance(key, tuple) else (key,)
        for estimator, h in g.groupby("estimator", sort=False):
            m = h.groupby("step")["variance"].median()
            colour, _ = estimator_style(estimator)
            ax.plot(m.index, m.values, color=colour, label=f"{estimator} (driving)" if basket else estimator)
            for b in basket:
                mb = h.groupby("step")[f"basket:{b}:variance"].median()
                ax.plot(mb.index, mb.values, color=estimator_style(b)[0], ls="--", label=b)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("variance (trace), median over seeds")
        ax.set_title(" ".join([key[0].split("@")[0]] + ([f"driven by {key[1]}"] if basket else [])), fontsize=8)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_report(df: pd.DataFrame, out_dir: str | os.PathLike, *, target: float | None = None,
                 title: str = "Training runs") -> str:
    """``train.md`` and the figures (:func:`report_text`) for the rows ``df``; returns the text."""
    text = report_text(df, out_dir, target=target, title=title)
    atomic_write_markdown(Path(out_dir) / "train.md", text, COMMAND)
    return text


def report_text(df: pd.DataFrame, out_dir: str | os.PathLike, *, target: float | None = None,
                title: str = "Training runs") -> str:
    """The figures (:data:`FIGURES`, written into ``out_dir``) and the markdown of the report for
    the rows ``df`` (:data:`gradnoise.training.TRAIN_COLUMNS`): final objective, pairwise tests,
    evaluations to the target."""
    out = Path(out_dir)
    finals = final_table(df)
    pairs = pairwise(df)
    reach = evaluations_to_target(df, target)
    figures = [draw_objective(df, out / FIGURES[0]), draw_variance(df, out / FIGURES[1])]
    first = df.iloc[0]
    lines = [f"# {title}", "",
             f"Problem(s): {', '.join(sorted(set(df['problem'])))}. Objective minimised: {first['objective_name']} "
             f"({', '.join(sorted(set(df['objective_kind'])))}); optimiser {first['optimizer']} lr {first['lr']}, "
             f"{int(first['steps'])} steps, {df['seed'].nunique()} seeds per estimator; code {first['code_version']}.", ""]
    lines += ["## Final objective (mean over seeds, 95% interval)", ""]
    table = finals.assign(final_objective=[fmt(v) for v in finals["final_objective"]],
                          interval=[f"[{fmt(a)}, {fmt(b)}]" for a, b in zip(finals["ci_low"], finals["ci_high"])])
    lines += [markdown_table(table[["problem", "estimator", "budget", "seeds", "cost_evals", "final_objective",
                                    "interval", "objective_kind"]]), ""]
    if len(pairs):
        lines += ["## Pairwise differences of the final objective", "",
                  "Welch's t-test over seeds, Holm-corrected over the pairs of each problem; "
                  "difference = first - second (negative: first lower, better).", ""]
        lines += [markdown_table(pairs.assign(difference=[fmt(v) for v in pairs["difference"]],
                                              p=[fmt(v) for v in pairs["p"]],
                                              p_holm=[fmt(v) for v in pairs["p_holm"]])), ""]
    lines += ["## Evaluations to reach the target objective", "",
              "Target: " + ("given" if target is not None else "halfway from the starting objective to the best final mean")
              + "; median over the seeds that reached it.", "",
              markdown_table(reach.assign(target=[fmt(v) for v in reach["target"]],
                                          median_evals=[fmt(v) for v in reach["median_evals"]])), ""]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures if f] + [""]
    return "\n".join(lines)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def run_train(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out_dir)
    check_cluster_arguments(args)
    if not args.estimator:
        raise ValueError("give at least one --estimator (or several, comma-separated)")
    estimators = [e for item in args.estimator for e in _split(item)]
    basket = [e for item in (args.basket or []) for e in _split(item)]
    if args.budget is None and args.evals_per_step is None:
        raise ValueError("give --budget N or --evals-per-step B")
    if args.budget is not None and args.evals_per_step is not None:
        raise ValueError("give either --budget N or --evals-per-step B, not both")
    # every bad setting is one line before anything is written or computed
    gn.training.check_settings(args.steps, args.lr, args.optimizer, args.seeds, args.eval_every or 1,
                               args.variance_replicates, args.objective_samples, args.seed_group)
    gn.training.plan(args.problem, estimators, budget=args.budget, evals_per_step=args.evals_per_step,
                     seeds=args.seeds, seed_group=args.seed_group, basket=basket, device=args.device)
    outputs = claim_outputs(COMMAND, out, {"train.csv": Columns(tuple(TRAIN_COLUMNS), "a gradnoise train.csv"),
                                           "train.md": Markdown(), FIGURES[0]: Figure(), FIGURES[1]: Figure()})
    csv = os.path.join(out, "train.csv")
    with output_lock(csv):
        previous = None if args.fresh else read_train_csv(csv)
        kept = previous
        done: list[dict] = []
        counts = {"reused": 0, "computed": 0}

        def on_run(rows, reused):
            done.extend(rows)
            counts["reused" if reused else "computed"] += 1
            frame = pd.DataFrame(done)
            if kept is not None and len(kept):      # rows of other runs stay until this one is written
                frame = pd.concat([frame, _others(kept, frame)], ignore_index=True)
            atomic_write_csv(frame, csv)

        with client_from_args(args) as client:
            df = gn.train(args.problem, estimators, args.budget, steps=args.steps, lr=args.lr,
                          optimizer=args.optimizer, seeds=args.seeds, seed=args.seed, eval_every=args.eval_every,
                          variance_replicates=args.variance_replicates, objective_samples=args.objective_samples,
                          evals_per_step=args.evals_per_step, basket=basket, seed_group=args.seed_group,
                          device=args.device, threads=args.threads, client=client, progress=not args.quiet,
                          previous=previous, on_run=on_run)
        # this experiment's rows in run order, then the file's rows of other runs (the union)
        atomic_write_csv(pd.concat([df, _others(kept, df)], ignore_index=True)
                         if kept is not None and len(kept) else df, csv)
        write_report(df, out, target=args.target)
    outputs.record()
    print(f"trained {counts['computed']} seed groups, reused {counts['reused']} computed by the same code; "
          f"wrote {len(df)} rows to {csv} and the report {os.path.join(out, 'train.md')}")
    return 0


def _others(kept: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``kept`` whose (problem, estimator, budget, seed) ``frame`` does not hold."""
    key = ["problem", "estimator", "budget", "seed"]
    have = set(map(tuple, frame[key].astype(str).to_numpy()))
    mask = [tuple(r) not in have for r in kept[key].astype(str).to_numpy()]
    return kept[mask]


def _split(text: str) -> list[str]:
    """``E1,E2`` into names; a comma inside an estimator's options (``name:a=1,b=2``) stays with it."""
    parts: list[str] = []
    for piece in text.split(","):
        if parts and "=" in piece and ":" in parts[-1] and ":" not in piece:
            parts[-1] += "," + piece
        elif piece.strip():
            parts.append(piece.strip())
    return parts


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train with estimators at equal cost over seeds; train.csv, train.md, figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Training runs: each estimator's gradient drives Adam (or SGD) from the problem's "
                    "parameters, several seeds; the objective (exact where known), the variance along the "
                    "trajectory and the cost are recorded (docs/train.md).",
        epilog="examples:\n"
        "  gradnoise train --problem bernoulli-toy:t=0.45 --estimator reinforce,disarm --budget 2 \\\n"
        "      --steps 1000 --lr 0.1 --seeds 8 --out-dir out/toy\n"
        "  gradnoise train --problem digits-bernoulli-vae:checkpoint=init,points=32 \\\n"
        "      --estimator reinforce-loo,arm,disarm --evals-per-step 4 --steps 500 --lr 0.003 --out-dir out/dvae\n"
        "resumable: each finished seed group is written to DIR/train.csv at once; re-running the same\n"
        "command reuses the groups computed by the same code with the same settings (--fresh: none).",
    )
    p.add_argument("--problem", required=True, metavar="P", help="problem name with options")
    p.add_argument("--estimator", action="append", metavar="E", help="estimator(s): repeatable or comma-separated")
    p.add_argument("--budget", type=int, metavar="N", help="samples per estimate (K for iwae, vimco)")
    p.add_argument("--evals-per-step", type=int, metavar="B",
                   help="instead of --budget: each estimator the N that spends exactly B cost evaluations per step")
    p.add_argument("--steps", type=int, required=True, metavar="T", help="optimiser steps per run")
    p.add_argument("--lr", type=float, required=True, help="learning rate (finite, > 0)")
    p.add_argument("--optimizer", default="adam", help="adam (torch's defaults but lr) or sgd (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=5, metavar="S", help="runs per estimator (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default: %(default)s)")
    p.add_argument("--seed-group", type=int, default=gn.training.SEED_GROUP, metavar="G",
                   help="seeds trained together in one vectorised pass (default: %(default)s; changes the streams)")
    p.add_argument("--eval-every", type=int, metavar="K", help="record every K steps (default: steps // 50)")
    p.add_argument("--variance-replicates", type=int, default=0, metavar="R",
                   help="estimates per recorded step for the variance along the trajectory (default: 0, skip)")
    p.add_argument("--objective-samples", type=int, default=1000, metavar="M",
                   help="samples of the objective's estimate where it is not known exactly (default: %(default)s)")
    p.add_argument("--basket", action="append", metavar="E1,E2",
                   help="estimators whose variance is measured at the same parameters at every recorded step")
    p.add_argument("--target", type=float, help="objective to reach (default: halfway from start to the best final mean)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="folder for train.csv, train.md and figures")
    p.add_argument("--fresh", action="store_true", help="recompute every run (default: reuse finished ones)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cluster_arguments(p)
    p.set_defaults(func=run_train)
