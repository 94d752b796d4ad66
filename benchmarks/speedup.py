"""Engine vs. a plain loop: the speed-up of vectorised replicates, measured in one run.

    python benchmarks/speedup.py [--replicates 1000] [--budget 100]

For each problem and estimator it times (best of ``--repeats``) one engine cell
(``estimators.measure_cell``: R estimates *and* their statistics) against what a user would
write: a Python loop of R separate estimates, each a surrogate loss and ``backward()``. It prints
the ratio loop/engine, then the peak resident memory of an engine cell at R=10^4, N=10^3 on a
scalar problem (measured in a fresh subprocess). Targets (issue 2): >= 20x on the Gaussian
problems, >= 3x on linear-gaussian-vae, and well under 2 GB.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time

import torch

import estimators as gn

PROBLEMS = ["gaussian-quadratic", "gaussian-cos", "gaussian-quadratic-nd", "linear-gaussian-vae"]
ESTIMATORS = ["reinforce", "reparam", "iwae"]


def naive_loop(problem, estimator: str, n: int, replicates: int) -> None:
    """R separate estimates, as a user would write them: surrogate loss, backward(), read .grad."""
    for _ in range(replicates):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in problem.params.items()}
        dist = problem.distribution(params)
        if estimator == "reinforce":
            x = dist.sample((n,))
            f = problem.cost(x, params)
            loss = (f.detach() * dist.log_prob(x) + f).mean()
        elif estimator == "reparam":
            loss = problem.cost(dist.rsample((n,)), params).mean()
        else:  # iwae
            log_w = problem.cost(dist.rsample((n,)), params)
            loss = torch.logsumexp(log_w, 0) - math.log(n)
        loss.backward()
        _ = [p.grad.clone() for p in params.values()]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


PEAK_MEMORY_SNIPPET = """
import resource, estimators as gn
gn.measure_cell(gn.make_problem('gaussian-quadratic'), gn.get_estimator('{est}'), 1000, 10000, 0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    r, n = args.replicates, args.budget
    print(f"R={r}, N={n}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'problem':<24}{'estimator':<12}{'loop s':>9}{'engine s':>10}{'ratio':>8}")
    for spec in PROBLEMS:
        problem = gn.make_problem(spec)
        for name in ESTIMATORS:
            est = gn.get_estimator(name)
            try:
                est.check(problem, n)
            except gn.EstimatorNotApplicable:
                continue
            problem.true_gradient(est.objective(n))       # oracle truths are cached, not timed
            loop = best_of(lambda: naive_loop(problem, name, n, r), args.repeats)
            engine = best_of(lambda: gn.measure_cell(problem, est, n, r, 0), args.repeats)
            print(f"{problem.name:<24}{name:<12}{loop:>9.3f}{engine:>10.4f}{loop / engine:>7.1f}x")
    for name in ["reinforce", "reparam"]:
        out = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SNIPPET.format(est=name)],
                             capture_output=True, text=True, check=True)
        print(f"peak RSS, {name}, gaussian-quadratic, R=10^4, N=10^3: {float(out.stdout):.0f} MiB")


if __name__ == "__main__":
    main()
