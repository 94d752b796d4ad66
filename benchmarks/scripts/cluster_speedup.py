"""End-to-end wall time of ``gradnoise`` commands, sequential against ``--workers N``, in one run.

    python benchmarks/scripts/cluster_speedup.py [--workers 2] [--repeats 1] [--grids big,report4,report,small] [--startup] [--dask]

Not an asv benchmark (this folder has no ``__init__.py``). Each measurement is the command as a
user runs it, ``python -m gradnoise.analysis ...`` in a fresh process: interpreter start-up, the
imports of torch and scipy, building the grid, the cluster's start-up and shut-down, the cells,
writing the outputs. For each grid it runs the sequential command and the ``--workers N`` one
(local workers forked from the command's process, :class:`gradnoise.pool.LocalPool`), and with
``--dask`` the ``--workers N`` one on a Dask ``LocalCluster`` as well
(``GRADNOISE_LOCAL_WORKERS=dask``, what ``--workers`` ran on before), alternately (``--repeats``
times each, into fresh output folders), and prints

* the wall time of each and the speed-up (best sequential / best parallel, and the range over
  the repeats);
* the peak memory of the whole process tree (the command and its workers), as the sum of each
  process's proportional set size (PSS, ``/proc/PID/smaps_rollup``: pages shared by forked
  workers counted once overall), sampled every 0.5 s (more often costs the measured command a
  good part of a core), and its ratio to the sequential run's;
* the CPU seconds of each command with its workers (user + system): on a shared machine the wall
  times mostly measure the other jobs, the CPU seconds what the command spends;
* whether every column but ``seconds_per_estimate`` of the results is bitwise the same;
* whether the parallel command chose to run in its own process (work too small to pay off);
* torch's intra-op threads per cell (1, the default) and the load average before and after each
  command (``/proc/loadavg``), since another job on the cores lowers any speed-up.

The grids (``--grids``):

``big``     36 cells: gaussian-quadratic, gaussian-cos, gaussian-quadratic-nd x reinforce,
            reinforce-loo, reparam, measure-valued x N = 10, 100, 1000, R = 20,000
            (``gradnoise sweep``); one cell, measure-valued on gaussian-quadratic-nd at N = 1000, is
            most of the work, so the speed-up needs cells cut into chunks;
``report``  ``gradnoise report`` with its defaults (every default problem and estimator,
            N = 1, 3, 10, 30, 100, R = 300): sweep, fits, figures and summary;
``report4`` the report's grid at R = 10,000 (``gradnoise report --replicates 10000``): longer;
``small``   60 rows of small cells: gaussian-quadratic x reinforce, reinforce-loo, reparam x
            N = 2, 4, 8, ..., 1024 (2 rows a cell), R = 200 (``gradnoise sweep``);
``discrete`` 18 cells of slow estimators: bernoulli-toy, bernoulli-toy-nd x relax, rebar,
            gumbel-rao x N = 10, 30, 100, R = 2000: their elements of work cost 10-100 times the
            others', so the low estimate of a grid's time alone would run them in one process.

Oracle truths and trained models are cached in ``$GRADNOISE_CACHE`` by a warm-up run of each
grid's sequential command before the timings (``--no-warm-up`` leaves it out).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pandas as pd

ESTIMATORS_BIG = ["reinforce", "reinforce-loo", "reparam", "measure-valued"]


def grids() -> dict[str, tuple[str, list[str]]]:
    """name -> (what the results file is, the command's arguments with {out} for the output)."""
    def sweep(problems, estimators, budgets, replicates):
        args = ["sweep", "--quiet", "--fresh", "--out", "{out}/sweep.csv", "--replicates", str(replicates)]
        for flag, values in (("--problem", problems), ("--estimator", estimators), ("--budget", budgets)):
            for v in values:
                args += [flag, str(v)]
        return args

    return {
        "big": ("sweep.csv", sweep(["gaussian-quadratic", "gaussian-cos", "gaussian-quadratic-nd"], ESTIMATORS_BIG,
                                   [10, 100, 1000], 20_000)),
        "report": ("sweep.csv", ["report", "--quiet", "--fresh", "--out-dir", "{out}"]),
        "report4": ("sweep.csv", ["report", "--quiet", "--fresh", "--out-dir", "{out}", "--replicates", "10000"]),
        "small": ("sweep.csv", sweep(["gaussian-quadratic"], ["reinforce", "reinforce-loo", "reparam"],
                                     [2**k for k in range(1, 11)], 200)),
        # few cells, each slow per element of work: what the low estimate alone ran in one process
        "discrete": ("sweep.csv", sweep(["bernoulli-toy", "bernoulli-toy-nd"], ["relax", "rebar", "gumbel-rao"],
                                        [10, 30, 100], 2000)),
    }


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def pss_mib(pid: int) -> float:
    """Proportional set size of ``pid`` in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


#: PSS is sampled every PSS_EVERY x 50 ms (0.5 s)
PSS_EVERY = 10


def timed(args: list[str], env: dict) -> tuple[float, float, str, float]:
    """Run ``python -m gradnoise.analysis ARGS``: (wall seconds, peak PSS of its process tree in
    MiB, its stderr, CPU seconds of the command and its workers: user + system, the larger of
    ``getrusage(RUSAGE_CHILDREN)`` (the processes it waited for) and the sum over its process tree
    of each process's last sampled time (forkserver workers are not waited for); what the work
    costs whatever else runs on the machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gradnoise.analysis", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, done, cpu = [0.0], threading.Event(), {}

    def sample():
        # /proc/PID/stat every 50 ms (cheap); smaps_rollup, which walks each process's page tables
        # in the kernel, every PSS_EVERY-th time only: read every 50 ms over a 2-worker tree it took
        # a good part of a core from the command it measures (a 36-cell grid's --workers 2 run took
        # 48.7 s sampled so, 37-38 s under /usr/bin/time, on 2 quiet cores)
        tick = 0
        while not done.is_set():
            pids = tree(proc.pid)
            if tick % PSS_EVERY == 0:
                peak[0] = max(peak[0], sum(pss_mib(p) for p in pids))
            for p in pids:
                cpu[p] = max(cpu.get(p, 0.0), cpu_seconds(p))
            tick += 1
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"gradnoise {' '.join(args)} failed ({proc.returncode}):\n{err}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, peak[0], err, max(waited, sum(cpu.values()))


STARTUP_STEPS = [
    ("python", "pass"),
    ("import torch", "import torch"),
    ("+ import gradnoise (scipy, pandas, the estimators)", "import torch, gradnoise"),
    ("+ the CLI's modules (matplotlib, seaborn)", "import torch, gradnoise, gradnoise.analysis.cli"),
    ("+ import distributed", "import torch, gradnoise, gradnoise.analysis.cli, distributed"),
]

CLUSTER_STEP = """
import os, time, gradnoise, gradnoise.analysis.cli
from gradnoise.cluster import open_client
if __name__ == "__main__":
    start = time.perf_counter()
    with open_client(workers={workers}, local="dask") as client:
        client.wait_for_workers({workers})
        up = time.perf_counter()
        client.run(lambda: __import__("gradnoise"))
        warm = time.perf_counter()
    stop = time.perf_counter()
    with open_client(workers={workers}, local="fork") as pool:
        forked = time.perf_counter()
        done = dict(pool.map([(os.getpid, ())] * {workers}))
        mapped = time.perf_counter()
    print(up - start, warm - up, stop - warm, mapped - forked)
"""


def startup(env: dict, workers: int) -> None:
    """Where a command's start-up goes: fresh interpreters importing more and more, then a local
    cluster's start (:func:`gradnoise.cluster.open_client`), first call, and stop; and its end:
    a small sweep ending through Python's teardown against ``os._exit``."""
    print("start-up, each step in a fresh process (best of 3):")
    for label, code in STARTUP_STEPS:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            best = min(best, time.perf_counter() - start)
        print(f"  {label}: {best:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "cluster_start.py")
        with open(script, "w") as fh:
            fh.write(CLUSTER_STEP.format(workers=workers))
        out = subprocess.run([sys.executable, script], env=env, check=True, capture_output=True, text=True)
        up, first, stop, forked = map(float, out.stdout.split())
    print(f"  forked local workers (the default): {workers} forked, one call each, stopped: {forked:.3f} s")
    print(f"  a Dask LocalCluster of {workers} workers (after the imports above): {up:.2f} s to start (each worker "
          f"forked from a forkserver that imports gradnoise once), {first:.2f} s first call, {stop:.2f} s to stop; load {load()}")
    # the end of a command: Python's teardown of its modules against gradnoise's os._exit
    # (gradnoise.analysis.cli.run), the same small sweep, alternated
    with tempfile.TemporaryDirectory() as tmp:
        sweep = ["sweep", "--problem", "gaussian-quadratic", "--estimator", "reinforce", "--budget", "4",
                 "--replicates", "200", "--quiet", "--fresh", "--out", os.path.join(tmp, "s.csv")]
        ways = {"python's teardown": [sys.executable, "-c", "import sys; from gradnoise.analysis.cli import main; "
                                      "raise SystemExit(main(sys.argv[1:]))"],
                "os._exit (python -m gradnoise.analysis)": [sys.executable, "-m", "gradnoise.analysis"]}
        best = dict.fromkeys(ways, float("inf"))
        for _ in range(3):
            for label, command in ways.items():
                start = time.perf_counter()
                subprocess.run(command + sweep, env=env, check=True, capture_output=True)
                best[label] = min(best[label], time.perf_counter() - start)
    print("  a one-cell sweep, whole command (best of 3, alternated): "
          + ", ".join(f"{label} {seconds:.2f} s" for label, seconds in best.items()))


def same_numbers(a: str, b: str) -> bool:
    x, y = pd.read_csv(a), pd.read_csv(b)
    columns = [c for c in x.columns if c != "seconds_per_estimate"]
    return list(x.columns) == list(y.columns) and x[columns].equals(y[columns])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each command, alternated (default 1)")
    ap.add_argument("--grids", default="big,report4,report,small", help="comma-separated, of: " + ", ".join(grids()))
    ap.add_argument("--no-warm-up", action="store_true", help="no untimed run first (oracles, checkpoints)")
    ap.add_argument("--startup", action="store_true", help="first, where the start-up goes (imports, cluster)")
    ap.add_argument("--dask", action="store_true", help="also --workers N on a Dask LocalCluster (GRADNOISE_LOCAL_WORKERS=dask)")
    args = ap.parse_args()
    chosen = args.grids.split(",")
    unknown = [g for g in chosen if g not in grids()]
    if unknown:
        ap.error(f"unknown grid(s) {', '.join(unknown)}; choose from {', '.join(grids())}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    print(f"{os.cpu_count()} cores; torch 1 intra-op thread per cell (the default --threads 1, OMP_NUM_THREADS=1); "
          f"--workers {args.workers}; {args.repeats} run(s) of each command, alternated; wall time is the whole "
          f"command, start-up included; memory is the peak summed PSS of the command's process tree")
    print(f"GRADNOISE_CACHE={os.environ.get('GRADNOISE_CACHE', '(default)')}; load average {load()} at start")
    if args.startup:
        startup(env, args.workers)
    rows = []
    work = tempfile.mkdtemp(prefix="gn-cluster-speedup-")
    try:
        for name in chosen:
            results, template = grids()[name]
            if not args.no_warm_up:
                out = os.path.join(work, f"{name}-warm")
                os.makedirs(out, exist_ok=True)
                timed([a.replace("{out}", out) for a in template], env)
            modes = ("seq", "par", "dask") if args.dask else ("seq", "par")
            walls: dict[str, list[float]] = {m: [] for m in modes}
            cpus: dict[str, list[float]] = {m: [] for m in modes}
            peaks: dict[str, list[float]] = {m: [] for m in modes}
            said, loads = "", []
            for k in range(args.repeats):
                for mode in modes:
                    out = os.path.join(work, f"{name}-{mode}-{k}")
                    os.makedirs(out, exist_ok=True)
                    command = [a.replace("{out}", out) for a in template]
                    if mode != "seq":
                        command += ["--workers", str(args.workers)]
                    before = load()
                    wall, peak, err, cpu = timed(command, dict(env, GRADNOISE_LOCAL_WORKERS="dask" if mode == "dask" else "auto"))
                    loads.append(f"{before}->{load()}")
                    walls[mode].append(wall)
                    cpus[mode].append(cpu)
                    peaks[mode].append(peak)
                    if mode == "par" and "in this process" in err:
                        said = "ran in one process (too small to pay off)"
                    print(f"  {name} {mode} run {k + 1}: {wall:.1f} s, {cpu:.1f} CPU s, peak {peak:.0f} MiB "
                          f"(load {loads[-1]})", flush=True)
            same = same_numbers(os.path.join(work, f"{name}-seq-0", results), os.path.join(work, f"{name}-par-0", results))
            best_seq, best_par = min(walls["seq"]), min(walls["par"])
            lo = min(walls["seq"]) / max(walls["par"])
            hi = max(walls["seq"]) / min(walls["par"])
            rows.append((name, ", ".join(f"{w:.1f}" for w in walls["seq"]), ", ".join(f"{w:.1f}" for w in walls["par"]),
                         f"{best_seq / best_par:.2f}x" + (f" ({lo:.2f}-{hi:.2f}x)" if args.repeats > 1 else ""),
                         f"{min(cpus['seq']):.1f} / {min(cpus['par']):.1f}",
                         f"{max(peaks['seq']):.0f} / {max(peaks['par']):.0f} MiB ({max(peaks['par']) / max(peaks['seq']):.2f}x)",
                         "yes" if same else "NO", said or "-"))
            if args.dask:
                best_dask = min(walls["dask"])
                same_dask = same_numbers(os.path.join(work, f"{name}-seq-0", results),
                                         os.path.join(work, f"{name}-dask-0", results))
                rows.append((f"{name}, Dask LocalCluster", rows[-1][1], ", ".join(f"{w:.1f}" for w in walls["dask"]),
                             f"{best_seq / best_dask:.2f}x", f"{min(cpus['seq']):.1f} / {min(cpus['dask']):.1f}",
                             f"{max(peaks['seq']):.0f} / {max(peaks['dask']):.0f} MiB "
                             f"({max(peaks['dask']) / max(peaks['seq']):.2f}x)", "yes" if same_dask else "NO", "-"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average {load()} at the end\n")
    header = ["grid", "sequential s", f"--workers {args.workers} s", "speed-up", "CPU s seq / par", "peak memory seq / par",
              "bitwise", "note"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
