"""SGLD and SGHMC step time: fbnn against the ``posteriors`` library, side by side.

    # posteriors lives in its own virtualenv, never in fbnn's:
    python -m venv /work/venvs/posteriors
    /work/venvs/posteriors/bin/pip install torch==2.13.0 posteriors
    /work/venvs/posteriors/bin/pip install -e . --no-deps
    /work/venvs/posteriors/bin/python -m experiments.benchmarks.sgmcmc_posteriors [--steps 50] [--repeats 5]

Both libraries step the same model (fbnn's ``mlp``, called through the same ``apply``)
on the same minibatches with the same potential U = N * mean NLL - log N(theta; 0, s^2)
and matched dynamics: posteriors' SGLD ``theta += eps grad log p + N(0, 2 eps T)`` is
fbnn's ``theta -= (lr / 2) grad U + N(0, lr T)`` with eps = lr / 2; its SGHMC
``theta += eps m; m += eps grad log p - eps alpha m + N(0, 2 eps alpha T)`` is fbnn's
``v -= eta grad U + C v - N(0, 2 C eta T)`` with v = eps m, eta = eps^2, C = eps alpha.
Two problems: the UCI-sized regression net (13-50-1, housing, B 32) and the seed's MNIST
net (784-1200-1200-10, B 128). Timings alternate between the libraries within each
repeat; the script prints medians and the ratio fbnn / posteriors (below 1: fbnn faster).
"""
from __future__ import annotations

import argparse
import inspect
import math
import statistics
import sys
import time

import torch

from fbnn import likelihoods, methods, models, priors
from fbnn import random as fr


def problems():
    from fbnn.data import load_mnist_like, uci_split
    housing = uci_split("housing", 0)
    x, y = load_mnist_like("mnist", "train")
    return {"uci 13-50-1, B 32": (models.mlp([13, 50, 1], head="hetero"), likelihoods.gaussian(),
                                   housing.x_train, housing.y_train, 32),
            "mnist 784-1200-1200-10, B 128": (models.mlp([784, 1200, 1200, 10]), likelihoods.categorical(),
                                              x, y, 128)}


def make_log_posterior(model, lik, prior, n_data):
    def log_posterior(params, batch):
        x, y = batch
        value = n_data * lik.log_lik(model.apply(params, x), y).mean() + prior.log_prob(params)
        return value, torch.zeros(())
    return log_posterior


def posteriors_step(transform):
    """``(state, batch) -> state``, in place where the installed version allows it."""
    update = transform.update
    kw = {"inplace": True} if "inplace" in inspect.signature(update).parameters else {}

    def step(state, batch):
        out = update(state, batch, **kw)
        return out[0] if isinstance(out, tuple) else out  # newer versions return (state, aux)
    return step


def timed(run, steps) -> float:
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    import posteriors
    print(f"torch {torch.__version__}, posteriors {getattr(posteriors, '__version__', '?')}, "
          f"{torch.get_num_threads()} threads; {args.steps} steps, median of {args.repeats}")
    print(f"{'problem':32s} {'sampler':7s} {'fbnn ms/step':>13s} {'posteriors ms/step':>19s} {'ratio':>6s}")
    lr, friction, sigma = 1e-5, 0.05, 1.0
    for name, (model, lik, x, y, b) in problems().items():
        n = x.shape[0]
        prior = priors.normal(sigma)
        idx = [fr.randint(fr.fold_in(fr.key(0), i), n, (b,)) for i in range(args.steps)]
        batches = [(x[i], y[i]) for i in idx]
        keys = list(fr.split(fr.key(1), args.steps))
        params = model.init(fr.key(2))
        log_post = make_log_posterior(model, lik, prior, n)
        eps_hmc = math.sqrt(lr)
        pairs = {
            "sgld": (methods.sgld(model, lik, prior, n, lr),
                     posteriors.sgmcmc.sgld.build(log_post, lr=lr / 2, temperature=1.0)),
            "sghmc": (methods.sghmc(model, lik, prior, n, lr, friction=friction),
                      posteriors.sgmcmc.sghmc.build(log_post, lr=eps_hmc, alpha=friction / eps_hmc,
                                                    temperature=1.0)),
        }
        for sampler, (ours, theirs) in pairs.items():
            their_step = posteriors_step(theirs)

            def run_ours():
                state = ours.init(fr.key(3), params)
                for (bx, by), k in zip(batches, keys):
                    state, _ = ours.step(state, methods.Batch(bx, by), k)

            def run_theirs():
                state = theirs.init({k: v.clone() for k, v in params.items()})
                for batch in batches:
                    state = their_step(state, batch)

            run_ours(), run_theirs()  # warm-up
            t_ours, t_theirs = [], []
            for _ in range(args.repeats):
                t_ours.append(timed(run_ours, args.steps))
                t_theirs.append(timed(run_theirs, args.steps))
            mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
            print(f"{name:32s} {sampler:7s} {1e3 * mo:13.3f} {1e3 * mt:19.3f} {mo / mt:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
