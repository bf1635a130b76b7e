"""The prior scales an SG-MCMC run of ``fbnn train`` ended with, read from its checkpoint.

    python -m experiments.prior_scales RUN [RUN ...] [--report results/prior_scales]

Per parameter tensor: its size n, the prior precision lambda the sampler holds (sghmc_sa's
Gibbs-resampled one; 1 / prior_sigma^2 for sgld, psgld and sghmc), the prior sigma, the RMS
of the weights, and the precision the weights imply, n / sum(theta^2) (the mode of the
Gibbs conditional for n >> alpha0, beta0). Implied / lambda near 1 means the hierarchical
prior sits at a fixed point; far above 1 after a Gibbs draw is the runaway of a cold
sghmc_sa (its docstring): the next draw moves lambda there. Prints a markdown table per
run; ``--report P`` also writes ``P.json`` and ``P.md`` (atomically) with the command and commit.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from fbnn import cli, priors, tree
from fbnn.fit import load_checkpoint


def prior_scales(state, config: dict) -> list[dict]:
    """One row per parameter tensor of ``state.params``: ``name, n, precision, prior_sigma,
    rms, implied_precision, implied_over_precision``. ``config`` is the run's config."""
    if config.get("method") not in cli.SAMPLERS:
        raise ValueError(f"prior_scales: method {config.get('method')!r} is not an SG-MCMC run; "
                         f"choose a run of one of {cli.SAMPLERS}")
    thetas = tree.leaves(state.params)
    if hasattr(state, "precision"):
        lams = [float(v) for v in tree.leaves(state.precision)]
    else:
        lams = [1.0 / config["prior_sigma"] ** 2] * len(thetas)
    rows = []
    for name, theta, lam in zip(priors.leaf_names(state.params), thetas, lams):
        sq = float(theta.detach().to(torch.float64).pow(2).sum())
        n = theta.numel()
        implied = n / sq if sq > 0 else math.inf
        rows.append({"name": name, "n": n, "precision": lam, "prior_sigma": lam ** -0.5 if lam > 0 else math.inf,
                     "rms": (sq / n) ** 0.5, "implied_precision": implied,
                     "implied_over_precision": implied / lam if lam > 0 else math.inf})  # lam 0: a flat prior
    return rows


def markdown(run: str, epochs: int, config: dict, rows: list[dict], metrics: dict | None = None) -> str:
    """One run's table; ``metrics``: its ``metrics.json``, if it has one, for the test figures."""
    tempering = ", ".join(f"{k} {config[k]}" for k in ("temperature", "likelihood_temperature") if k in config)
    lines = [f"### `{run}` after {epochs} epochs ({config['method']}{', ' + tempering if tempering else ''})", ""]
    if metrics is not None and "error_pct" in metrics:
        lines += [f"Test: {metrics['error_pct']:.2f} % error, log like {metrics['test_loglik_sum']:.2f} over "
                  f"{metrics['n_samples']} samples; trained by `{metrics['command']}` at {metrics['commit']}.", ""]
    lines += ["| tensor | n | precision λ | prior σ | RMS θ | implied n / Σθ² | implied / λ |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['n']} | {r['precision']:.4g} | {r['prior_sigma']:.4g} | {r['rms']:.4g} "
              f"| {r['implied_precision']:.4g} | {r['implied_over_precision']:.3g} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="fbnn train output directories (each holds checkpoint.pt)")
    p.add_argument("--report", default=None, help="also write REPORT.json and REPORT.md")
    args = p.parse_args(argv)
    report, tables = {}, []
    for run in args.runs:
        ckpt = load_checkpoint(Path(run) / "checkpoint.pt")
        config = ckpt["meta"]["config"]
        rows = prior_scales(ckpt["state"], config)
        metrics_file = Path(run) / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        report[run] = {"epochs": ckpt["epoch"], "config": config, "tensors": rows, "metrics": metrics}
        tables.append(markdown(run, ckpt["epoch"], config, rows, metrics))
    print("\n".join(tables), end="")
    if args.report:
        command = "python -m experiments.prior_scales " + " ".join(sys.argv[1:] if argv is None else argv)
        commit = cli.git_commit()
        head = (f"# Prior scales of SG-MCMC runs\n\nCommand: `{command}` (commit {commit}). "
                "implied = n / Σθ², the Gibbs mode for n ≫ α0, β0; implied / λ ≫ 1 after a draw: "
                "λ still climbing.\n\n")
        cli.write_json_atomic(f"{args.report}.json", {"command": command, "commit": commit, "runs": report})
        cli.write_text_atomic(f"{args.report}.md", head + "\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
