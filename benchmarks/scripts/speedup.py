"""Engine vs. a plain loop vs. JAX: the speed of R estimates, measured side by side in one run.

    python benchmarks/scripts/speedup.py [--replicates 1000] [--budget 100] [--repeats 5]

Not an asv benchmark (this folder has no ``__init__.py``, so asv does not collect it). For each
problem and estimator it times, best of ``--repeats``:

* ``loop``: what a user would write, R separate estimates, each a surrogate loss and ``backward()``;
* ``engine 1t`` / ``engine Tt``: the engine's estimation pass
  (:func:`gradnoise.replicate_estimates`, the R estimates of one cell) at 1 torch intra-op thread
  (the default) and at torch's default thread count on this machine (``T``, the number of cores
  unless ``OMP_NUM_THREADS`` says otherwise);
* ``draws``: torch's generator alone, at 1 thread: the ``R x N x event`` standard normal draws of
  the cell (``Tensor.normal_``, mt19937 and Box-Muller, the draws of every Gaussian cell): a floor
  under the engine, which must draw these same numbers (results are bitwise reproducible from a
  seed), and no part of JAX's time (its counter-based threefry generator is fused into the
  jitted estimate);
* ``jax``: on the Gaussian problems, the same estimators written in JAX, ``jit(vmap(grad))`` over
  R keys (compile time excluded, ``block_until_ready``), where JAX is installed
  (``pip install jax jaxlib``, CPU; JAX uses all cores through XLA's own thread pool, or one
  with ``--jax-one-thread``, the engine's setting); for ``reinforce-delta`` on the scalar
  Gaussians, optax 0.2.6's reference (``pip install optax==0.2.6``):
  ``monte_carlo.control_variates_jacobians`` with ``control_delta_method``,
  ``score_function_jacobians`` and ``estimate_cv_coeffs=True`` on a pilot of N samples (the
  engine's default pilot at N >= 2), ``jit(vmap)`` over R keys, each estimate the mean of its N
  per-sample jacobians. Its scale parameter is ``log_scale``: the same work, another coordinate.
  No plain loop is written for it (``loop`` is NaN).

It prints microseconds per estimate, the ratio loop / engine at 1 thread, engine / JAX and
draws / JAX (above 1, the draws alone take longer than JAX's whole estimate),
then the machine's load average (the machine may be shared) and the peak resident memory of an
engine cell at R=10^4, N=10^3 (measured in a fresh subprocess).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import torch

import gradnoise as gn
from gradnoise.engine import torch_threads

PROBLEMS = ["gaussian-quadratic", "gaussian-exp", "gaussian-cos", "gaussian-quadratic-nd", "linear-gaussian-vae"]
ESTIMATORS = ["reinforce", "reparam", "iwae", "reinforce-delta"]
K, D = 2.0, 10        # the registered defaults of the Gaussian problems (k, and d of -nd)


def naive_loop(problem, estimator: str, n: int, replicates: int) -> None:
    """R separate estimates, as a user would write them: surrogate loss, backward(), read .grad."""
    for _ in range(replicates):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in problem.params.items()}
        dist = problem.distribution(params)
        if estimator == "reinforce-delta":
            return
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


def jax_estimators(spec: str, n: int, replicates: int):
    """``{estimator: thunk}`` running ``jit(vmap(grad))`` of the surrogate over ``replicates``
    keys, compiled (and run once) here; None where JAX is absent or the problem is not Gaussian."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    costs = {"gaussian-quadratic": lambda x: (x - K) ** 2, "gaussian-exp": lambda x: jnp.exp(-K * x**2),
             "gaussian-cos": lambda x: jnp.cos(K * x), "gaussian-quadratic-nd": lambda x: ((x - K) ** 2).sum(-1)}
    if spec not in costs:
        return None
    cost, shape = costs[spec], ((D,) if spec.endswith("-nd") else ())
    params = {"loc": jnp.ones(shape, jnp.float32), "scale": jnp.ones(shape, jnp.float32)}

    def log_normal(x, p):
        return (-((x - p["loc"]) ** 2) / (2 * p["scale"] ** 2) - jnp.log(p["scale"])
                - 0.5 * math.log(2 * math.pi)).reshape(n, -1).sum(-1)

    def reinforce(p, key):
        x = jax.lax.stop_gradient(p["loc"] + p["scale"] * jax.random.normal(key, (n, *shape)))
        f = cost(x)
        return jnp.mean(jax.lax.stop_gradient(f) * log_normal(x, p) + f)

    def reparam(p, key):
        return jnp.mean(cost(p["loc"] + p["scale"] * jax.random.normal(key, (n, *shape))))

    keys = jax.random.split(jax.random.PRNGKey(0), replicates)
    out = {}
    for name, surrogate in (("reinforce", reinforce), ("reparam", reparam)):
        fn = jax.jit(jax.vmap(jax.grad(surrogate), in_axes=(None, 0)))
        jax.block_until_ready(fn(params, keys))                      # compile outside the timing
        out[name] = lambda fn=fn: jax.block_until_ready(fn(params, keys))
    delta = optax_delta(cost, shape, n)
    if delta is not None:
        import warnings
        fn = jax.jit(jax.vmap(delta))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                          # deprecated since optax 0.2.4
            jax.block_until_ready(fn(keys))                          # traced and compiled here
        out["reinforce-delta"] = lambda fn=fn: jax.block_until_ready(fn(keys))
    return out


def optax_delta(cost, shape, n: int):
    """One estimate of optax 0.2.6's score function with the delta-method control variate and its
    estimated coefficient (a pilot of ``n`` samples), as a function of a key; None without optax
    or for a vector event (the optax reference asks for the cost of one sample)."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                          # deprecated since optax 0.2.4
            from optax._src.utils import multi_normal
            from optax.monte_carlo import control_variates, stochastic_gradient_estimators
    except ImportError:
        return None
    if shape:
        return None
    import jax.numpy as jnp
    params = (jnp.ones((1,), jnp.float32), jnp.zeros((1,), jnp.float32))   # loc, log_scale

    def estimate(key):
        jacobians, _ = control_variates.control_variates_jacobians(
            lambda x: jnp.sum(cost(x)), control_variates.control_delta_method,
            stochastic_gradient_estimators.score_function_jacobians, params, multi_normal, key, n,
            None, estimate_cv_coeffs=True, estimate_cv_coeffs_num_samples=n)
        return [j.mean(0) for j in jacobians]
    return estimate


PEAK_MEMORY_SNIPPET = """
import resource, gradnoise as gn
gn.measure_cell(gn.make_problem('gaussian-quadratic'), gn.get_estimator('{est}'), 1000, 10000, 0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-loop", action="store_true", help="skip the plain loop (slow)")
    ap.add_argument("--jax-one-thread", action="store_true",
                    help="run XLA on one thread, as the engine's cells run (set before JAX is imported)")
    args = ap.parse_args()
    r, n = args.replicates, args.budget
    if args.jax_one_thread:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    many = torch.get_num_threads()
    us = 1e6 / r
    print(f"R={r}, N={n}, torch {torch.__version__}; engine at 1 and at torch's default {many} threads; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
          f"JAX {'on one thread' if args.jax_one_thread else 'on its default threads'}")
    print(f"{'problem':<24}{'estimator':<16}{'loop':>9}{'engine 1t':>11}{f'engine {many}t':>11}{'draws':>8}"
          f"{'jax':>8}{'loop/eng':>10}{'eng/jax':>9}{'draws/jax':>10}   (us per estimate)")
    for spec in PROBLEMS:
        problem = gn.make_problem(spec)
        jax_fns = jax_estimators(spec, n, r)
        for name in ESTIMATORS:
            est = gn.get_estimator(name)
            try:
                est.check(problem, n)
            except gn.EstimatorNotApplicable:
                continue
            problem.true_gradient(est.objective(n))       # oracle truths are cached, not timed
            with torch_threads(1):
                loop = math.nan if args.no_loop else best_of(lambda: naive_loop(problem, name, n, r), args.repeats)
                one = best_of(lambda: gn.replicate_estimates(problem, est, n, r, 0), args.repeats)
            with torch_threads(many):
                multi = best_of(lambda: gn.replicate_estimates(problem, est, n, r, 0), args.repeats)
            jax_s = best_of(jax_fns[name], args.repeats) if jax_fns and name in jax_fns else math.nan
            noise = torch.empty(r * n * problem.event_numel())
            with torch_threads(1):
                draws = best_of(noise.normal_, args.repeats)
            print(f"{problem.name:<24}{name:<16}{loop * us:>9.1f}{one * us:>11.2f}{multi * us:>11.2f}"
                  f"{draws * us:>8.2f}{jax_s * us:>8.2f}{loop / one:>9.0f}x{one / jax_s:>8.2f}x{draws / jax_s:>9.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    for name in ["reinforce", "reparam"]:
        out = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SNIPPET.format(est=name)],
                             capture_output=True, text=True, check=True)
        print(f"peak RSS, {name}, gaussian-quadratic, R=10^4, N=10^3: {float(out.stdout):.0f} MiB")


if __name__ == "__main__":
    main()
