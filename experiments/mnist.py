"""MNIST rows of the seed's results table (SPEC 0.1, 8), trained with ``fbnn train``.

    python -m experiments.mnist map            # 10 epochs, ~2 min on 2 cores
    python -m experiments.mnist mc_dropout     # 60 epochs
    python -m experiments.mnist ensemble       # 10 members x 10 epochs, vmapped
    python -m experiments.mnist sgld           # 200 epochs, 90 samples kept on disk
    python -m experiments.mnist psgld          # 200 epochs, 90 samples
    python -m experiments.mnist sghmc_sa       # 250 epochs, 100 samples

Settings of one's own go after ``--`` as ``fbnn train`` arguments, which override the seed's,
and need a row name of their own, for example

    python -m experiments.mnist sghmc_sa --row-name sghmc_sa_fixed_prior -- --resample-prior-every 0

Each run checkpoints every epoch under ``runs/mnist/<row>`` (``--resume`` continues),
then adds its row to ``results/mnist.json`` and rewrites ``results/mnist.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fbnn import cli

RESULTS = Path(__file__).resolve().parents[1] / "results"

# The seed's settings (SPEC 8) as `fbnn train` arguments.
ROWS = {
    "map": ["--method", "map", "--optimizer", "sgd", "--lr", "1e-3", "--momentum", "0.5",
            "--weight-decay", "0", "--batch-size", "100", "--epochs", "10"],
    "mc_dropout": ["--method", "mc_dropout", "--dropout", "0.5", "--optimizer", "sgd", "--lr", "1e-3",
                   "--momentum", "0.5", "--weight-decay", "0.01", "--batch-size", "128", "--epochs", "60",
                   "--eval-samples", "100"],
    "ensemble": ["--method", "ensemble", "--members", "10", "--resample", "bernoulli", "--fraction", "0.8",
                 "--optimizer", "sgd", "--lr", "1e-3", "--momentum", "0.5", "--weight-decay", "0",
                 "--batch-size", "128", "--epochs", "10"],
    # SG-MCMC: samples after every even epoch from 16, the last 90 kept (epochs 20..198, SPEC 3.6)
    "sgld": ["--method", "sgld", "--lr", "1e-5", "--prior-sigma", "0.1", "--batch-size", "128",
             "--epochs", "200", "--collect-from", "16", "--thin", "2", "--keep", "90"],
    "psgld": ["--method", "psgld", "--lr", "1e-4", "--alpha", "0.99", "--eps", "1e-8", "--prior-sigma", "0.1",
              "--batch-size", "128", "--epochs", "200", "--collect-from", "16", "--thin", "2", "--keep", "90"],
    # samples after every even epoch from 20, the last 100 kept (epochs 50..248, SPEC 3.9). The seed's
    # burn-in order diverges once adaptation stops (loss 3e6 -> 1e14 within 4 epochs): pybnn's order.
    "sghmc_sa": ["--method", "sghmc_sa", "--adaptation", "pybnn", "--lr", "1e-2", "--friction", "0.05", "--prior-sigma", "0.1",
                 "--batch-size", "256", "--epochs", "250", "--adapt-epochs", "20",
                 "--resample-momentum-every", "50", "--resample-prior-every", "15", "--clip-std-mul", "20",
                 "--collect-from", "20", "--thin", "2", "--keep", "100"],
}

# --quick: the same code paths on 1,000 training and 500 test images, 2 epochs, few samples.
QUICK = ["--epochs", "2", "--subset", "1000", "--test-subset", "500", "--batch-size", "100"]
QUICK_ROW = {"map": [], "mc_dropout": ["--eval-samples", "5"], "ensemble": ["--members", "2"],
             "sgld": ["--collect-from", "0", "--thin", "1", "--keep", "2"],
             "psgld": ["--collect-from", "0", "--thin", "1", "--keep", "2"],
             "sghmc_sa": ["--adapt-epochs", "1", "--collect-from", "1", "--thin", "1", "--keep", "2"]}

# The seed's README table (SPEC 0.1): (test log-likelihood summed over 10,000 images, error %).
SEED = {"map": (-572.9, 1.58), "ensemble": (-496.54, 1.53), "mc_dropout": (-435.458, 1.37),
        "bbp_gaussian": (-1100.29, 2.60), "bbp_gmm": (-1008.28, 2.38), "bbp_laplace": (-892.85, 2.28),
        "bbp_lrt": (-1086.43, 2.61), "sgld": (-828.29, 1.76), "psgld": (-661.25, 1.76),
        "kfac_laplace": (-1387.24, 2.08)}


def load_results(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def markdown_table(results: dict) -> str:
    lines = ["# MNIST test set (10,000 images)", "",
             "Log like = sum over the test set of log p(y|x) under the posterior predictive "
             "(mean of softmax probabilities over samples); error = argmax of that predictive. "
             "Seed numbers: the README table of the seed repository (SPEC 0.1).", "",
             "| row | method | error % | log like | seed error % | seed log like | samples | epochs | "
             "wall (s) | command | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, r in sorted(results.items()):
        seed_ll, seed_err = (SEED.get(row.split("_seed")[0]) or SEED.get((r.get("config") or {}).get("row"))
                             or SEED.get(r["method"], (None, None)))
        fmt = (lambda v, f: f.format(v) if v is not None else "–")
        lines.append(f"| {row} | {r['method']} | {r['error_pct']:.2f} | {r['test_loglik_sum']:.2f} | "
                     f"{fmt(seed_err, '{:.2f}')} | {fmt(seed_ll, '{:.2f}')} | {r['n_samples']} | "
                     f"{r['epochs']} | {r['wall_s']:.0f} | `{r['command']}` | {r['commit']} |")
    notes = [f"- `{row}`: {r['note']}" for row, r in sorted(results.items()) if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines + seed_summary(results)) + "\n"


def seed_summary(results: dict) -> list[str]:
    """Mean and standard deviation over the seeds of each row that was run with several.

    A rerun of a seed already in the group (say ``ensemble_seed0`` beside ``ensemble``, both
    ``--seed 0``) is the same draw and is counted once: the row whose name sorts first."""
    groups: dict = {}
    for name, r in sorted(results.items()):
        group = groups.setdefault(name.split("_seed")[0], {})
        seed = (r.get("config") or {}).get("seed")
        group.setdefault(seed if isinstance(seed, int) else name, r)  # no single seed: its own draw
    lines = []
    for base, by_seed in sorted(groups.items()):
        rs = list(by_seed.values())
        if len(rs) < 2:
            continue
        err = torch.tensor([r["error_pct"] for r in rs], dtype=torch.float64)
        ll = torch.tensor([r["test_loglik_sum"] for r in rs], dtype=torch.float64)
        lines.append(f"| {base} | {len(rs)} | {err.mean():.2f} ± {err.std():.2f} | "
                     f"{ll.mean():.1f} ± {ll.std():.1f} | {err.min():.2f} – {err.max():.2f} | "
                     f"{ll.min():.1f} – {ll.max():.1f} |")
    if not lines:
        return []
    return ["", "## Spread over training seeds", "",
            "Rows `<row>_seed<k>` rerun `<row>` with `--seed k` (seed 0 is the row itself; a second "
            "row of one seed is counted once); mean ± sample standard deviation.", "",
            "| row | seeds | error % | log like | error range | log like range |",
            "|---|---|---|---|---|---|", *lines]


def record(row: str, metrics: dict, command: str, results_dir: Path = RESULTS,
           own_settings: list[str] | None = None) -> dict:
    entry = {"method": metrics["config"]["method"], "error_pct": metrics["error_pct"],
             "test_loglik_sum": metrics["test_loglik_sum"], "n_samples": metrics["n_samples"],
             "epochs": metrics["epochs"], "wall_s": metrics["train_wall_s"] + metrics["eval_s"],
             "command": command, "commit": metrics["commit"],
             "extra": {k: metrics[k] for k in ("nll_mean", "brier", "ece", "mean_total_entropy",
                                               "mean_epistemic_entropy", "train_wall_s", "eval_s")},
             **({"evidential_u": {k: metrics[k] for k in ("mean_u", "mean_u_correct", "mean_u_wrong", "max_prob_correct",
                                                    "max_prob_wrong", "mean_dirichlet_mutual_info")}}
                if "mean_u" in metrics else {}),
             **({"own_settings": list(own_settings)} if own_settings else {}),
             "config": metrics["config"]}
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "mnist.json"
    results = load_results(path)
    results[row] = entry
    cli.write_json_atomic(path, results)
    cli.write_text_atomic(results_dir / "mnist.md", markdown_table(results))
    return entry


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """A script's own arguments and the ``fbnn train`` arguments after ``--``."""
    if "--" not in argv:
        return argv, []
    return argv[:argv.index("--")], argv[argv.index("--") + 1:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="after --: `fbnn train` arguments that replace the seed's settings "
                                       "(need --row-name)")
    p.add_argument("row", choices=sorted(ROWS))
    p.add_argument("--runs-dir", default="runs/mnist", help="checkpoints go to RUNS_DIR/<row>")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="training seed; k > 0 records row <row>_seed<k>")
    p.add_argument("--members", type=int, default=None, help="ensemble members (default 10)")
    p.add_argument("--row-name", default=None, help="record under this row name (e.g. ensemble_20)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-record", action="store_true", help="do not write results/")
    p.add_argument("--epochs", type=int, default=None, help="override the row's epochs (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--quick", action="store_true", help="2 epochs on 1,000 images (same code paths; minutes)")
    p.add_argument("--results-dir", default=str(RESULTS), help="where mnist.json / mnist.md are written")
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, overrides = split_overrides(argv)
    args = p.parse_args(ours)
    if overrides and not args.row_name:
        p.error(f"settings of your own ({' '.join(overrides)}) need --row-name, "
                f"so that they do not replace the seed-settings row {args.row!r}")
    if any(a == "--val" or a.startswith("--val=") for a in overrides) and not args.no_record:
        p.error("--val scores the run on training images: the test table takes none (pass --no-record, "
                "or choose settings with experiments.val_grid)")
    command = "python -m experiments.mnist " + " ".join(argv)
    name = args.row_name or (args.row if args.seed == 0 else f"{args.row}_seed{args.seed}")
    train_args = ["train", "--dataset", "mnist", *ROWS[args.row], "--seed", str(args.seed),
                  "--out", str(Path(args.runs_dir) / name)]
    if args.quick:
        train_args += QUICK + QUICK_ROW[args.row] + ["--no-progress"]
    if args.epochs is not None:
        train_args += ["--epochs", str(args.epochs)]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.members is not None:
        train_args += ["--members", str(args.members)]
    if args.resume:
        train_args.append("--resume")
    if args.data_dir:
        train_args += ["--data-dir", args.data_dir]
    ns = cli.parser().parse_args(train_args + overrides)
    ns.command_line = command
    metrics = cli.cmd_train(ns)
    if not args.no_record:
        record(name, metrics, command, args.results_dir, own_settings=overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
