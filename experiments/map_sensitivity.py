"""How much of MAP's MNIST figure is the run's own noise, not its settings or its seed.

The seed's MAP settings (``experiments.mnist`` row ``map``) from one init and one data order,
the seed notebook's own draws (``fbnn train --torch-seed 42``: ``torch.manual_seed(42)``'s
``nn.Linear`` init and its DataLoader's order), with the init multiplied by ``1 + eps * z``,
``z ~ N(0, 1)`` drawn from key ``r`` for replicate ``r``. At eps 1e-7, about one float32
rounding (2^-24 = 6e-8 relative), the replicates differ as much as a GPU's summation order or
another torch version makes a rerun of the notebook differ from it; replicate ``-1`` is the
unperturbed replay. The spread of the last epoch's test figures over the replicates is the
noise any single run carries, against the spread over training seeds (``results/mnist.md``).

    python -m experiments.map_sensitivity --replicates 0 1 2 3 4 5 6 7 --threads 2

Writes ``results/map_sensitivity.json`` and ``.md`` after every replicate (a rerun of a
replicate replaces it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fbnn import cli, torch_draws, tree
from fbnn import random as fr
from fbnn.fit import fit

from experiments.mnist import ROWS, SEED, load_results

RESULTS = Path("results")


def jittered(params: dict, eps: float, replicate: int) -> dict:
    """``params * (1 + eps * z)``, ``z`` a standard normal pytree from key ``replicate``;
    replicate -1 (or eps 0) leaves ``params`` as they are."""
    if replicate < 0 or eps == 0:
        return params
    z = tree.normal_like(fr.key(replicate), params)
    return tree.map(lambda p, n: p * (1 + eps * n), params, z)


def run_replicate(replicate: int, eps: float, torch_seed: int, data_dir=None) -> dict:
    """The last-epoch test figures and the training curve of one replicate."""
    args = cli.parser().parse_args(["train", *ROWS["map"], "--dataset", "mnist", "--out", "-",
                                    "--torch-seed", str(torch_seed)])
    cfg = cli._run_config(args)
    x, y, xt, yt, info = cli.load_dataset("mnist", data_dir)
    n_out = info.get("n_classes", 10)
    _, method = cli.build(cfg, x.shape[-1], x.shape[0], n_out)
    sizes = cli.mlp_sizes(cfg, x.shape[-1], n_out)
    k_init, k_fit, k_eval = cli.run_keys(cfg["seed"])
    params = jittered(torch_draws.linear_params(sizes, torch_draws.generator(torch_seed)), eps, replicate)
    result = fit(method, method.init(k_init, params), (x, y), k_fit, epochs=cfg["epochs"],
                 batch_size=cfg["batch_size"], progress=False, order=cli.run_order(cfg, sizes, x.shape[0]))
    m = cli.evaluate_run(method, result.state, xt, yt, k_eval, 1, info)
    steps = cli.steps_per_epoch(cfg, x.shape[0])
    return {"replicate": replicate, "eps": eps if replicate >= 0 else 0.0, "torch_seed": torch_seed,
            "test_loglik_sum": m["test_loglik_sum"], "error_pct": m["error_pct"],
            "train_ce_by_epoch": [h["loss"] * steps / x.shape[0] for h in result.history],
            "train_wall_s": result.history[-1]["wall_s"]}


def summary(rows: list[dict]) -> dict:
    ll = torch.tensor([r["test_loglik_sum"] for r in rows], dtype=torch.float64)
    err = torch.tensor([r["error_pct"] for r in rows], dtype=torch.float64)
    seed_ll, seed_err = SEED["map"]
    return {"n": len(rows), "loglik_mean": float(ll.mean()), "loglik_std": float(ll.std()) if len(rows) > 1 else 0.0,
            "loglik_range": (float(ll.min()), float(ll.max())), "error_mean": float(err.mean()),
            "error_std": float(err.std()) if len(rows) > 1 else 0.0, "error_range": (float(err.min()), float(err.max())),
            "meet_both_bars": int(((ll >= seed_ll) & (err <= seed_err)).sum())}


def markdown(results: dict) -> str:
    rows = sorted(results["replicates"].values(), key=lambda r: r["replicate"])
    lines = ["# MAP on MNIST: the noise of one run", "",
             "The seed's MAP settings from the seed notebook's own init and data order (torch seed 42), the init "
             "multiplied by 1 + eps z (z from key r); replicate -1 is the unperturbed replay. Test set, last epoch "
             f"(the table's figure). `{results['command']}` at {results['commit']}.", "",
             "| replicate | eps | test log like | error % | train CE epoch 0 | train CE epoch 9 | train wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ce = r["train_ce_by_epoch"]
        lines.append(f"| {r['replicate']} | {r['eps']:g} | {r['test_loglik_sum']:.2f} | {r['error_pct']:.2f} | "
                     f"{ce[0]:.6f} | {ce[-1]:.6f} | {r['train_wall_s']:.0f} |")
    jitter = [r for r in rows if r["replicate"] >= 0]
    if len(jitter) > 1:
        s = summary(jitter)
        seed_ll, seed_err = SEED["map"]
        lines += ["", f"Perturbed replicates: {s['n']}; test log like {s['loglik_mean']:.1f} ± {s['loglik_std']:.1f} "
                  f"(range {s['loglik_range'][0]:.1f} to {s['loglik_range'][1]:.1f}), error {s['error_mean']:.2f} ± "
                  f"{s['error_std']:.2f} % (range {s['error_range'][0]:.2f} to {s['error_range'][1]:.2f}); "
                  f"{s['meet_both_bars']} of {s['n']} meet both of the seed's figures ({seed_err} %, {seed_ll}). "
                  "Mean ± sample standard deviation."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicates", type=int, nargs="+", required=True, help="keys of the jitter; -1: none")
    p.add_argument("--eps", type=float, default=1e-7, help="relative size of the init's jitter (> 0)")
    p.add_argument("--torch-seed", type=int, default=42)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if not args.eps > 0:
        p.error(f"--eps must be > 0, got {args.eps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.results_dir) / "map_sensitivity.json"
    results = load_results(out)
    command = "python -m experiments.map_sensitivity " + " ".join(argv if argv is not None else sys.argv[1:])
    if results and (results.get("eps"), results.get("torch_seed")) != (args.eps, args.torch_seed):
        raise ValueError(f"{out} holds replicates of eps {results.get('eps')}, torch seed {results.get('torch_seed')}; "
                         "use another --results-dir")
    results.update({"eps": args.eps, "torch_seed": args.torch_seed, "command": command, "commit": cli.git_commit()})
    reps = results.setdefault("replicates", {})
    for r in args.replicates:
        t0 = time.perf_counter()
        reps[str(r)] = run_replicate(r, args.eps, args.torch_seed, args.data_dir)
        print(json.dumps(reps[str(r)] | {"wall_s": time.perf_counter() - t0}), flush=True)
        jitter = [v for v in reps.values() if v["replicate"] >= 0]
        if len(jitter) > 1:
            results["summary"] = summary(jitter)
        cli.write_json_atomic(out, results)
        cli.write_text_atomic(Path(args.results_dir) / "map_sensitivity.md", markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
