"""A training step of :func:`gradnoise.train` against a hand-written PyTorch loop, side by side.

    python benchmarks/scripts/train_speed.py [--steps 300] [--seeds 8] [--budget 8] [--repeats 5]

Not an asv benchmark (this folder is not collected). For each case (problem, estimator), at one
torch intra-op thread, best of ``--repeats``, it times ``--steps`` optimiser steps of:

* ``gradnoise``: :func:`gradnoise.training.train_group` (one seed group of ``--seeds`` seeds,
  Adam), the whole call: the steps (the estimator's ``init``/``step``, the gradient handed over,
  ``Adam.step``) and the recording at steps 0 and T (the exact objective; no variance
  measurement), which counts against gradnoise;
* ``loop``: what a user writes: the same seeds as rows of one parameter tensor, the same
  estimator's surrogate written out (``bernoulli-toy-nd`` x ``reinforce-loo``: the leave-one-out
  score-function surrogate; ``linear-gaussian-vae`` x ``reparam``: the reparameterised negative
  ELBO), ``loss.backward()`` and ``torch.optim.Adam.step``; ``loop (no validation)`` the same
  with ``torch.distributions``' argument validation off, as gradnoise runs its vectorised passes;
* ``loop-cost``: a hand-written loop on the gradnoise problem's own ``distribution`` and ``cost``
  (validation off): the same maths as gradnoise's step, so the ratio is the training machinery's
  overhead alone (a model problem's cost rebuilds the encoder for :math:`\log q`, which the
  hand-written ``loop`` above reuses).

Times are CPU seconds of this process (``time.process_time``; one thread, so the work itself),
which other jobs on a shared machine stretch far less than wall time. It prints microseconds
per step and the ratios gradnoise / loop (the issue's target: at most
1.2 against the loop without validation), then the load average (the machine may be shared).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch.distributions import Bernoulli, Independent, Normal

import gradnoise as gn
from gradnoise.engine import distribution_validation
from gradnoise.training import TrainSettings, train_group


def loop_bernoulli(problem, seeds, n, steps, lr):
    theta = problem.params["logits"].expand(seeds, -1).clone().requires_grad_(True)
    p = problem.targets
    opt = torch.optim.Adam([theta], lr=lr)
    start = time.process_time()
    for _ in range(steps):
        dist = Independent(Bernoulli(logits=theta), 1)
        x = dist.sample((n,))
        f = ((x - p) ** 2).sum(-1)
        baseline = (f.sum(0, keepdim=True) - f) / (n - 1)
        loss = ((f - baseline) * dist.log_prob(x)).mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.process_time() - start


def loop_linear_gaussian(problem, seeds, n, steps, lr):
    params = [problem.params[k].expand(seeds, *problem.params[k].shape).clone().requires_grad_(True)
              for k in ("mu", "A", "b")]
    mu, a, b = params
    x, scale = problem.x, math.sqrt(problem.VARIANCE)
    opt = torch.optim.Adam(params, lr=lr)
    start = time.process_time()
    for _ in range(steps):
        q = Independent(Normal(torch.einsum("sij,j->si", a, x) + b, scale), 1)
        z = q.rsample((n,))
        log_joint = Normal(mu, 1.0).log_prob(z).sum(-1) + Normal(z, 1.0).log_prob(x).sum(-1)
        loss = -(log_joint - q.log_prob(z)).mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.process_time() - start


def loop_problem(problem, estimator_surrogate):
    """A hand-written loop on the problem's own ``distribution`` and ``cost`` (the gradnoise problem,
    the estimator's surrogate written out, Adam): what is left is the training machinery."""
    def run(_, seeds, n, steps, lr):
        params = {k: v.expand(seeds, *v.shape).clone().requires_grad_(True) for k, v in problem.params.items()}
        opt = torch.optim.Adam(list(params.values()), lr=lr, maximize=problem.is_model)
        start = time.process_time()
        for _ in range(steps):
            loss = estimator_surrogate(problem, params, n)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.process_time() - start
    return run


def surrogate_loo(problem, params, n):
    dist = problem.distribution(params)
    x = dist.sample((n,))
    f = problem.cost(x, params)
    baseline = (f.sum(0, keepdim=True) - f) / (n - 1)
    return ((f - baseline).detach() * dist.log_prob(x)).mean(0).sum()


def surrogate_reparam(problem, params, n):
    return problem.cost(problem.distribution(params).rsample((n,)), params).mean(0).sum()


CASES = [("bernoulli-toy-nd", "reinforce-loo", loop_bernoulli),
         ("linear-gaussian-vae", "reparam", loop_linear_gaussian)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = TrainSettings(steps=args.steps, lr=args.lr, eval_every=args.steps)
    print(f"{args.steps} steps, {args.seeds} seeds in one vectorised pass, N = {args.budget}, Adam, 1 thread, "
          f"best of {args.repeats}; microseconds per step")
    print(f"{'problem':<22}{'estimator':<15}{'gradnoise':>11}{'loop':>9}{'loop-noval':>12}{'loop-cost':>12}"
          f"{'ratio':>8}{'ratio-noval':>13}{'ratio-cost':>13}")
    for spec, name, loop in CASES:
        problem, estimator = gn.make_problem(spec), gn.get_estimator(name)
        same = loop_problem(problem, surrogate_loo if name == "reinforce-loo" else surrogate_reparam)
        ours, theirs, theirs_noval, api = [], [], [], []
        for _ in range(args.repeats):
            start = time.process_time()
            train_group(problem, estimator, args.budget, settings, 0, 0, args.seeds)
            ours.append(time.process_time() - start)
            torch.manual_seed(0)
            theirs.append(loop(problem, args.seeds, args.budget, args.steps, args.lr))
            with distribution_validation(False):
                theirs_noval.append(loop(problem, args.seeds, args.budget, args.steps, args.lr))
                api.append(same(problem, args.seeds, args.budget, args.steps, args.lr))
        a, b, c, d = (1e6 * min(v) / args.steps for v in (ours, theirs, theirs_noval, api))
        print(f"{spec:<22}{name:<15}{a:>11.1f}{b:>9.1f}{c:>12.1f}{d:>12.1f}{a / b:>8.2f}{a / c:>13.2f}{a / d:>13.2f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
