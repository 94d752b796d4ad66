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
from gradnoise import provenance
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


#: the columns that make a CSV a gradnoise results file (and key its cells)
RESULT_KEYS = ("problem", "estimator", "param", "budget", "replicates", "seed")


def read_results_file(out: str) -> pd.DataFrame | None:
    """The rows already in ``out``: None when it does not exist or is empty; one-line
    ``ValueError`` when it is not a gradnoise results file (a sweep never overwrites such a
    file: it could be anyone's notes, data or README)."""
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        return None
    refuse = (f"refusing to overwrite {out}: it is not a gradnoise results file ({{}}); "
              f"choose another --out, or move the file away")
    try:
        old = pd.read_csv(out, dtype={"code_version": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(refuse.format(f"not a readable CSV: {str(err).splitlines()[0]}")) from None
    missing = [c for c in RESULT_KEYS if c not in old.columns]
    if missing:
        raise ValueError(refuse.format(f"no column {', '.join(missing)}"))
    keys = old[list(RESULT_KEYS[3:])].apply(pd.to_numeric, errors="coerce")
    if keys.isna().any().any():
        raise ValueError(refuse.format("budget, replicates and seed are not all numbers"))
    return old.reindex(columns=list(dict.fromkeys([*gn.COLUMNS, *old.columns])))


def _cells_of(rows: pd.DataFrame) -> dict[tuple, list[dict]]:
    return {_cell_key(*key): g.to_dict("records")
            for key, g in rows.groupby(["problem", "estimator", "budget", "replicates", "seed"], sort=False)}


def _sidecar_cells(out: str) -> dict[tuple, list[dict]]:
    """Cells of an interrupted sweep, from its sidecar; a torn last line (killed mid-write) is
    ignored."""
    done: dict[tuple, list[dict]] = {}
    side = partial_path(out)
    if os.path.isfile(side):
        with open(side) as fh:
            for line in fh:
                try:
                    rows = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rows:
                    r = rows[0]
                    done[_cell_key(r["problem"], r["estimator"], r["budget"], r["replicates"], r["seed"])] = rows
    return done


def _clashes(kept: dict[tuple, list[dict]], keys: list[tuple]) -> list[tuple]:
    """Kept cells that would sit beside one of ``keys`` as the same problem, estimator, N and
    seed at another R: fits would count the same point twice."""
    ours = {k[:3] + k[4:] for k in keys}
    return [k for k in kept if k[:3] + k[4:] in ours]


@dataclass(frozen=True)
class SweepOutcome:
    """What :func:`sweep_to_csv` did: the grid's rows (grid order) and how many cells it computed
    now, reused (same code), recomputed because other code had computed them (``changed``: what
    changed, cells by part), computed because their code cannot be hashed (``unhashable``: the
    reasons), and how many rows of other cells it kept in the file."""

    results: pd.DataFrame
    computed: int
    reused: int
    stale: int
    changed: tuple[tuple[str, int], ...] = ()
    unhashable: tuple[tuple[str, int], ...] = ()
    kept_rows: int = 0
    version: str = ""

    def describe(self) -> str:
        """One line, e.g. ``12 cells: 2 computed now, 10 reused from an earlier run of the same
        code (7086f487b454)``, naming what changed where cells were recomputed."""
        total = self.computed + self.reused
        parts = [f"{self.computed} computed now"]
        if self.reused:
            parts.append(f"{self.reused} reused from an earlier run of the same code ({self.version or code_version()})")
        if self.stale:
            what = ", ".join(f"{part} ({n} cell{'s' * (n != 1)})" for part, n in self.changed)
            parts.append(f"{self.stale} of them recomputed because their code changed since: {what}")
        if self.unhashable:
            why = "; ".join(f"{reason} ({n} cell{'s' * (n != 1)})" for reason, n in self.unhashable)
            parts.append(f"never reused because part of their code cannot be hashed: {why}")
        if self.kept_rows:
            parts.append(f"{self.kept_rows} rows of other cells kept in the file")
        return f"{total} cells: " + ", ".join(parts)


def _what_changed(old: str, new: str, problem: str, estimator: str) -> str:
    """Which part of a cell's code changed between two ``code_version`` texts, in words."""
    before, after = provenance.version_parts(old), provenance.version_parts(new)
    said = []
    if before.get("package") != after.get("package"):
        said.append(f"gradnoise's code ({before.get('package') or 'unrecorded'} -> {after['package']})")
    for part, name in (("problem", problem), ("estimator", estimator)):
        if before.get(part) != after.get(part):
            said.append(f"the code of {part} {name}" + ("" if part in before else " (first hashed now)"))
        elif before.get(f"{part}-from") != after.get(f"{part}-from"):     # a plugin's name or version
            said.append(f"the plugin of {part} {name} ({before.get(f'{part}-from') or 'unrecorded'} -> "
                        f"{after.get(f'{part}-from') or 'none'})")
    return " and ".join(said) or "the code"


def sweep_to_csv(
    grid, replicates: int, seed: int, out: str | os.PathLike, *, progress: bool = True, resume: bool = True,
    client=None, threads: int | None = 1, replace: bool = False,
    max_cost_evals: float | None = gn.engine.MAX_COST_EVALS,
) -> SweepOutcome:
    """Measure ``grid`` (from :func:`gradnoise.engine.cells`) into ``out``, resumably.

    Each finished cell is appended (one JSON line, flushed and fsynced) to
    :func:`partial_path` ``(out)``; the CSV is written atomically at the end
    (:func:`atomic_write_csv`) and the sidecar removed. With ``resume=True`` a cell already in
    ``out`` or its sidecar is reused only when it has the same problem, estimator, budget,
    replicates and seed **and** was computed by the same code
    (:func:`gradnoise.provenance.cell_version`, recorded in each row as ``code_version``: the
    package's code, and the code of a problem or estimator from outside it): after a change of
    that code every affected cell is computed anew, and :meth:`SweepOutcome.describe` says how
    many were reused and what changed. A cell whose code cannot be hashed is never reused.
    Cells are seeded independently, so resumed numbers are those of an uninterrupted run. The
    output is locked (:func:`output_lock`) while the sweep runs, and checked writable before
    the first cell is computed; every cell is checked against memory and
    ``max_cost_evals`` (:func:`gradnoise.engine.check_grid`) before the first is computed.

    ``out`` keeps its rows of other cells (another grid, seed or R): the file holds the union,
    each row keyed by the code that computed it; :attr:`SweepOutcome.results` holds this grid's
    rows. A file that is not a gradnoise results file is never overwritten, and rows that would
    clash with this grid's (the same problem, estimator, N and seed at another R) are refused,
    unless ``replace=True``, which drops the file's other rows.

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
                             threads=threads, replace=replace)


def _sweep_locked(grid, replicates, seed, out, *, progress, resume, client=None, threads=1, replace=False) -> SweepOutcome:
    side = partial_path(out)
    old = read_results_file(out)                       # refuses a file that is not ours, first
    keys = [_cell_key(p.spec, e.name, n, replicates, seed) for p, e, n in grid]
    found = {} if old is None else _cells_of(old)
    found.update(_sidecar_cells(out))
    kept = {} if replace else {k: rows for k, rows in found.items() if k not in set(keys)}
    clashes = _clashes(kept, keys)
    if clashes:
        p, e, n, r, s = clashes[0]
        raise ValueError(f"{out} already holds {p} {e} N={n} seed {s} at R={r} ({len(clashes)} such cells); this "
                         f"sweep measures them at R={replicates}, and fits would count both: write to another "
                         f"--out, or pass --replace to drop the file's other rows")
    if not resume:
        found = {}
        if os.path.exists(side):
            os.unlink(side)
    versions: dict[tuple[int, int], provenance.CellVersion] = {}
    for problem, estimator, _ in grid:
        if (id(problem), id(estimator)) not in versions:
            versions[(id(problem), id(estimator))] = provenance.cell_version(problem, estimator)
    version_of = [versions[(id(p), id(e))] for p, e, _ in grid]
    done: dict[tuple, list[dict]] = {}
    changed: dict[str, int] = {}
    unhashable: dict[str, int] = {}
    stale = 0
    for (problem, estimator, _), key, version in zip(grid, keys, version_of):
        if not version.reusable:
            unhashable[version.reason] = unhashable.get(version.reason, 0) + 1
        if key not in found:
            continue
        old_version = found[key][0].get("code_version")
        old_version = old_version if isinstance(old_version, str) else ""
        if old_version == version.text and version.reusable:
            done[key] = found[key]
        elif old_version != version.text:
            stale += 1
            what = _what_changed(old_version, version.text, problem.spec, estimator.name)
            changed[what] = changed.get(what, 0) + 1
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
                                f"0/{len(todo)} cells on {len(client.nthreads())} workers")
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
    kept_rows = [row for rows in kept.values() for row in rows]
    columns = list(dict.fromkeys([*gn.COLUMNS, *(c for row in kept_rows for c in row)]))
    atomic_write_csv(pd.concat([df, pd.DataFrame(kept_rows, columns=columns)], ignore_index=True)
                     if kept_rows else df, out)
    if os.path.exists(side):
        os.unlink(side)
    return SweepOutcome(df, computed, reused, stale, tuple(changed.items()), tuple(unhashable.items()),
                        len(kept_rows), provenance.code_version())


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
    with client_from_args(args, grid, args.replicates) as client:
        outcome = sweep_to_csv(grid, args.replicates, args.seed, args.out, progress=not args.quiet,
                               resume=not args.fresh, client=client, threads=args.threads, replace=args.replace,
                               max_cost_evals=args.max_cost_evals)
    print(f"wrote {len(outcome.results) + outcome.kept_rows} rows ({outcome.describe()}) to {args.out}")
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
    """The registered names with their options, summaries and sources (``built in``, or a plugin's
    distribution name and version, module or file)."""
    for title, entries in (("problems (name:option=default,...):", registry.problem_entries()),
                           ("\nestimators:", registry.estimator_entries())):
        print(title)
        for entry in entries:
            opts = ",".join(f"{k}={v}" for k, v in entry.defaults().items())
            print(f"  {entry.name + (':' + opts if opts else ''):<52} {f'[{entry.origin}]':<14} {entry.summary}")
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
        "OUT keeps its rows of other cells (the union is written); a file that is not a gradnoise\n"
        "results file is never overwritten.\n"
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
    p.add_argument("--replace", action="store_true",
                   help="drop OUT's rows of other cells (default: keep them; OUT then holds the union)")
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
