"""``gradnoise sweep`` and ``gradnoise list``: run the measurement engine over a grid, list names."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import pandas as pd

import estimators as gn
from estimators import registry

DEFAULT_BUDGETS = (1, 10, 100, 1000)
DEFAULT_REPLICATES = 1000


def atomic_write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    A reader (or a crash) never sees a half-written CSV: ``path`` holds the old file or the new one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            df.to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def partial_path(out: str | os.PathLike) -> str:
    """The sidecar where a sweep writing ``out`` appends each finished cell (JSON lines)."""
    return os.fspath(out) + ".partial.jsonl"


def _cell_key(problem: str, estimator: str, budget, replicates, seed) -> tuple:
    return (str(problem), str(estimator), int(budget), int(replicates), int(seed))


def _finished_cells(out: str, replicates: int, seed: int) -> dict[tuple, list[dict]]:
    """Cells already measured with the same replicates and seed: from ``out`` (a finished sweep)
    and from its sidecar (an interrupted one). A torn last sidecar line (killed mid-write) is ignored."""
    done: dict[tuple, list[dict]] = {}
    if os.path.isfile(out):
        try:
            old = pd.read_csv(out)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            old = pd.DataFrame()
        if set(gn.COLUMNS) <= set(old.columns):
            old = old[(old["replicates"] == replicates) & (old["seed"] == seed)]
            for key, g in old.groupby(["problem", "estimator", "budget"], sort=False):
                done[_cell_key(*key, replicates, seed)] = g[gn.COLUMNS].to_dict("records")
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


def sweep_to_csv(
    grid, replicates: int, seed: int, out: str | os.PathLike, *, progress: bool = True, resume: bool = True,
) -> tuple[pd.DataFrame, int]:
    """Measure ``grid`` (from :func:`estimators.engine.cells`) into ``out``, resumably.

    Each finished cell is appended (one JSON line, flushed and fsynced) to
    :func:`partial_path` ``(out)``; the CSV is written atomically at the end
    (:func:`atomic_write_csv`) and the sidecar removed. If the sweep is interrupted, re-running
    it with ``resume=True`` reuses every finished cell (same problem, estimator, budget,
    replicates and seed; cells are seeded independently, so the numbers are those of an
    uninterrupted run) and computes only the missing ones. Returns the frame (in grid order)
    and the number of cells computed now.
    """
    out = os.fspath(out)
    side = partial_path(out)
    done = _finished_cells(out, replicates, seed) if resume else {}
    if not resume and os.path.exists(side):
        os.unlink(side)
    keys = [_cell_key(p.spec, e.name, n, replicates, seed) for p, e, n in grid]
    todo = [cell for cell, key in zip(grid, keys) if key not in done]
    if done and todo and progress:
        print(f"resuming: {len(grid) - len(todo)} of {len(grid)} cells already done", file=sys.stderr)
    iterator = gn.engine.iter_measure(todo, replicates, seed)
    # the bar advances by each cell's work, N x (event + param elements), so that its ETA holds
    # for grids whose cells differ by orders of magnitude; it shows the cell count and the cell
    # being computed
    work = [n * (p.event_numel() + p.param_numel()) for p, _, n in todo]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(work), desc="sweep", file=sys.stderr, dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
    computed = 0
    try:
        with open(side, "a") as fh:
            for i, (problem, estimator, n) in enumerate(todo):
                if bar is not None:
                    bar.set_postfix_str(f"cell {i + 1}/{len(todo)}: {problem.spec} {estimator.name} N={n}")
                rows = next(iterator)
                fh.write(json.dumps(rows) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                done[_cell_key(problem.spec, estimator.name, n, replicates, seed)] = rows
                computed += 1
                if bar is not None:
                    bar.update(work[i])
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(f"interrupted: {len(done)} finished cells kept in {side}; re-run the same command to resume",
              file=sys.stderr)
        raise
    if bar is not None:
        bar.close()
    df = pd.DataFrame([row for key in keys for row in done[key]], columns=gn.COLUMNS)
    atomic_write_csv(df, out)
    os.unlink(side)
    return df, computed


def run_sweep(args: argparse.Namespace) -> int:
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
    df, computed = sweep_to_csv(grid, args.replicates, args.seed, args.out, progress=not args.quiet,
                                resume=not args.fresh)
    print(f"wrote {len(df)} rows ({len(grid)} cells, {computed} computed now) to {args.out}")
    return 0


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
        "re-running the same command computes only the missing cells. OUT is written atomically.",
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
