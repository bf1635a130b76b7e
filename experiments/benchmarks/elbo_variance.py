"""Variance of the ELBO's data-term gradient: local reparametrisation against weight sampling.

    OMP_NUM_THREADS=1 python -m experiments.benchmarks.elbo_variance [--repeats 48] [--json PATH]

Fixed variational state: the ``bbp_gaussian`` row's initialisation of the MNIST net
(784-1200-1200-10, mu ~ U(-0.2, 0.2), rho ~ U(-3, -2), ``fbnn.random.key(0)``), untrained.
The estimated quantity is g = d/d mu_W0 of the minibatch-mean data term
(1/M) sum_{b in batch} -log p(y_b | x_b, w) (mu_W0: the first layer's weight means,
1200 x 784), one weight draw (``sample``) or one LRT noise draw (``lrt``) per minibatch.
For each batch size M in {10, 100, 1000} and each estimator, ``repeats`` gradients with
fixed keys (repeat r uses ``key(1000 + r)``; both estimators see the same minibatches):
- ``total``: a fresh random minibatch of MNIST training images and fresh noise per repeat
  (the variance SGD sees);
- ``noise``: one fixed minibatch, fresh noise only (the estimator's own variance).
Reported: tr Cov[g] (the sum over the 940,800 coordinates of the variance across repeats)
and M * tr Cov[g]. Kingma, Salimans & Welling (2015): Var = Var_i / M + (M - 1)/M Cov_ij,
where Cov_ij, the covariance between two examples' terms, comes from weight noise shared by
the minibatch: with LRT it is 0 (variance ~ 1/M, M * Var flat), with weight sampling it
stays as M grows (M * Var grows ~ M).
"""
from __future__ import annotations

import argparse
import time

import torch

from fbnn import cli, likelihoods, models, optim, priors, tree
from fbnn import random as fr
from fbnn.methods import Batch, vi

ARCH = [784, 1200, 1200, 10]
BATCH_SIZES = (10, 100, 1000)


def _recorder():
    """A ``GradientTransformation`` that keeps the last gradient and leaves the state alone."""
    box = {}

    def init(params):
        return optim.EmptyState()

    def update(grads, state, params=None):
        box["grads"] = grads
        return tree.map(torch.zeros_like, grads), state
    return optim.GradientTransformation(init, update), box


def grad_fn(estimator: str):
    """``(state, x, y, key) -> g (1200, 784)``: the data-term gradient w.r.t. fc0's weight means."""
    model = models.mlp(ARCH)
    rec, box = _recorder()
    # temperature 0 drops the KL; reduction "mean" divides the summed NLL by M
    method = vi.bbp(vi.variational(model, estimator=estimator), likelihoods.categorical(), rec,
                    priors.normal(0.1), 600, n_samples=1, kl="closed", temperature=0.0, reduction="mean",
                    mean_scale=0.2, rho_init=(-3.0, -2.0))
    state = method.init(fr.key(0), model.init(fr.key(0)))

    def g(x, y, key):
        method.step(state, Batch(x, y), key)
        return box["grads"]["mean"]["fc0.weight"].double()
    return g


def trace_cov(gs: list) -> float:
    """Sum over coordinates of the sample variance over repeats: ``[(P,)] -> float``."""
    stack = torch.stack([g.reshape(-1) for g in gs])
    return float(stack.var(0, unbiased=True).sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=48)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from fbnn.data import load_mnist_like
    x_all, y_all = load_mnist_like("mnist", "train", args.data_dir)
    fns = {e: grad_fn(e) for e in ("sample", "lrt")}
    res, t0 = {}, time.perf_counter()
    for m in BATCH_SIZES:
        fixed = fr.permutation(fr.key(7), x_all.shape[0])[:m]
        for est, fn in fns.items():
            for kind in ("total", "noise"):
                gs = []
                for r in range(args.repeats):
                    k_data, k_noise = fr.split(fr.key(1000 + r), 2)
                    idx = fixed if kind == "noise" else fr.permutation(k_data, x_all.shape[0])[:m]
                    gs.append(fn(x_all[idx], y_all[idx], k_noise))
                v = trace_cov(gs)
                res[f"{est}/{kind}/M={m}"] = {"estimator": est, "kind": kind, "M": m, "trace_var": v,
                                              "M_times_trace_var": m * v}
                print(f"{est:7s} {kind:6s} M={m:5d}  tr Var[g] = {v:.4e}   M * tr Var[g] = {m * v:.4e}",
                      flush=True)
    print("\nscaling of tr Var[g] from M = 10 to M = 1000 (1/M would give 0.01):")
    for est in fns:
        for kind in ("total", "noise"):
            a, b = res[f"{est}/{kind}/M=10"]["trace_var"], res[f"{est}/{kind}/M=1000"]["trace_var"]
            print(f"  {est:7s} {kind:6s} Var(1000) / Var(10) = {b / a:.4f}")
    print(f"({args.repeats} repeats per cell; the relative standard error of a variance from n repeats "
          f"is about sqrt(2 / (n - 1)) per coordinate, far less for the trace; {time.perf_counter() - t0:.0f} s)")
    if args.json:
        cli.write_json_atomic(args.json, {"results": res, "repeats": args.repeats,
                                          "state": "bbp_gaussian init, key(0), untrained"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
