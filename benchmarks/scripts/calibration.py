"""Calibration of the variance interval and the bias test: coverage and false alarms against exact values.

For each case (an unbiased estimator on a problem whose gradient and per-estimate variance are
known) and each R, S seeds' worth of R-replicate cells are measured, and over the seeds we count

* how often the 95% variance interval holds the exact variance (nominal 0.95),
* how often |bias z| > 3 and > 4 against the exact gradient (nominal 0.27% and 0.0063%),

for the old method (delta-method interval on the log scale with the sample kurtosis; plain z,
Bonferroni over coordinates) and the new one (``gradnoise.statistics.summarise``: bootstrap-t on
the log scale for scalars; the smaller of the plain and Hall's skewness-corrected z).

Vectorised: one engine call gives S x R independent estimates (every replicate of a cell is an
independent draw given the cell's stream), reshaped into S cells of R; statistically the same
as S separately seeded cells. Exact values: quadrature (scipy.integrate) of the N = 1 estimate's
first two moments for the Gaussian problems, enumeration over the uniform's pieces for
ARM/DisARM/REINFORCE on ``bernoulli-toy``; on ``linear-gaussian-vae`` (IWAE, VIMCO) the truth is
the problem's labelled oracle (its standard error enters z) and the variance is an oracle too:
the pooled variance of 10^6 estimates from another seed (relative standard error below 1%,
against interval half-widths of 10-40%), labelled ``oracle`` in the table.

    python benchmarks/scripts/calibration.py --replicates 200 --seeds 2000 --cases issue --out cal-200.csv
    python benchmarks/scripts/calibration.py --table cal-*.csv      # the markdown table of docs/analysis.md

Run at one torch thread; each job prints its seconds.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
import torch
from scipy import integrate, special, stats

import gradnoise as gn
from gradnoise import statistics
from gradnoise.engine import replicate_estimates

SEED = 22


def _gaussian(cost, param, loc=1.0, scale=1.0, estimator="reinforce", grad=None):
    """Exact mean and variance of the N = 1 estimate on x ~ Normal(loc, scale) by quadrature."""
    pdf = stats.norm(loc, scale).pdf
    eps = lambda x: (x - loc) / scale  # noqa: E731
    if estimator == "reinforce":
        g = (lambda x: cost(x) * eps(x) / scale) if param == "loc" else (lambda x: cost(x) * (eps(x) ** 2 - 1) / scale)
    else:                                   # reparam: f'(x) dx/dparam, dx/dloc = 1, dx/dscale = eps
        g = grad if param == "loc" else (lambda x: grad(x) * eps(x))
    lo, hi = loc - 14 * scale, loc + 14 * scale
    kw = dict(points=[0.0, loc], limit=1000, epsabs=0, epsrel=1e-12)
    m1 = integrate.quad(lambda x: g(x) * pdf(x), lo, hi, **kw)[0]
    m2 = integrate.quad(lambda x: g(x) ** 2 * pdf(x), lo, hi, **kw)[0]
    return m1, m2 - m1**2, "quadrature"


def _bernoulli(estimator, theta, t):
    """Exact mean and variance of the N = 1 estimate on bernoulli-toy: the uniform u's pieces
    between p and 1 - p (b = 1[u < p], b~ = 1[u > 1 - p]); ARM's (u - 1/2) integrated per piece."""
    p = special.expit(theta)
    f = lambda b: (b - t) ** 2  # noqa: E731
    if estimator == "reinforce":            # f(b) (b - p) with b ~ Bernoulli(p): two values
        vals, w = np.array([f(1) * (1 - p), f(0) * (-p)]), np.array([p, 1 - p])
        m = (w * vals).sum()
        return m, (w * vals**2).sum() - m**2, "enumeration"
    edges = np.unique(np.clip([0.0, p, 1 - p, 1.0], 0, 1))
    m1 = m2 = 0.0
    for a, c in zip(edges[:-1], edges[1:]):
        u = (a + c) / 2
        b, ba = float(u < p), float(u > 1 - p)
        delta = f(ba) - f(b)
        if estimator == "disarm":
            g = 0.5 * delta * (1 - 2 * b) * (b != ba) * special.expit(abs(theta))
            m1, m2 = m1 + (c - a) * g, m2 + (c - a) * g * g
        else:                               # arm: delta (u - 1/2), integrated exactly
            m1 += delta * ((c - .5) ** 2 - (a - .5) ** 2) / 2
            m2 += delta**2 * ((c - .5) ** 3 - (a - .5) ** 3) / 3
    return m1, m2 - m1**2, "enumeration"


def _oracle(problem, estimator, param, n):
    g, _ = replicate_estimates(gn.make_problem(problem), gn.get_estimator(estimator), n, 10**6, SEED + 1)
    g = g[param].double().reshape(10**6, -1).numpy()
    return None, float(g.var(0, ddof=1).sum()), "oracle"


#: (label, problem, estimator, param, N, kind of estimate, exact values)
CASES = [
    ("light", "gaussian-quadratic", "reparam", "loc", 1, "normal",
     lambda: (-2.0, 4.0, "closed form")),
    ("light", "gaussian-cos:k=2", "reparam", "loc", 1, "light",
     lambda: _gaussian(None, "loc", estimator="reparam", grad=lambda x: -2 * np.sin(2 * x))),
    ("issue", "gaussian-cos:k=2", "reinforce", "scale", 1, "heavy",
     lambda: _gaussian(lambda x: np.cos(2 * x), "scale")),
    ("issue", "gaussian-cos:k=2", "reinforce", "loc", 1, "heavy",
     lambda: _gaussian(lambda x: np.cos(2 * x), "loc")),
    ("issue", "gaussian-exp:k=10", "reinforce", "loc", 1, "heavy",
     lambda: _gaussian(lambda x: np.exp(-10 * x * x), "loc")),
    ("issue", "gaussian-exp:k=10", "reinforce", "scale", 1, "heavy",
     lambda: _gaussian(lambda x: np.exp(-10 * x * x), "scale")),
    ("issue", "gaussian-exp:k=30", "reinforce", "loc", 1, "heavy",
     lambda: _gaussian(lambda x: np.exp(-30 * x * x), "loc")),
    ("issue", "gaussian-exp:k=30", "reinforce", "scale", 1, "heavy",
     lambda: _gaussian(lambda x: np.exp(-30 * x * x), "scale")),
    ("issue", "bernoulli-toy:theta=0.5,t=0.45", "reinforce", "logits", 1, "two-valued",
     lambda: _bernoulli("reinforce", 0.5, 0.45)),
    ("issue", "bernoulli-toy:theta=0.5,t=0.2", "disarm", "logits", 1, "three-valued",
     lambda: _bernoulli("disarm", 0.5, 0.2)),
    ("discrete", "bernoulli-toy:theta=0.5,t=0.2", "arm", "logits", 1, "discrete x uniform",
     lambda: _bernoulli("arm", 0.5, 0.2)),
    ("vae", "linear-gaussian-vae", "iwae", "mu", 5, "tensor (20)",
     lambda: _oracle("linear-gaussian-vae", "iwae", "mu", 5)),
    ("vae", "linear-gaussian-vae", "vimco", "mu", 5, "tensor (20)",
     lambda: _oracle("linear-gaussian-vae", "vimco", "mu", 5)),
]


def old_row(g, truth, truth_se):
    """The method before issue 22: delta-method interval, plain z with Bonferroni."""
    r, p = g.shape
    mean = g.mean(0)
    var_d = g.var(0, ddof=1)
    se = np.sqrt(var_d / r + truth_se**2 + (statistics.ROUNDING * np.sqrt((g**2).mean(0))) ** 2)
    z = (mean - truth) / se
    zeq = z[0] if p == 1 else stats.norm.isf(statistics.bonferroni_p(z) / 2)
    _, low, high = statistics.delta_variance_interval(((g - mean) ** 2).sum(1))
    return low, high, zeq


def run_case(case, replicates, seeds):
    label, problem, estimator, param, n, kind, exact = case
    exact_mean, exact_var, source = exact()
    prob, est = gn.make_problem(problem), gn.get_estimator(estimator)
    truth = prob.true_gradient(est.objective(n))
    t = truth.values[param].double().reshape(-1).numpy()
    ts = truth.se[param].double().reshape(-1).numpy()
    if exact_mean is not None:
        assert np.allclose(exact_mean, t, rtol=1e-5, atol=1e-7), (problem, estimator, exact_mean, t)
    g, _ = replicate_estimates(prob, est, n, seeds * replicates, SEED)
    g = g[param].double().reshape(seeds, replicates, -1).numpy()
    old, new = [], []
    for cell in g:
        old.append(old_row(cell, t, ts))
        row = statistics.summarise(cell, t, ts)
        new.append((row["variance_ci_low"], row["variance_ci_high"], row["bias_z"], row["intervals_reliable"]))
    old, new = np.array(old, dtype=float), np.array(new, dtype=float)
    cover = lambda a: (a[:, 0] <= exact_var) & (exact_var <= a[:, 1])  # noqa: E731
    reliable = new[:, 3].astype(bool)
    return {
        "problem": problem, "estimator": estimator, "param": param, "N": n, "estimate": kind,
        "exact": source, "R": replicates, "seeds": seeds,
        "coverage_old": cover(old).mean(), "coverage_new": cover(new).mean(),
        "z3_old": (np.abs(old[:, 2]) > 3).mean(), "z3_new": (np.abs(new[:, 2]) > 3).mean(),
        "z4_old": (np.abs(old[:, 2]) > 4).mean(), "z4_new": (np.abs(new[:, 2]) > 4).mean(),
        "flagged": 1 - reliable.mean(),
        "coverage_new_reliable": cover(new)[reliable].mean() if reliable.any() else np.nan,
    }


def table(paths) -> str:
    df = pd.concat([pd.read_csv(p) for p in paths]).sort_values(["problem", "estimator", "param", "R"])
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = ["| problem | estimator | param | estimate | exact | R | seeds | coverage old | coverage new "
             "| P(\\|z\\|>3) old | new | P(\\|z\\|>4) old | new |",
             "|" + "---|" * 13]
    for r in df.itertuples():
        lines.append(f"| `{r.problem}` | `{r.estimator}` | {r.param} | {r.estimate} | {r.exact} | {r.R} | {r.seeds} "
                     f"| {r.coverage_old:.3f} | **{r.coverage_new:.3f}** | {pct(r.z3_old)} | **{pct(r.z3_new)}** | {pct(r.z4_old)} | {pct(r.z4_new)} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--seeds", type=int, default=500)
    ap.add_argument("--cases", nargs="+", default=["issue", "light", "discrete", "vae"],
                    help="case groups: issue (the issue's rows), light, discrete, vae")
    ap.add_argument("--out", help="CSV of the rates")
    ap.add_argument("--table", nargs="+", metavar="CSV", help="print the markdown table of these CSVs")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    torch.set_num_threads(1)
    rows = []
    for case in (c for c in CASES if c[0] in args.cases):
        for r in args.replicates:
            start = time.perf_counter()
            rows.append(run_case(case, r, args.seeds))
            print(f"{case[1]} {case[2]} {case[3]} R={r}: coverage {rows[-1]['coverage_old']:.3f} -> "
                  f"{rows[-1]['coverage_new']:.3f}, |z|>3 {rows[-1]['z3_old']:.4f} -> {rows[-1]['z3_new']:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    print(df.to_string())


if __name__ == "__main__":
    main()
