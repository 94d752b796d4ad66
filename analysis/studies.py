r"""``gradnoise study``: reproducible studies of published claims about gradient estimators.

Each study is one command that measures (through the registries and the engine: no estimator
maths here), writes its tables and figures, and says whether the claim held::

    gradnoise study --list
    gradnoise study no-single-winner --out-dir out/nsw            # full size
    gradnoise study iwae-snr --out-dir out/snr --quick            # reduced, for tests
    gradnoise study all --out-dir out --update-readme README.md   # every study + README block

Every study writes into its folder:

* ``results.csv``: the engine's tidy rows (:data:`estimators.engine.COLUMNS`, the sweep's schema),
  plus rows for parameter *groups* (``param`` = ``encoder`` / ``decoder``: all the group's
  tensors concatenated and summarised by :func:`estimators.statistics.summarise`, so the trace
  variance and its interval cover the whole group);
* ``fits.csv``: :func:`analysis.fit.fit_curves` of ``results.csv`` (Var = a N^b, SNR = c N^d);
* study-specific tables (``ratios.csv``, ``snr.csv``, ``ranking.csv`` ...), PNG figures;
* ``study.md``: the claim, the measured numbers with 95% intervals, and whether the claim held;
* ``summary.json``: the headline (used by ``--update-readme``).

Ratios of two variances measured in independently seeded cells get a 95% interval by the delta
method on the log scale: each variance interval is symmetric in :math:`\log`, so
:math:`s_i = (\log v_i^{hi} - \log v_i^{lo}) / (2 z_{0.975})` and
:math:`\log(v_1/v_2) \pm z_{0.975}\sqrt{s_1^2 + s_2^2}` (:func:`ratio_interval`).

The studies themselves live in ``analysis/studies_*.py`` and register here with :func:`study`.
See ``docs/studies.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats

import estimators as gn

from .cluster import add_cluster_arguments, check_cluster_arguments, client_from_args

LEVEL = 0.95
Z = float(stats.norm.ppf(0.5 + LEVEL / 2))
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


# --------------------------------------------------------------------------------------------
# Study registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """How to run a study: ``quick`` is the reduced mode used by the tests; ``seed`` the master seed;
    ``threads`` torch's intra-op threads while it runs (1 by default: on a shared 2-core machine
    more threads than free cores make torch's vectorised kernels many times slower)."""

    quick: bool = False
    seed: int = 0
    threads: int = 1
    #: a ``distributed.Client`` to run the cells on (``--workers``/``--scheduler``), or None
    client: object = None


@dataclass
class Outcome:
    """What a study found: the claim, whether it held, headline lines (markdown) and figures."""

    name: str
    title: str
    claim: str
    held: bool | None
    headline: list[str]
    figures: list[str]
    wall_seconds: float = float("nan")
    quick: bool = False
    details: dict = field(default_factory=dict)
    #: a finer verdict than held / did not hold (e.g. per problem); defaults to that
    verdict: str | None = None

    @property
    def verdict_text(self) -> str:
        return self.verdict or {True: "held", False: "did not hold", None: "not decided"}[self.held]


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    summary: str
    run: Callable[[Path, Config], Outcome]


_STUDIES: dict[str, Study] = {}


def study(name: str, title: str, summary: str):
    """Decorator: register ``run(out_dir, config) -> Outcome`` as the study ``name``."""
    def decorator(run):
        if name in _STUDIES:
            raise ValueError(f"study {name!r} is already registered")
        _STUDIES[name] = Study(name, title, summary, run)
        return run

    return decorator


def study_names() -> list[str]:
    return list(_STUDIES)


def get_study(name: str) -> Study:
    if name not in _STUDIES:
        raise KeyError(f"unknown study {name!r}; valid studies: {', '.join(_STUDIES)}, all")
    return _STUDIES[name]


# --------------------------------------------------------------------------------------------
# Measuring (through the engine) and small statistics on its output
# --------------------------------------------------------------------------------------------
def cell_rows(
    problem: gn.Problem, estimator: gn.GradientEstimator, budget: int, replicates: int, seed: int,
    groups: Mapping[str, Iterable[str]] | None = None,
) -> tuple[list[dict], dict[str, torch.Tensor], float]:
    """Rows in the sweep's schema for one cell, and the raw estimates they summarise.

    The estimates come from :func:`estimators.replicate_estimates` (so the per-parameter rows are
    the ones ``gradnoise sweep`` writes for the same seed and R); each entry of ``groups`` adds a
    row whose ``param`` is the group's name, summarising its tensors concatenated.
    Returns ``(rows, estimates, seconds)``.
    """
    estimates, seconds = gn.replicate_estimates(problem, estimator, budget, replicates, seed)
    rows = gn.engine.summarise_estimates(problem, estimator, budget, seed, estimates, seconds,
                                         {g: list(n) for g, n in (groups or {}).items()})
    return rows, estimates, seconds


def _study_cell(problem, estimator, budget, replicates, seed, groups, reduce, threads):
    """:func:`cell_rows` of one cell and ``reduce(estimates, groups)`` (None without ``reduce``),
    as a Dask task: the raw estimates stay where they were computed."""
    from estimators.cluster import cell_context

    with cell_context(threads):
        rows, estimates, _ = cell_rows(problem, estimator, budget, replicates, seed, groups)
        return rows, (reduce(estimates, groups) if reduce is not None else None)


def study_cells(config: Config, cells, reduce: Callable | None = None) -> list[tuple[list[dict], object]]:
    """``(rows, reduce(estimates, groups))`` of each ``(problem, estimator, budget, replicates, groups)`` in
    ``cells``, in order: in this process, or on ``config.client``'s Dask workers (the same
    numbers; ``reduce`` must be a module-level function, it runs where the cell ran)."""
    if config.client is None:
        out = []
        for problem, estimator, budget, replicates, groups in cells:
            rows, estimates, _ = cell_rows(problem, estimator, budget, replicates, config.seed, groups)
            out.append((rows, reduce(estimates, groups) if reduce is not None else None))
            del estimates
        return out
    from estimators.cluster import map_calls

    calls = [(p, e, n, r, config.seed, g, reduce, config.threads) for p, e, n, r, g in cells]
    done = dict(map_calls(config.client, _study_cell, calls))
    return [done[i] for i in range(len(cells))]


#: parameter groups of problems whose tensors are not named ``encoder.*`` / ``decoder.*``
NAMED_GROUPS = {"linear-gaussian-vae": {"encoder": ("A", "b"), "decoder": ("mu",)}}


def parameter_groups(problem: gn.Problem) -> dict[str, list[str]]:
    """``{"encoder": [...], "decoder": [...]}`` from the ``encoder.``/``decoder.`` prefixes or :data:`NAMED_GROUPS`."""
    if problem.name in NAMED_GROUPS:
        return {g: list(names) for g, names in NAMED_GROUPS[problem.name].items()}
    groups: dict[str, list[str]] = {}
    for name in problem.params:
        prefix = name.split(".", 1)[0]
        if prefix in ("encoder", "decoder"):
            groups.setdefault(prefix, []).append(name)
    if set(groups) != {"encoder", "decoder"}:
        raise ValueError(f"problem {problem.spec!r}: cannot tell encoder from decoder parameters "
                         f"(names {list(problem.params)[:6]}...)")
    return groups


def log_se(low, high):
    """Log-scale standard error of a quantity from its log-symmetric 95% interval."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.log(np.asarray(high, float)) - np.log(np.asarray(low, float))) / (2 * Z)


def ratio_interval(num, num_low, num_high, den, den_low, den_high):
    """Ratio of two independent variances and its 95% interval (delta method, log scale).

    Arguments are scalars or arrays; returns ``(ratio, low, high)``.
    """
    ratio = np.asarray(num, float) / np.asarray(den, float)
    s = np.sqrt(log_se(num_low, num_high) ** 2 + log_se(den_low, den_high) ** 2)
    return ratio, ratio * np.exp(-Z * s), ratio * np.exp(Z * s)


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant figures (scientific beyond 1e4 or below 1e-3)."""
    if x is None or not np.isfinite(x):
        return "nan"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_ci(value: float, low: float, high: float, digits: int = 3) -> str:
    return f"{fmt(value, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def write_csv(df: pd.DataFrame, path: Path) -> None:
    from .sweep import atomic_write_csv

    atomic_write_csv(df, path)


def write_results(rows: list[dict], out_dir: Path) -> pd.DataFrame:
    """``results.csv`` in the sweep's schema, and ``fits.csv`` from :func:`analysis.fit.fit_curves`."""
    from .fit import fit_curves

    df = pd.DataFrame(rows, columns=gn.COLUMNS)
    write_csv(df, out_dir / "results.csv")
    write_csv(fit_curves(df, x="budget"), out_dir / "fits.csv")
    return df


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 4.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes


def save_figure(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def write_study_md(out_dir: Path, outcome: Outcome, method: str, body: str) -> None:
    text = [
        f"# {outcome.title}",
        "",
        f"Regenerate: `gradnoise study {outcome.name} --out-dir DIR{' --quick' if outcome.quick else ''}`"
        + (" (quick mode: reduced sizes, numbers are indicative only)" if outcome.quick else ""),
        "",
        "## Claim",
        "",
        outcome.claim,
        "",
        f"## Verdict: the claim {outcome.verdict_text}",
        "",
        *[f"- {line}" for line in outcome.headline],
        "",
        "## Method",
        "",
        method.strip(),
        "",
        "## Results",
        "",
        body.strip(),
        "",
        "## Files",
        "",
        "`results.csv` (the sweep's schema), `fits.csv` (power-law fits), "
        + ", ".join(f"`{f}`" for f in sorted(os.listdir(out_dir)) if f.endswith(".csv")
                    and f not in ("results.csv", "fits.csv"))
        + "; figures: " + ", ".join(f"`{f}`" for f in outcome.figures) + ".",
        "",
        *[f"![{f}]({f})" for f in outcome.figures],
        "",
    ]
    (out_dir / "study.md").write_text("\n".join(text))


def write_summary(out_dir: Path, outcome: Outcome) -> None:
    data = {
        "name": outcome.name, "title": outcome.title, "claim": outcome.claim, "held": outcome.held,
        "verdict": outcome.verdict_text,
        "headline": outcome.headline, "figures": outcome.figures, "quick": outcome.quick,
        "wall_seconds": outcome.wall_seconds, "details": outcome.details,
    }
    (out_dir / "summary.json").write_text(json.dumps(data, indent=2, default=float) + "\n")


def run_study(name: str, out_dir: str | os.PathLike, config: Config = Config()) -> Outcome:
    """Run one study into ``out_dir`` (created); returns its :class:`Outcome`."""
    entry = get_study(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        start = time.perf_counter()
        outcome = entry.run(out, config)
        outcome.wall_seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    outcome.quick = config.quick
    write_summary(out, outcome)
    study_md = out / "study.md"
    if study_md.exists():
        with study_md.open("a") as fh:
            fh.write(f"\nWall time: {outcome.wall_seconds:.1f} s ({config.threads} torch thread"
                     f"{'s' if config.threads > 1 else ''}, seed {config.seed}).\n")
    return outcome


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------
def results_block(outcomes: list[Outcome], figure_dir: str) -> str:
    """Markdown for the README's results block: per study the claim, verdict, numbers, figures."""
    lines = [
        "Produced by `gradnoise study all --out-dir DIR --update-readme README.md`; details, methods",
        "and every number's interval in each study's `study.md` (see [docs/studies.md](docs/studies.md)).",
        "Intervals are 95%.",
        "",
    ]
    for o in outcomes:
        lines += [
            f"### {o.title}",
            "",
            f"*Claim:* {o.claim} **Verdict: {o.verdict_text}** "
            f"(`gradnoise study {o.name}`{', quick mode' if o.quick else ''}, {o.wall_seconds:.0f} s).",
            "",
            *[f"- {line}" for line in o.headline],
            "",
            *[f"![{o.name}: {f}]({figure_dir}/{o.name}-{f})" for f in o.figures],
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(readme: str | os.PathLike, outcomes: list[Outcome], out_dir: Path) -> None:
    """Replace the text between the results markers; copy the figures to ``docs/results/``."""
    readme = Path(readme)
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block")
    figure_dir = readme.parent / "docs" / "results"
    figure_dir.mkdir(parents=True, exist_ok=True)
    for o in outcomes:
        for f in o.figures:
            shutil.copyfile(out_dir / o.name / f, figure_dir / f"{o.name}-{f}")
    block = f"{README_START}\n{results_block(outcomes, 'docs/results')}{README_END}"
    readme.write_text(pattern.sub(lambda _: block, text, count=1))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def run_command(args: argparse.Namespace) -> int:
    if args.list:
        for s in _STUDIES.values():
            print(f"  {s.name:<20} {s.summary}")
        print(f"  {'all':<20} every study above, each into OUT_DIR/NAME")
        return 0
    if not args.name:
        raise ValueError("name a study (see `gradnoise study --list`) or pass --list")
    if args.out_dir is None:
        raise ValueError("--out-dir is required")
    if args.update_readme and args.name != "all":
        raise ValueError("--update-readme needs `gradnoise study all` (the block shows every study)")
    check_cluster_arguments(args)
    names = study_names() if args.name == "all" else [get_study(args.name).name]
    out = Path(args.out_dir)
    outcomes = []
    with client_from_args(args) as client:
        config = Config(quick=args.quick, seed=args.seed, threads=args.threads, client=client)
        for name in names:
            target = out / name if args.name == "all" else out
            print(f"study {name}{' (quick)' if args.quick else ''} -> {target}", file=sys.stderr)
            o = run_study(name, target, config)
            print(f"{name}: claim {o.verdict_text} ({o.wall_seconds:.1f} s)")
            for line in o.headline:
                print(f"  - {line}")
            outcomes.append(o)
    if args.update_readme:
        update_readme(args.update_readme, outcomes, out)
        print(f"updated the results block of {args.update_readme}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="run a study of a published claim (tables, fits, figures, study.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce a published claim about gradient estimators: measure, fit, plot, and\n"
        "write study.md with the claim, the numbers (95% intervals) and whether it held.",
        epilog="examples:\n"
        "  gradnoise study --list\n"
        "  gradnoise study no-single-winner --out-dir out/no-single-winner\n"
        "  gradnoise study iwae-snr --out-dir /tmp/snr --quick\n"
        "  gradnoise study all --out-dir out --update-readme README.md",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="study name, or 'all'")
    p.add_argument("--list", action="store_true", help="list the studies")
    p.add_argument("--out-dir", metavar="DIR", help="output folder (for 'all': one sub-folder per study)")
    p.add_argument("--quick", action="store_true", help="reduced sizes (seconds; numbers indicative only)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default: %(default)s)")
    add_cluster_arguments(p)
    p.add_argument("--update-readme", metavar="README", help="with 'all': rewrite the README's results block "
                   "and copy the figures to docs/results/ beside it")
    p.set_defaults(func=run_command)


# the studies register themselves on import (at the end: they import the helpers above)
from . import studies_vae, studies_iwae, studies_gaussian  # noqa: E402,F401
