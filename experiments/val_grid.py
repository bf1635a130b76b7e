"""Choose one ``fbnn train`` setting of an MNIST row on held-out training images, not the test set.

    python -m experiments.val_grid ensemble --option weight-decay --values 0 0.01 0.03 0.1 0.3 1 \\
        --name ensemble_wd_val -- --members 2

Each value trains the row's seed settings (``experiments.mnist.ROWS``) with ``--OPTION VALUE`` and
``--val N`` (the last N of the 60,000 training images held out of training and evaluated on,
default 10,000) into RUNS_DIR/<name>/<option><value>; a finished run there is evaluated again,
not retrained. ``results/<name>.json`` and ``.md`` list the validation error and summed log
likelihood of each value and name the best log likelihood. The test set is never read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fbnn import cli

from .mnist import RESULTS, ROWS, split_overrides


def grid_markdown(report: dict) -> str:
    lines = [f"# {report['name']}: `--{report['option']}` of row `{report['row']}` on validation images", "",
             f"Validation set: the last {report['val']} training images, held out of training; the test set "
             f"is not used. Settings: the row's seed settings, then `{' '.join(report['overrides'])}`.", "",
             f"Command: `{report['command']}`", "",
             f"| --{report['option']} | val error % | val log like (sum) | val NLL (mean) | ECE | train wall (s) "
             "| commit |", "|---|---|---|---|---|---|---|"]
    for value, m in report["values"].items():
        lines.append(f"| {value} | {m['error_pct']:.2f} | {m['loglik_sum']:.2f} | {m['nll_mean']:.4f} | "
                     f"{m['ece']:.4f} | {m['train_wall_s']:.0f} | {m['commit']} |")
    lines += ["", f"Best log likelihood: `--{report['option']} {report['best']}`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="after --: `fbnn train` arguments added to every run")
    p.add_argument("row", choices=sorted(ROWS))
    p.add_argument("--option", required=True, help="an `fbnn train` option without its dashes, e.g. weight-decay")
    p.add_argument("--values", nargs="+", required=True)
    p.add_argument("--name", required=True, help="report and run-directory name")
    p.add_argument("--val", type=int, default=10000, help="held-out training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="runs/val_grid")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, overrides = split_overrides(argv)
    args = p.parse_args(ours)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python -m experiments.val_grid " + " ".join(argv)
    values = {}
    for value in args.values:
        train_args = ["train", "--dataset", "mnist", *ROWS[args.row], "--seed", str(args.seed), *overrides,
                      f"--{args.option}", value, "--val", str(args.val), "--eval-every", "0", "--no-progress",
                      "--resume", "--out", str(Path(args.runs_dir) / args.name / f"{args.option}{value}")]
        if args.data_dir:
            train_args += ["--data-dir", args.data_dir]
        ns = cli.parser().parse_args(train_args)
        ns.command_line = None
        m = cli.cmd_train(ns)
        values[value] = {"error_pct": m["error_pct"], "loglik_sum": m["test_loglik_sum"],
                         "nll_mean": m["nll_mean"], "ece": m["ece"], "train_wall_s": m["train_wall_s"],
                         "commit": m["commit"], "eval_set": m["eval_set"]}
    report = {"name": args.name, "row": args.row, "option": args.option, "val": args.val,
              "overrides": overrides, "command": command, "values": values,
              "best": max(values, key=lambda v: values[v]["loglik_sum"])}
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    text = grid_markdown(report)
    cli.write_json_atomic(results / f"{args.name}.json", report)
    cli.write_text_atomic(results / f"{args.name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
