"""Pool the members of ``fbnn train`` ensemble runs that differ only in their seed into one
ensemble, or the kept samples of SG-MCMC runs that differ only in their seed into one
multi-chain predictive, and score it on the test set as it grows run by run.

    python -m experiments.ensemble_pool runs/mnist/ensemble runs/mnist/ensemble_seed{1..9} \\
        --row-name ensemble_pooled
    python -m experiments.ensemble_pool runs/mnist/psgld_seed{1..4} --report psgld_chain_pool

Runs with different seeds draw their members' inits, Bernoulli subsets and shuffles from different keys,
so their members are independent draws of one training procedure: ten 10-member runs pooled
are a 100-member ensemble, the seed script's default (SPEC 3.2, 8), trained in pieces that each
fit well inside an hour. SG-MCMC runs with different seeds are independent chains: pooled, their
kept samples are the predictive of parallel chains run one after another. Writes
``results/ensemble_pool.json`` and ``.md`` (or ``--report``'s): the metrics of the first k runs
pooled, k = 1..n in the order given (k = 1 is the first run's own evaluation), and, beside them,
those of the same draws with their logits averaged instead of their probabilities (the default
of the seed's ``sample_eval``), and each run's draws (members or samples) scored alone; with
``--row-name``, also the whole pool as a row of ``results/mnist.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fbnn import cli, metrics
from fbnn.fit import load_checkpoint
from fbnn.predict import predictive

from experiments import mnist

RESULTS = mnist.RESULTS


POOLABLE = ("ensemble", *cli.SAMPLERS)


def load_runs(paths) -> list[dict]:
    """Checkpoint, config and (when present) ``metrics.json`` of each run directory; raises
    ``ValueError`` unless every run is a finished ensemble or SG-MCMC run, all with one config
    but their seeds."""
    runs = []
    for path in map(Path, paths):
        ckpt = load_checkpoint(path / "checkpoint.pt")
        cfg = (ckpt.get("meta") or {}).get("config")
        if cfg is None or cfg.get("method") not in POOLABLE:
            raise ValueError(f"{path}: not an `fbnn train` ensemble or SG-MCMC run "
                             f"(method {cfg and cfg.get('method')!r})")
        if ckpt["epoch"] < cfg["epochs"]:
            raise ValueError(f"{path}: unfinished, {ckpt['epoch']} of {cfg['epochs']} epochs trained "
                             "(finish it with --resume first)")
        saved = path / "metrics.json"
        runs.append({"path": path, "ckpt": ckpt, "cfg": cfg,
                     "metrics": json.loads(saved.read_text()) if saved.exists() else None})
    if not runs:
        raise ValueError("ensemble_pool: no runs given")
    first = runs[0]
    for run in runs[1:]:
        changed = sorted(k for k in set(first["cfg"]) | set(run["cfg"])
                         if k != "seed" and first["cfg"].get(k) != run["cfg"].get(k))
        if changed:
            raise ValueError(f"{run['path']} and {first['path']} differ in more than their seed: "
                             + ", ".join(f"{k}={run['cfg'].get(k)!r} vs {first['cfg'].get(k)!r}" for k in changed))
    seeds = [r["cfg"]["seed"] for r in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seed(s) {repeated} given more than once: their members would be counted twice")
    return runs


def member_logits(run: dict, x: torch.Tensor, n_in: int, n_data: int, n_classes: int) -> torch.Tensor:
    """``(M, B, K)`` logits on ``x`` of a run's ``M`` draws as ``fbnn evaluate`` computes them:
    an ensemble's members (the run's evaluation key, every member once) or an SG-MCMC run's
    kept samples (every one, in the order kept)."""
    cfg = run["cfg"]
    model, method = cli.build(cfg, n_in, n_data, n_classes)
    cli._check_state_fits(model, method, cfg, run["ckpt"]["state"], run["path"])
    if cfg["method"] in cli.SAMPLERS:
        return cli._collected_outputs(model, cli.collected_draws(run["ckpt"]), x)
    k_eval = cli.run_keys(cfg["seed"])[2]
    return predictive(method, run["ckpt"]["state"], x, k_eval, cfg["members"], probs=False)


def pooled_curve(logits: list[torch.Tensor], y: torch.Tensor) -> list[dict]:
    """Metrics of the first k runs' members pooled, for k = 1..len(logits): of the mean of
    their probabilities (SPEC 1.4), and, under ``logit_average``, of the softmax of their mean
    logits (the default of the seed's ``sample_eval``, ``logits=True``)."""
    pool = torch.cat(logits)
    probs = torch.softmax(pool, -1)
    curve, members = [], 0
    for k, run in enumerate(logits, 1):
        members += run.shape[0]
        p, by_logits = probs[:members], torch.softmax(pool[:members].mean(0), -1)
        curve.append({"runs": k, "members": members, **metrics.classification_summary(p.mean(0), y, p),
                      "logit_average": {"error_pct": metrics.error_pct(by_logits, y),
                                        "test_loglik_sum": metrics.test_loglik_sum(by_logits, y)}})
    return curve


def member_scores(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """Each of a run's draws (members or samples) scored on its own, ``logits`` ``(M, B, K)``:
    the mean, min and max over the M draws of the single-draw error % and summed test
    log-likelihood."""
    probs = torch.softmax(logits, -1)
    scores = {}
    for name, score in (("error_pct", metrics.error_pct), ("test_loglik_sum", metrics.test_loglik_sum)):
        t = torch.tensor([score(p, y) for p in probs], dtype=torch.float64)
        scores[name] = {"mean": float(t.mean()), "min": float(t.min()), "max": float(t.max())}
    return scores


def markdown(report: dict) -> str:
    chains = report.get("method", "ensemble") != "ensemble"
    draws = "samples" if chains else "members"
    lines = [f"# {'SG-MCMC chains' if chains else 'Ensembles'} pooled from runs that differ only in their seed", "",
             f"Command: `{report['command']}` (commit {report['commit']}). Row k pools the {draws} of the "
             "first k runs below; row 1 is the first run's own evaluation.", "",
             f"| runs | {draws} | error % | log like | NLL mean | Brier | ECE | epistemic entropy "
             "| logits averaged: error % / log like |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c['runs']} | {c['members']} | {c['error_pct']:.2f} | {c['test_loglik_sum']:.2f} | "
              f"{c['nll_mean']:.4f} | {c['brier']:.4f} | {c['ece']:.4f} | {c['mean_epistemic_entropy']:.4f} "
              f"| {c['logit_average']['error_pct']:.2f} / {c['logit_average']['test_loglik_sum']:.2f} |"
              for c in report["curve"]]
    lines += ["", f"{draws.capitalize()} alone: each of the run's {draws} scored on its own, mean (min – max) "
              "over them.", "",
              f"| run | seed | {draws} | {draws} alone: error % | {draws} alone: log like | train wall (s) | commit |",
              "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        e, ll = r["member_alone"]["error_pct"], r["member_alone"]["test_loglik_sum"]
        lines.append(f"| {r['path']} | {r['seed']} | {r['members']} | {e['mean']:.2f} ({e['min']:.2f} – {e['max']:.2f}) | "
                     f"{ll['mean']:.1f} ({ll['min']:.1f} – {ll['max']:.1f}) | "
                     f"{'–' if r['train_wall_s'] is None else round(r['train_wall_s'])} | {r['commit']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories of `fbnn train --method ensemble`")
    p.add_argument("--row-name", default=None, help="also record the whole pool as this row of mnist.json")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--report", default="ensemble_pool",
                   help="the curve goes to RESULTS_DIR/REPORT.md and .json (default ensemble_pool)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runs = load_runs(args.runs)
    if args.row_name and any(r["metrics"] is None for r in runs):
        p.error("--row-name needs each run's metrics.json (its training wall time and commit); missing in "
                + ", ".join(str(r["path"]) for r in runs if r["metrics"] is None))
    cfg = runs[0]["cfg"]
    x, y, xt, yt, info = cli.load_dataset(cfg["dataset"], args.data_dir, cfg["split"])
    x, y, xt, yt = cli._subsets(cfg, x, y, xt, yt)
    logits = [member_logits(r, xt, x.shape[-1], x.shape[0], info.get("n_classes", 10)) for r in runs]
    curve = pooled_curve(logits, yt)
    eval_s = time.perf_counter() - t0
    command = "python -m experiments.ensemble_pool " + " ".join(argv)
    run_rows = [{"path": str(r["path"]), "seed": r["cfg"]["seed"], "members": lg.shape[0],
                 "train_wall_s": (r["metrics"] or {}).get("train_wall_s"),
                 "commit": (r["metrics"] or {}).get("commit", "unknown"), "member_alone": member_scores(lg, yt)}
                for r, lg in zip(runs, logits)]
    report = {"command": command, "commit": cli.git_commit(), "method": cfg["method"], "curve": curve,
              "runs": run_rows}
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    cli.write_json_atomic(out / f"{args.report}.json", report)
    cli.write_text_atomic(out / f"{args.report}.md", markdown(report))
    print(markdown(report))
    if args.row_name:
        whole = curve[-1]
        pooled = {"members": whole["members"]} if cfg["method"] == "ensemble" else {"chains": len(run_rows)}
        mnist.record(args.row_name, {
            **whole, "n_samples": whole["members"], "epochs": cfg["epochs"], "eval_s": eval_s,
            "train_wall_s": sum(r["train_wall_s"] for r in run_rows),
            "commit": ",".join(dict.fromkeys(r["commit"] for r in run_rows)),
            "config": {**cfg, **pooled, "seed": [r["seed"] for r in run_rows]}},
            command, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
