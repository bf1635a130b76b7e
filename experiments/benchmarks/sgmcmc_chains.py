"""Parallel SG-MCMC chains: 16 chains vmapped against 1 chain, wall time per step.

    python -m experiments.benchmarks.sgmcmc_chains [--chains 16] [--steps 200] [--repeats 5] [--json PATH]

A UCI-sized regression net (13-50-1, heteroscedastic head) on the housing data's
first standard split, minibatch 32; every sampler of ``fbnn.methods`` as one chain and
as ``ensemble(sampler, chains)`` (each chain its own minibatches). Prints medians over repeats and the ratio
(time per step of C vmapped chains) / (time per step of 1 chain); the issue's goal is <= 3.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fbnn import likelihoods, methods, models, priors
from fbnn import random as fr
from fbnn.data import uci_split


def samplers(model, n_data):
    lik, prior = likelihoods.gaussian(), priors.normal(1.0)
    return {"sgld": methods.sgld(model, lik, prior, n_data, lr=1e-5),
            "psgld": methods.psgld(model, lik, prior, n_data, lr=1e-4),
            "sghmc": methods.sghmc(model, lik, prior, n_data, lr=1e-5),
            "sghmc_sa": methods.sghmc_sa(model, lik, n_data, lr=1e-2, burn_in=50)}


def time_steps(method, state, batches, keys) -> float:
    t0 = time.perf_counter()
    for b, k in zip(batches, keys):
        state, _ = method.step(state, b, k)
    return (time.perf_counter() - t0) / len(batches)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", default=None, help="write the medians and raw times here")
    args = p.parse_args(argv)
    report = {"chains": args.chains, "steps": args.steps, "repeats": args.repeats, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "samplers": {}}
    data = uci_split("housing", 0)
    n = data.x_train.shape[0]
    model = models.mlp([data.x_train.shape[1], 50, 1], head="hetero")
    idx = [fr.randint(fr.fold_in(fr.key(0), i), n, (args.batch_size,)) for i in range(args.steps)]
    batches = [methods.Batch(data.x_train[i], data.y_train[i], i) for i in idx]
    # every chain its own minibatch, (C, B) indices, as fit feeds ensemble(..., batches="independent")
    chain_idx = [fr.randint(fr.fold_in(fr.key(4), i), n, (args.chains, args.batch_size)) for i in range(args.steps)]
    chain_batches = [methods.Batch(data.x_train[i], data.y_train[i], i) for i in chain_idx]
    keys = list(fr.split(fr.key(1), args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 13-50-1 net, batch {args.batch_size}, "
          f"{args.steps} steps, median of {args.repeats}")
    print(f"{'sampler':10s} {'1 chain (ms/step)':>18s} {f'{args.chains} chains (ms/step)':>20s} {'ratio':>7s}")
    for name, single in samplers(model, n).items():
        chains = methods.ensemble(single, args.chains)
        s1 = single.init(fr.key(2), model.init(fr.key(3)))
        sc = chains.init(fr.key(2), methods.init_members(model, fr.key(3), args.chains))
        time_steps(single, s1, batches[:5], keys[:5])  # warm-up
        time_steps(chains, sc, chain_batches[:5], keys[:5])
        t1, tc = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            t1.append(time_steps(single, s1, batches, keys))
            tc.append(time_steps(chains, sc, chain_batches, keys))
        m1, mc = statistics.median(t1), statistics.median(tc)
        print(f"{name:10s} {1e3 * m1:18.3f} {1e3 * mc:20.3f} {mc / m1:7.2f}", flush=True)
        report["samplers"][name] = {"one_chain_s": m1, "chains_s": mc, "ratio": mc / m1,
                                    "one_chain_raw_s": t1, "chains_raw_s": tc}
    if args.json:
        from fbnn.cli import write_json_atomic
        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
