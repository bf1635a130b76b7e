"""The prior scales an SG-MCMC run of ``fbnn train`` ended with, read from its checkpoint.

    python -m experiments.prior_scales runs/mnist/sghmc_sa_lik_T0.1_120ep [--json PATH]

Per parameter tensor: its size n, the prior precision lambda the sampler holds (sghmc_sa's
Gibbs-resampled one; 1 / prior_sigma^2 for sgld, psgld and sghmc), the prior sigma, the RMS
of the weights, and the precision the weights imply, n / sum(theta^2) (the mode of the
Gibbs conditional for n >> alpha0, beta0). Implied / lambda near 1 means the hierarchical
prior sits at a fixed point; far above 1 after a Gibbs draw is the runaway of a cold
sghmc_sa (its docstring): the next draw moves lambda there. Prints a markdown table;
writes JSON (atomically) only with ``--json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fbnn import cli, tree
from fbnn.fit import load_checkpoint

SAMPLERS = ("sgld", "psgld", "sghmc", "sghmc_sa")


def prior_scales(state, config: dict) -> list[dict]:
    """One row per parameter tensor of ``state.params``: ``name, n, precision, prior_sigma,
    rms, implied_precision, implied_over_precision``. ``config`` is the run's config."""
    if config.get("method") not in SAMPLERS:
        raise ValueError(f"prior_scales: method {config.get('method')!r} is not an SG-MCMC run; "
                         f"choose a run of one of {SAMPLERS}")
    named = tree.named_leaves(state.params)
    if hasattr(state, "precision"):
        lams = [float(v) for v in tree.leaves(state.precision)]
    else:
        lams = [1.0 / config["prior_sigma"] ** 2] * len(named)
    rows = []
    for (name, theta), lam in zip(named, lams):
        sq = float(theta.detach().to(torch.float64).pow(2).sum())
        n = theta.numel()
        implied = n / sq if sq > 0 else float("inf")
        rows.append({"name": name, "n": n, "precision": lam, "prior_sigma": lam ** -0.5 if lam > 0 else float("inf"),
                     "rms": (sq / n) ** 0.5, "implied_precision": implied, "implied_over_precision": implied / lam})
    return rows


def markdown(run: str, epoch: int, rows: list[dict]) -> str:
    lines = [f"Prior scales of `{run}` after {epoch} epochs", "",
             "| tensor | n | precision λ | prior σ | RMS θ | implied n / Σθ² | implied / λ |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['n']} | {r['precision']:.4g} | {r['prior_sigma']:.4g} | {r['rms']:.4g} "
              f"| {r['implied_precision']:.4g} | {r['implied_over_precision']:.3g} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="an fbnn train output directory (holds checkpoint.pt)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(Path(args.run) / "checkpoint.pt")
    rows = prior_scales(ckpt["state"], ckpt["meta"]["config"])
    print(markdown(args.run, ckpt["epoch"], rows), end="")
    if args.json:
        cli.write_json_atomic(args.json, {"run": args.run, "epoch": ckpt["epoch"], "tensors": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
