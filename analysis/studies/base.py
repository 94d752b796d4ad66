r"""What every study shares: the registry, the configuration and outcome, and the steps
(measure, fit, figure, verdict, write) written once.

Each study is one command that measures (through the registries and the engine: no estimator
maths here), writes its tables and figures, and says whether the claim held::

    gradnoise study --list
    gradnoise study no-single-winner --out-dir out/nsw            # full size
    gradnoise study iwae-snr --out-dir out/snr --quick            # reduced, for tests
    gradnoise study all --out-dir out --update-readme README.md   # every study + README block

Every study writes into its folder:

* ``results.csv``: the engine's tidy rows (:data:`gradnoise.engine.COLUMNS`, the sweep's schema),
  plus rows for parameter *groups* (``param`` = ``encoder`` / ``decoder``: all the group's
  tensors concatenated and summarised by :func:`gradnoise.statistics.summarise`, so the trace
  variance and its interval cover the whole group);
* ``fits.csv``: :func:`gradnoise.analysis.fit.fit_curves` of ``results.csv`` (Var = a N^b, SNR = c N^d);
* study-specific tables (``ratios.csv``, ``snr.csv``, ``ranking.csv`` ...), PNG figures;
* ``study.md``: the claim, the measured numbers with 95% intervals, and whether the claim held;
* ``summary.json``: the headline (used by ``--update-readme``).

Ratios of two variances measured in independently seeded cells get a 95% interval by the delta
method on the log scale: each variance interval is symmetric in :math:`\log`, so
:math:`s_i = (\log v_i^{hi} - \log v_i^{lo}) / (2 z_{0.975})` and
:math:`\log(v_1/v_2) \pm z_{0.975}\sqrt{s_1^2 + s_2^2}` (:func:`ratio_interval`).

A study is one module of :mod:`gradnoise.analysis.studies` that registers ``run(out_dir, config) ->
Outcome`` with :func:`study`; it measures with :func:`cell_rows` (the engine), fits and writes
``results.csv``/``fits.csv`` with :func:`write_results`, draws with :func:`new_figure`,
:func:`errorbar_series` and :func:`save_figure`, and returns an :class:`Outcome` (the verdict);
:func:`run_study` times it and writes ``summary.json``, :func:`write_study_md` its report. See
``docs/studies.md``.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats

import gradnoise as gn
from gradnoise import plugins, registry
from gradnoise.io import atomic_write_csv, atomic_write_markdown, atomic_write_text
from gradnoise.statistics import log_se

from ..fit import fit_curves
from ..plot import estimator_style


LEVEL = 0.95
Z = float(stats.norm.ppf(0.5 + LEVEL / 2))


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
    origin: plugins.Origin = plugins.BUILT_IN


_STUDIES: dict[str, Study] = {}


def study(name: str, title: str, summary: str):
    """Decorator: register ``run(out_dir, config) -> Outcome`` as the study ``name`` (a plugin's
    too: :mod:`gradnoise.plugins`, group ``gradnoise.studies``). The same function registered again
    is a no-op; another one under a taken name is a :class:`~gradnoise.registry.RegistryClash`."""
    def decorator(run):
        origin = plugins.origin_of(getattr(run, "__module__", None))
        if name in _STUDIES:
            old = _STUDIES[name]
            if registry.same_code(old.run, run):
                return run
            raise registry.RegistryClash(
                f"study {name!r} of {registry._describe(origin, run)} clashes with study {name!r} of "
                f"{registry._describe(old.origin, old.run)}; rename one of them")
        _STUDIES[name] = Study(name, title, summary, run, origin)
        return run

    return decorator


def _forget(origin: plugins.Origin) -> None:
    for name in [n for n, s in _STUDIES.items() if s.origin == origin]:
        del _STUDIES[name]


plugins.FORGET.append(_forget)      # a plugin that fails to import leaves no study behind


def _ensure_plugins() -> None:
    plugins.ensure_loaded(*plugins.GROUPS)


def study_names(*, built_in: bool = False) -> list[str]:
    """Registered studies; with ``built_in=True`` only the package's own (the README's results block)."""
    _ensure_plugins()
    return [n for n, s in _STUDIES.items() if not built_in or s.origin == plugins.BUILT_IN]


def get_study(name: str) -> Study:
    _ensure_plugins()
    if name not in _STUDIES:
        raise KeyError(f"unknown study {name!r}; valid studies: {', '.join(_STUDIES)}, all")
    return _STUDIES[name]


# --------------------------------------------------------------------------------------------
# Measuring (through the engine) and small statistics on its output
# --------------------------------------------------------------------------------------------
def with_options(spec: str, **options) -> str:
    """``spec`` with more options (``None`` values left out): ``with_options("p:k=1", seed=2)`` is
    ``"p:k=1,seed=2"``."""
    extra = ",".join(f"{k}={v}" for k, v in options.items() if v is not None)
    return spec if not extra else spec + ("," if ":" in spec else ":") + extra


def cell_rows(
    problem: gn.Problem, estimator: gn.GradientEstimator, budget: int, replicates: int, seed: int,
    groups: Mapping[str, Iterable[str]] | None = None,
) -> tuple[list[dict], dict[str, torch.Tensor], float]:
    """Rows in the sweep's schema for one cell, and the raw estimates they summarise.

    The estimates come from :func:`gradnoise.replicate_estimates` (so the per-parameter rows are
    the ones ``gradnoise sweep`` writes for the same seed and R); each entry of ``groups`` adds a
    row whose ``param`` is the group's name, summarising its tensors concatenated.
    Returns ``(rows, estimates, seconds)``.
    """
    estimates, seconds = gn.replicate_estimates(problem, estimator, budget, replicates, seed)
    rows = gn.engine.summarise_estimates(problem, estimator, budget, seed, estimates, seconds,
                                         {g: list(n) for g, n in (groups or {}).items()})
    return rows, estimates, seconds


def grid(problems, estimators, budgets, replicates: int) -> list[tuple]:
    """The cells ``(problem, estimator, budget, replicates, problem.groups)`` of every problem x
    estimator x budget, in that order, that :func:`gradnoise.engine.cells` keeps with
    ``on_invalid="skip"``: the same checks as a sweep's grid, up front (only the declared
    :class:`~gradnoise.EstimatorNotApplicable`, N below the estimator's ``min_budget`` included,
    leaves a cell out; an invalid problem or budget raises). ``budgets`` is a list, or a function
    of the estimator giving its list. For :func:`study_cells`.
    """
    cells = []
    for problem in problems:
        for name in estimators:
            estimator = gn.get_estimator(name)
            ns = budgets(estimator) if callable(budgets) else budgets
            cells += [(p, e, n, replicates, p.groups)
                      for p, e, n in gn.engine.cells([problem], [estimator], ns, on_invalid="skip")]
    return cells


def measure(config: "Config", cells, out_dir: Path) -> pd.DataFrame:
    """Measure ``cells`` (:func:`grid`) with :func:`study_cells` and write ``results.csv`` and
    ``fits.csv`` (:func:`write_results`); the results frame."""
    return write_results([row for rows, _ in study_cells(config, cells) for row in rows], out_dir)


def reduced_cell(problem, estimator, budget, replicates, seed, groups, reduce):
    """:func:`cell_rows` of one cell and ``reduce(estimates, groups)`` (None without ``reduce``): a
    study's unit of work, in this process or as a Dask cell task (the raw estimates stay where
    they were computed; only the rows and the reduction travel)."""
    rows, estimates, _ = cell_rows(problem, estimator, budget, replicates, seed, groups)
    return rows, (reduce(estimates, groups) if reduce is not None else None)


def study_cells(config: Config, cells, reduce: Callable | None = None) -> list[tuple[list[dict], object]]:
    """``(rows, reduce(estimates, groups))`` of each ``(problem, estimator, budget, replicates, groups)`` in
    ``cells``, in order (:func:`reduced_cell`): in this process, or on ``config.client``'s Dask
    workers as cell tasks (:func:`gradnoise.cluster.run_in_cell`, the task that runs a sweep's
    cells too), with the same numbers; ``reduce`` must be a module-level function, it runs where
    the cell ran."""
    if config.client is None:
        return [reduced_cell(p, e, n, r, config.seed, g, reduce) for p, e, n, r, g in cells]
    from gradnoise.cluster import map_calls, run_in_cell

    calls = [(config.threads, reduced_cell, p, e, n, r, config.seed, g, reduce) for p, e, n, r, g in cells]
    done = dict(map_calls(config.client, run_in_cell, calls))
    return [done[i] for i in range(len(cells))]


def ratio_interval(num, num_low, num_high, den, den_low, den_high):
    """Ratio of two independent variances and its 95% interval (delta method, log scale).

    Arguments are scalars or arrays; returns ``(ratio, low, high)``.
    """
    ratio = np.asarray(num, float) / np.asarray(den, float)
    s = np.sqrt(log_se(num_low, num_high) ** 2 + log_se(den_low, den_high) ** 2)
    return ratio, ratio * np.exp(-Z * s), ratio * np.exp(Z * s)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def write_results(rows: list[dict], out_dir: Path) -> pd.DataFrame:
    """``results.csv`` in the sweep's schema, and ``fits.csv`` from :func:`gradnoise.analysis.fit.fit_curves`."""
    df = pd.DataFrame(rows, columns=gn.COLUMNS)
    atomic_write_csv(df, out_dir / "results.csv")
    atomic_write_csv(fit_curves(df, x="budget"), out_dir / "fits.csv")
    return df


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 4.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes


def errorbar_series(ax, df: pd.DataFrame, x: str, y: str, low: str, high: str, *, by: str = "estimator",
                    label=None, **style) -> None:
    """One line with 95% error bars per value of ``by`` (an estimator name), in that estimator's
    colour and marker (:func:`gradnoise.analysis.plot.estimator_style`, the same in every figure)."""
    for name, g in df.groupby(by, sort=False):
        g = g.sort_values(x)
        colour, marker = estimator_style(name)
        ax.errorbar(g[x], g[y], yerr=[g[y] - g[low], g[high] - g[y]], color=colour, marker=marker,
                    **{"ms": 3, "lw": 1.2, "capsize": 2, **style},
                    label=label(name) if callable(label) else name)


def log_axes(ax, title: str, xlabel: str, ylabel: str | None = None) -> None:
    """Log-log axes with the studies' small type: a title, axis labels (``ylabel`` optional)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def save_figure(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


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
        ("`results.csv` (the sweep's schema), `fits.csv` (power-law fits), "
         if (out_dir / "results.csv").exists() else "")
        + ", ".join(f"`{f}`" for f in sorted(os.listdir(out_dir)) if f.endswith(".csv")
                    and f not in ("results.csv", "fits.csv"))
        + "; figures: " + ", ".join(f"`{f}`" for f in outcome.figures) + ".",
        "",
        *[f"![{f}]({f})" for f in outcome.figures],
        "",
    ]
    atomic_write_markdown(out_dir / "study.md", "\n".join(text), f"gradnoise study {outcome.name}")


def write_summary(out_dir: Path, outcome: Outcome) -> None:
    data = {
        "name": outcome.name, "title": outcome.title, "claim": outcome.claim, "held": outcome.held,
        "verdict": outcome.verdict_text,
        "headline": outcome.headline, "figures": outcome.figures, "quick": outcome.quick,
        "wall_seconds": outcome.wall_seconds, "details": outcome.details,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(data, indent=2, default=float) + "\n")


def study_outputs(name: str, out_dir: str | os.PathLike):
    """:func:`gradnoise.io.claim_outputs` of a study's folder: ``results.csv``, ``fits.csv``,
    ``study.md``, ``summary.json`` and every ``*.csv`` and ``*.png`` in it (each study names its own
    tables and figures only as it writes them, so a study's folder is its own: any CSV or PNG there
    that gradnoise did not write is refused before the study runs)."""
    from gradnoise.io import Beside, Columns, Figure, Json, Markdown, claim_outputs

    from ..results import FITS_REQUIRED, SWEEP_REQUIRED

    summary = Json((("name", name), ("claim", None)), f"the summary of gradnoise study {name}")
    return claim_outputs(f"gradnoise study {name}", out_dir, {
        "results.csv": Columns(SWEEP_REQUIRED, "a gradnoise results CSV"),
        "fits.csv": Columns(FITS_REQUIRED, "a gradnoise fits CSV"),
        "study.md": Markdown(rf"^Regenerate: `gradnoise study {re.escape(name)} "), "summary.json": summary,
        "*.csv": Beside("summary.json", summary, f"a table of gradnoise study {name}"), "*.png": Figure()})


def run_study(name: str, out_dir: str | os.PathLike, config: Config = Config()) -> Outcome:
    """Run one study into ``out_dir`` (created; :func:`study_outputs` checked first); returns its :class:`Outcome`."""
    entry = get_study(name)
    out = Path(out_dir)
    claim = study_outputs(entry.name, out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with gn.engine.torch_threads(config.threads):
            start = time.perf_counter()
            outcome = entry.run(out, config)
            outcome.wall_seconds = time.perf_counter() - start
        outcome.quick = config.quick
        write_summary(out, outcome)
        study_md = out / "study.md"
        if study_md.exists():
            with study_md.open("a") as fh:
                fh.write(f"\nWall time: {outcome.wall_seconds:.1f} s ({config.threads} torch thread"
                         f"{'s' if config.threads > 1 else ''}, seed {config.seed}).\n")
    finally:                                 # what it wrote before a failure stays its own
        claim.record()
    return outcome
