"""``gradnoise sweep`` and ``gradnoise list``: run the measurement engine over a grid, list names."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass

import pandas as pd

import gradnoise as gn
from gradnoise import registry
from gradnoise.io import atomic_write_csv, exclusive_lock
from gradnoise.provenance import code_version

from .cluster import add_cluster_arguments, check_cluster_arguments, client_from_args

DEFAULT_BUDGETS = (1, 10, 100, 1000)
DEFAULT_REPLICATES = 1000


def partial_path(out: str | os.PathLike) -> str:
    """The sidecar where a sweep writing ``out`` appends each finished cell (JSON lines)."""
    return os.fspath(out) + ".partial.jsonl"


def lock_path(out: str | os.PathLike) -> str:
    """The lock file a sweep holds while it writes ``out``."""
    return os.fspath(out) + ".lock"


def check_output_file(path: str | os.PathLike) -> str:
    """Before computing anything: ``path`` names no folder, and its folder exists (created if
    needed) and can be written. Returns the path; one-line ``ValueError`` otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"output {path!r} is a folder; give a file name such as {os.path.join(path, 'sweep.csv')!r}")
    _writable_folder(os.path.dirname(os.path.abspath(path)), f"cannot write {path!r}")
    return path


def check_output_dir(path: str | os.PathLike) -> str:
    """Before computing anything: ``path`` is a folder (created if needed) that can be written."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output folder {path!r} is a file; give a folder name")
    _writable_folder(path, f"cannot write into the output folder {path!r}")
    return path


def _writable_folder(folder: str, what: str) -> None:
    """Create ``folder`` if needed, then create and remove a file in it (permissions, read-only
    file systems, quotas all show here)."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".gradnoise-write-probe.", dir=folder)
    except OSError as err:
        raise ValueError(f"{what}: {err.strerror} (folder {folder!r})") from None
    os.close(fd)
    os.unlink(probe)


def output_lock(out: str | os.PathLike):
    """An exclusive lock on ``out`` (:func:`gradnoise.io.exclusive_lock` on :func:`lock_path`)
    while a sweep writes it: a second sweep to the same output fails at once, naming the first."""
    return exclusive_lock(lock_path(out), repr(os.fspath(out)))


def _cell_key(problem: str, estimator: str, budget, replicates, seed) -> tuple:
    return (str(problem), str(estimator), int(budget), int(replicates), int(seed))


def _finished_cells(out: str, replicates: int, seed: int) -> dict[tuple, list[dict]]:
    """Cells already measured with the same replicates and seed, whatever code measured them:
    from ``out`` (a finished sweep) and from its sidecar (an interrupted one), the sidecar's
    winning. A torn last sidecar line (killed mid-write) is ignored."""
    done: dict[tuple, list[dict]] = {}
    if os.path.isfile(out):
        try:
            old = pd.read_csv(out)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            old = pd.DataFrame()
        if {"problem", "estimator", "budget", "replicates", "seed"} <= set(old.columns):
            old = old[(old["replicates"] == replicates) & (old["seed"] == seed)]
            old = old.reindex(columns=gn.COLUMNS)
            for key, g in old.groupby(["problem", "estimator", "budget"], sort=False):
                done[_cell_key(*key, replicates, seed)] = g.to_dict("records")
    side = partial_path(out)
    if os.path.isfile(side):
        with open(side) as fh:
            for line in fh:
                try:
                    rows = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rows and rows[0].get("replicates") == replicates and rows[0].get("seed") == seed:
                    r = rows[0]
                    done[_cell_key(r["problem"], r["estimator"], r["budget"], replicates, seed)] = rows
    return done


@dataclass(frozen=True)
class SweepOutcome:
    """What :func:`sweep_to_csv` did: the rows (grid order) and how many cells it computed now,
    reused (same code version) and recomputed because other code had computed them."""

    results: pd.DataFrame
    computed: int
    reused: int
    stale: int
    stale_versions: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line, e.g. ``12 cells: 2 computed now, 10 reused (same code 7086f487b454)``."""
        total = self.computed + self.reused
        parts = [f"{self.computed} computed now"]
        if self.reused:
            parts.append(f"{self.reused} reused from an earlier run of the same code ({code_version()})")
        if self.stale:
            was = ", ".join(v if isinstance(v, str) and v else "unrecorded" for v in self.stale_versions)
            parts.append(f"{self.stale} of them recomputed because other code ({was}) had computed them")
        return f"{total} cells: " + ", ".join(parts)


def sweep_to_csv(
    grid, replicates: int, seed: int, out: str | os.PathLike, *, progress: bool = True, resume: bool = True,
    client=None, threads: int | None = 1, max_cost_evals: float | None = gn.engine.MAX_COST_EVALS,
) -> SweepOutcome:
    """Measure ``grid`` (from :func:`gradnoise.engine.cells`) into ``out``, resumably.

    Each finished cell is appended (one JSON line, flushed and fsynced) to
    :func:`partial_path` ``(out)``; the CSV is written atomically at the end
    (:func:`atomic_write_csv`) and the sidecar removed. With ``resume=True`` a cell already in
    ``out`` or its sidecar is reused only when it has the same problem, estimator, budget,
    replicates and seed **and** was computed by the same code
    (:func:`gradnoise.provenance.code_version`, recorded in each row): after a change of the
    estimators' code every affected cell is computed anew, and :meth:`SweepOutcome.describe`
    says how many were reused and why. Cells are seeded independently, so resumed numbers are
    those of an uninterrupted run. The output is locked (:func:`output_lock`) while the sweep
    runs, and checked writable before the first cell is computed; every cell is checked against
    memory and ``max_cost_evals`` (:func:`gradnoise.engine.check_grid`) before the first is computed.

    Cells run at ``threads`` torch intra-op threads (default 1; ``None``: torch's setting), in
    this process, or with ``client`` (a ``distributed.Client``) on its Dask workers
    (:func:`gradnoise.cluster.map_cells`): the same rows, bitwise, written to the sidecar as
    cells arrive in any order, the CSV in grid order.
    """
    out = check_output_file(out)
    gn.engine.check_threads(threads)
    gn.engine.check_grid(grid, replicates, max_cost_evals=max_cost_evals)
    with output_lock(out):
        return _sweep_locked(grid, replicates, seed, out, progress=progress, resume=resume, client=client,
                             threads=threads)


def _sweep_locked(grid, replicates, seed, out, *, progress, resume, client=None, threads=1) -> SweepOutcome:
    side = partial_path(out)
    found = _finished_cells(out, replicates, seed) if resume else {}
    if not resume and os.path.exists(side):
        os.unlink(side)
    version = code_version()
    keys = [_cell_key(p.spec, e.name, n, replicates, seed) for p, e, n in grid]
    done = {k: rows for k, rows in found.items() if rows[0].get("code_version") == version}
    stale_versions = tuple(sorted({str(found[k][0].get("code_version")) if isinstance(found[k][0].get("code_version"), str)
                                   else "" for k in keys if k in found and k not in done}))
    stale = sum(1 for k in keys if k in found and k not in done)
    todo = [cell for cell, key in zip(grid, keys) if key not in done]
    reused = len(grid) - len(todo)
    if progress and (reused or stale):
        print(f"reusing {reused} of {len(grid)} cells computed by the same code; "
              f"recomputing {stale} computed by other code" if stale else
              f"resuming: {reused} of {len(grid)} cells already done by the same code", file=sys.stderr)
    if client is None:
        finished = enumerate(gn.engine.iter_measure(todo, replicates, seed))
    else:
        from gradnoise.cluster import map_cells

        finished = map_cells(client, todo, replicates, seed, threads=threads)
    # the bar advances by each cell's work, N x (event + param elements), so that its ETA holds
    # for grids whose cells differ by orders of magnitude; it shows the cell count and the cell
    # being computed (sequential) or the last one finished (on a cluster, in completion order)
    work = [n * (p.event_numel() + p.param_numel()) for p, _, n in todo]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(work), desc="sweep", file=sys.stderr, dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def label(i):
        problem, estimator, n = todo[i]
        return f"{problem.spec} {estimator.name} N={n}"

    computed = 0
    fh = None
    try:
        if bar is not None:
            bar.set_postfix_str(f"cell 1/{len(todo)}: {label(0)}" if client is None else
                                f"0/{len(todo)} cells on {len(client.nthreads())} Dask workers")
        with gn.engine.torch_threads(threads) if client is None else contextlib.nullcontext():
            for i, rows in finished:
                if fh is None:
                    fh = open(side, "a")
                fh.write(json.dumps(rows) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                problem, estimator, n = todo[i]
                done[_cell_key(problem.spec, estimator.name, n, replicates, seed)] = rows
                computed += 1
                if bar is not None:
                    bar.update(work[i])
                    if client is not None:
                        bar.set_postfix_str(f"{computed}/{len(todo)} cells, last: {label(i)}")
                    elif computed < len(todo):
                        bar.set_postfix_str(f"cell {computed + 1}/{len(todo)}: {label(computed)}")
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if computed:
            print(f"interrupted: {computed} finished cells kept in {side}; re-run the same command to resume",
                  file=sys.stderr)
        raise
    finally:
        if hasattr(finished, "close"):
            finished.close()          # on a cluster: cancels the cells not yet finished
        if fh is not None:
            fh.close()
    if bar is not None:
        bar.close()
    df = pd.DataFrame([row for key in keys for row in done[key]], columns=gn.COLUMNS)
    atomic_write_csv(df, out)
    if os.path.exists(side):
        os.unlink(side)
    return SweepOutcome(df, computed, reused, stale, stale_versions)


def run_sweep(args: argparse.Namespace) -> int:
    check_output_file(args.out)
    check_cluster_arguments(args)
    explicit = bool(args.problem or args.estimator)
    problems = args.problem or gn.problem_names(default_sweep=True)
    estimators = args.estimator or gn.estimator_names()
    budgets = args.budget or list(DEFAULT_BUDGETS)
    skipped: list[str] = []
    grid = gn.engine.cells(problems, estimators, budgets, device=args.device, on_invalid="skip", skipped=skipped)
    if explicit:
        for line in skipped:
            print(f"skipped: {line}", file=sys.stderr)
    if not grid:
        raise ValueError("no valid problem x estimator x budget combination:\n  " + "\n  ".join(skipped))
    with client_from_args(args) as client:
        outcome = sweep_to_csv(grid, args.replicates, args.seed, args.out, progress=not args.quiet,
                               resume=not args.fresh, client=client, threads=args.threads,
                               max_cost_evals=args.max_cost_evals)
    print(f"wrote {len(outcome.results)} rows ({outcome.describe()}) to {args.out}")
    return 0


def max_cost_evals_argument(text: str) -> float:
    """``--max-cost-evals``: a number > 0 (``1e12``; ``inf``: no bound)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0 such as 1e12 (inf: no bound), got {text!r}")
    return value


def run_list(args: argparse.Namespace) -> int:
    print("problems (name:option=default,...):")
    for entry in registry.problem_entries():
        opts = ",".join(f"{k}={v}" for k, v in entry.defaults().items())
        print(f"  {entry.name + (':' + opts if opts else ''):<52} {entry.summary}")
    print("\nestimators:")
    for entry in registry.estimator_entries():
        opts = ",".join(f"{k}={v}" for k, v in entry.defaults().items())
        print(f"  {entry.name + (':' + opts if opts else ''):<52} {entry.summary}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="measure estimators over problems x budgets, write a tidy CSV",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure bias, variance (with CI), SNR, MSE and cost of gradient estimators.",
        epilog="examples:\n"
        "  gradnoise sweep --out sweep.csv                      # every problem x estimator\n"
        "  gradnoise sweep --problem gaussian-cos:k=5 --estimator reinforce --estimator reparam \\\n"
        "      --budget 1 --budget 10 --budget 100 --replicates 2000 --seed 1 --out cos.csv\n"
        "invalid combinations (e.g. reparam on bernoulli-toy) are skipped with a note on stderr.\n"
        "resumable: each finished cell is appended to OUT.partial.jsonl; after Ctrl-C or a kill,\n"
        "re-running the same command computes only the missing cells. OUT is written atomically.\n"
        "parallel: --workers 2 runs the cells on 2 local worker processes, --scheduler tcp://HOST:8786\n"
        "on a running Dask cluster; the numbers are the same, bitwise (docs/scaling.md).",
    )
    p.add_argument("--problem", action="append", metavar="P", help="problem name with options (repeatable; default: all but the trained digits-* models, which take minutes each)")
    p.add_argument("--estimator", action="append", metavar="E", help="estimator name (repeatable; default: all)")
    p.add_argument("--budget", action="append", type=int, metavar="N",
                   help=f"sample budget N (K for iwae) (repeatable; default: {' '.join(map(str, DEFAULT_BUDGETS))})")
    p.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES, metavar="R", help="independent estimates per cell (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default="sweep.csv", help="output CSV (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--fresh", action="store_true",
                   help="recompute every cell (default: reuse finished cells of an interrupted or earlier run)")
    p.add_argument("--max-cost-evals", type=max_cost_evals_argument, default=gn.engine.MAX_COST_EVALS, metavar="M",
                   help="refuse, before computing, a cell whose cost evaluations R x (per estimate + warm-up) "
                        "exceed M (default: %(default).0e; inf: no bound)")
    add_cluster_arguments(p)
    p.set_defaults(func=run_sweep)

    p = sub.add_parser(
        "list", help="list problems (with options and defaults) and estimators",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="List the registered problems, with their options and defaults, and the estimators.",
        epilog="examples:\n"
        "  gradnoise list\n"
        "  gradnoise sweep --problem gaussian-cos:k=5 --estimator reinforce-loo --out cos.csv   # then use a name",
    )
    p.set_defaults(func=run_list)
