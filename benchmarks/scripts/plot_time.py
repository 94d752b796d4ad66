"""Time of ``gradnoise.analysis.plot.plot_all`` (the report's figures) on a sweep, this checkout
against a baseline commit's ``analysis/plot.py`` in the same run, and whether the figures are the
same.

    python -m gradnoise.analysis report --out-dir /tmp/r --fresh --quiet      # a sweep.csv and fits.csv
    python benchmarks/scripts/plot_time.py /tmp/r/sweep.csv --fits /tmp/r/fits.csv
    python benchmarks/scripts/plot_time.py /tmp/r/sweep.csv --baseline main --repeats 5

The baseline is ``git show BASELINE:analysis/plot.py`` (default: the merge-base of HEAD and
``main``) loaded as a module of this checkout's ``gradnoise.analysis`` (so both use this
checkout's ``fit`` and ``results``: only the plotting code differs). Each version draws every
problem's figure (PNG and SVG) into a new folder: ``workers=1`` (in this process) and the default
(``workers=None``: forked processes, one per CPU this process may use, at most one per figure).
Versions alternate; each is run once to warm up (imports, font cache), then ``--repeats`` times;
the best wall and CPU seconds (this process and its children) are printed, with new/old ratios.

``--stages`` adds, for ``workers=1``, the CPU seconds by stage: building the figures
(``problem_figure``), measuring the tight bounding box (``Figure.get_tightbbox`` outside a save),
and saving each format (``Figure.savefig``, which lays the figure out and draws it again).

``--check`` compares the two versions' files (``workers=1``): PNG pixels (RGBA, exactly), and SVG
text after removing what differs between any two saves (the date, matplotlib's random ids) and
empty ``<g id="xtick_N"/>`` groups (ticks that draw nothing), then renumbering tick ids; and the
new version's files drawn by one process and by the default processes.

Run at one thread (the variables are set here before numpy is imported). Timings mean something
only on a quiet machine: the load average is printed at the start and the end.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def load_baseline(ref: str, folder: str):
    """``analysis/plot.py`` at ``ref``, imported as ``gradnoise.analysis._plot_baseline``."""
    import gradnoise.analysis  # noqa: F401  (the package its relative imports resolve in)

    path = os.path.join(folder, "plot_baseline.py")
    with open(path, "w") as fh:
        fh.write(_git("show", f"{ref}:analysis/plot.py"))
    spec = importlib.util.spec_from_file_location("gradnoise.analysis._plot_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_plot_all(module, results, fits, out: str, workers) -> tuple[float, float]:
    """Wall and CPU seconds (this process and the children it reaped) of one ``plot_all``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    module.plot_all(results, fits, out, workers=workers)
    return time.perf_counter() - wall, cpu_seconds() - cpu


@contextlib.contextmanager
def stage_clock(module, totals: collections.Counter):
    """Add the CPU seconds of ``problem_figure``, of ``get_tightbbox`` outside ``savefig`` and of
    ``savefig`` by format to ``totals`` while in the block (process time: one process)."""
    from matplotlib.figure import Figure

    saving = []
    orig_save, orig_bbox, orig_build = Figure.savefig, Figure.get_tightbbox, module.problem_figure

    def savefig(self, fname, *args, **kwargs):
        saving.append(True)
        start = time.process_time()
        try:
            return orig_save(self, fname, *args, **kwargs)
        finally:
            totals["save " + (kwargs.get("format") or str(fname).rsplit(".", 1)[-1])] += time.process_time() - start
            saving.pop()

    def get_tightbbox(self, *args, **kwargs):
        if saving:
            return orig_bbox(self, *args, **kwargs)
        start = time.process_time()
        try:
            return orig_bbox(self, *args, **kwargs)
        finally:
            totals["tight bbox"] += time.process_time() - start

    def problem_figure(*args, **kwargs):
        start = time.process_time()
        try:
            return orig_build(*args, **kwargs)
        finally:
            totals["build figure"] += time.process_time() - start

    Figure.savefig, Figure.get_tightbbox, module.problem_figure = savefig, get_tightbbox, problem_figure
    try:
        yield totals
    finally:
        Figure.savefig, Figure.get_tightbbox, module.problem_figure = orig_save, orig_bbox, orig_build


def _svg_text(path: str) -> str:
    text = Path(path).read_text()
    text = re.sub(r"<dc:date>.*?</dc:date>", "", text)
    ids: dict[str, str] = {}
    text = re.sub(r"\b[A-Za-z][A-Za-z0-9_]*?[0-9a-f]{10}\b", lambda m: ids.setdefault(m.group(0), f"id{len(ids)}"), text)
    text = re.sub(r'\n\s*<g id="[xy]tick_\d+"/>', "", text)
    return re.sub(r'id="([xy]tick)_\d+"', r'id="\1"', text)


def compare(old_dir: str, new_dir: str) -> list[str]:
    """One line per file: PNG pixels equal (or how many differ, by how much), SVG text equal."""
    from PIL import Image

    lines = []
    for name in sorted(os.listdir(old_dir)):
        old, new = os.path.join(old_dir, name), os.path.join(new_dir, name)
        if name.startswith(".") or not os.path.exists(new):
            continue
        if name.endswith(".png"):
            a = np.asarray(Image.open(old).convert("RGBA"), dtype=int)
            b = np.asarray(Image.open(new).convert("RGBA"), dtype=int)
            if a.shape != b.shape:
                lines.append(f"{name}: sizes differ, {a.shape[1]}x{a.shape[0]} -> {b.shape[1]}x{b.shape[0]} px")
                continue
            diff = np.abs(a - b).max(axis=2)
            verdict = ("pixels equal" if not diff.any()
                       else f"{int((diff > 0).sum())} pixels differ, by up to {int(diff.max())}/255")
            lines.append(f"{name}: {verdict}"
                         f" ({a.shape[1]}x{a.shape[0]} px; {os.path.getsize(old)} -> {os.path.getsize(new)} bytes)")
        elif name.endswith(".svg"):
            lines.append(f"{name}: {'same text' if _svg_text(old) == _svg_text(new) else 'TEXT DIFFERS'} "
                         f"(after normalising dates, ids and empty tick groups)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", metavar="SWEEP.csv", help="a sweep's CSV (e.g. a report's sweep.csv)")
    parser.add_argument("--fits", metavar="FITS.csv", help="its fits (default: gradnoise fit's, computed here)")
    parser.add_argument("--baseline",
                        help="commit whose analysis/plot.py is the baseline (default: the merge-base with main)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (best taken; default: %(default)s)")
    parser.add_argument("--stages", action="store_true", help="CPU seconds by stage at workers=1")
    parser.add_argument("--check", action="store_true", help="compare the two versions' files")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    from gradnoise.analysis import fit as fit_mod
    from gradnoise.analysis import plot as plot_mod
    from gradnoise.analysis.results import read_csv

    results = read_csv(args.results, what=f"results CSV {args.results}")
    start = time.process_time()
    computed = fit_mod.fit_curves(results)
    t_fit = time.process_time() - start
    fits = pd.read_csv(args.fits, dtype={"code_version": str}) if args.fits else computed
    try:
        baseline = args.baseline or _git("merge-base", "HEAD", "main").strip()
        _git("cat-file", "-e", f"{baseline}:analysis/plot.py")
    except subprocess.CalledProcessError as err:
        parser.error(f"no analysis/plot.py at {args.baseline or 'the merge-base of HEAD and main'} "
                     f"({(err.stderr.strip() or 'git failed').splitlines()[-1]}); pass --baseline COMMIT")
    head = _git("rev-parse", "--short", "HEAD").strip()
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--", "analysis/plot.py").strip() else ""
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"old": load_baseline(baseline, tmp), "new": plot_mod}
        n_problems = len(results["problem"].unique())
        default_workers = min(n_problems, len(os.sched_getaffinity(0)))
        print(f"plot_all on {args.results}: {n_problems} figures x PNG + SVG; old = analysis/plot.py at "
              f"{baseline[:10]}, new = this checkout ({head}{dirty}); 1 thread per process; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
        print(f"fit_curves (the report's fits): {t_fit:.2f} CPU s")
        best: dict = {}
        for workers, label in ((1, "workers=1"), (None, f"default ({default_workers} processes)")):
            for name, module in versions.items():          # warm-up: imports, font cache, first draws
                module.plot_all(results, fits, os.path.join(tmp, f"warm-{name}"), workers=workers)
            for rep in range(args.repeats):
                for name, module in versions.items():
                    out = os.path.join(tmp, f"{name}-w{workers or 'default'}-{rep}")
                    wall, cpu = time_plot_all(module, results, fits, out, workers)
                    old_wall, old_cpu = best.get((label, name), (np.inf, np.inf))
                    best[(label, name)] = (min(wall, old_wall), min(cpu, old_cpu))
        print(f"\nbest of {args.repeats} | old wall | new wall | old / new | old CPU | new CPU | old / new")
        print("---|---|---|---|---|---|---")
        for label in dict.fromkeys(k[0] for k in best):
            (ow, oc), (nw, nc) = best[(label, "old")], best[(label, "new")]
            print(f"{label} | {ow:.2f} s | {nw:.2f} s | {ow / nw:.2f}x | {oc:.2f} s | {nc:.2f} s | {oc / nc:.2f}x")
        if args.stages:
            print(f"\nCPU seconds by stage, workers=1, best of {args.repeats} per stage\n")
            print("stage | old | new\n---|---|---")
            stages = {}
            for name, module in versions.items():
                runs = []
                for rep in range(args.repeats):
                    with stage_clock(module, collections.Counter()) as totals:
                        module.plot_all(results, fits, os.path.join(tmp, f"stages-{name}-{rep}"), workers=1)
                    runs.append(totals)
                stages[name] = {k: min(r[k] for r in runs) for k in runs[0]}
            for key in dict.fromkeys([*stages["old"], *stages["new"]]):
                print(f"{key} | {stages['old'].get(key, 0):.2f} | {stages['new'].get(key, 0):.2f}")
            print(f"sum | {sum(stages['old'].values()):.2f} | {sum(stages['new'].values()):.2f}")
        if args.check:
            print("\nold vs new files (workers=1):")
            for line in compare(os.path.join(tmp, "old-w1-0"), os.path.join(tmp, "new-w1-0")):
                print("  " + line)
            forked = compare(os.path.join(tmp, "new-w1-0"), os.path.join(tmp, "new-wdefault-0"))
            same = sum(("pixels equal" in line or "same text" in line) for line in forked)
            print(f"new, workers=1 vs default: {same} of {len(forked)} files the same")
        load = os.getloadavg()[0]
        busy = " (above 1.5: other work shared the CPUs; repeat)" if load > 1.5 else ""
        print(f"\nload average {load:.2f} at the end{busy}")


if __name__ == "__main__":
    main()
