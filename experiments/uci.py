"""UCI regression benchmarks (SPEC §5.4, §5.5): every method on the six datasets, two protocols.

    python -m experiments.uci                                   # everything -> results/uci.{json,md}
    python -m experiments.uci --protocol standard20 --datasets housing yacht --methods ensemble
    python -m experiments.uci --quick --out /tmp/uci            # 2 splits, a few epochs
    python -m experiments.uci --table                           # the runs behind results/uci.json

Protocols: ``standard20``, the 20 given train/test splits of the PBP / MC-dropout papers;
``seed10fold``, the seed's seeded permutation + 10-fold KFold (``fbnn.data.uci.seed_kfold_splits``;
its energy target is Y1, not the seed's Y2). Nets: one hidden layer of 50 ReLU units with a
heteroscedastic ``[mu, log sigma]`` head, inputs and targets standardised with training
statistics; hyperparameters and epochs are chosen per split on 20 % of its training rows
(``fbnn.regression.score_splits``). Results are merged into ``<out>/uci.json`` (one entry per
protocol / method / dataset; ``n_splits`` says how many splits ran) and ``<out>/uci.md`` is
rewritten from it.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

from fbnn import cli
from fbnn import data as fdata
from fbnn import random as fr
from fbnn import regression as reg
from fbnn.data.uci import PROTOCOLS, UCI_DATASETS

RESULTS = Path(__file__).resolve().parents[1] / "results"

# The runs that produced results/uci.json, as (protocol, methods, steps_scale); ``--table`` runs
# them in turn. On the 20 standard splits the ensemble family trains at 4x its configured steps,
# BBP and SGHMC at 0.6x; the seed's 10-fold protocol runs everything at 0.5x.
TABLE_RUNS = (("standard20", ("ensemble", "map", "laplace", "ensemble_laplace"), 4.0),
              ("standard20", ("mc_dropout", "sgld"), 1.0),
              ("standard20", ("bbp", "sghmc"), 0.6),
              ("seed10fold", reg.REGRESSION_METHODS, 0.5))

# Published test log-likelihood / RMSE on the 20 standard splits (Gal & Ghahramani 2016 table;
# Lakshminarayanan et al. 2017 for deep ensembles).
PUBLISHED = {
    "PBP": {"housing": (-2.57, 3.01), "concrete": (-3.16, 5.67), "energy": (-2.04, 1.80),
            "power": (-2.84, 4.12), "wine": (-0.97, 0.64), "yacht": (-1.63, 1.02)},
    "MC dropout": {"housing": (-2.46, 2.97), "concrete": (-3.04, 5.23), "energy": (-1.99, 1.66),
                   "power": (-2.80, 4.02), "wine": (-0.93, 0.62), "yacht": (-1.55, 1.11)},
    "MC dropout 10x": {"housing": (-2.39, 2.80), "concrete": (-2.94, 4.81), "energy": (-1.72, 1.09),
                       "power": (-2.79, 4.00), "wine": (-0.92, 0.61), "yacht": (-1.38, 0.72)},
    "Deep ens": {"housing": (-2.41, 3.28), "concrete": (-3.06, 6.03), "energy": (-1.38, 2.09),
                 "power": (-2.79, 4.11), "wine": (-0.94, 0.64), "yacht": (-1.18, 1.58)},
}
BAR = "MC dropout 10x"


def load_splits(dataset: str, protocol: str, root) -> list[tuple]:
    """Raw ``(x_train, y_train, x_test, y_test)`` float64 arrays for every split of ``protocol``."""
    if protocol == "standard20":
        x, y = fdata.load_uci(dataset, root)
        pairs = fdata.standard_splits(dataset, root)
    elif protocol == "seed10fold":
        x, y, pairs = fdata.seed_kfold_splits(dataset, root)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return [(x[tr], y[tr], x[te], y[te]) for tr, te in pairs]


def merge_results(path: Path, protocol: str, method: str, dataset: str, entry: dict) -> dict:
    """Add one entry to the JSON file at ``path`` under a lock (runs may share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.exists() else {}
        results.setdefault(protocol, {}).setdefault(method, {})[dataset] = entry
        cli.write_json_atomic(path, results)
    return results


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    return (f"{entry['test_ll_mean']:.2f} ± {entry['test_ll_se']:.2f} / "
            f"{entry['rmse_mean']:.2f} ± {entry['rmse_se']:.2f}")


def markdown(results: dict) -> str:
    """The tables of ``uci.json``: per protocol, datasets x methods, test LL / RMSE (mean ± s.e.)."""
    lines = ["# UCI regression (fbnn)", "",
             "Test log-likelihood (nats per point, original units, with the ½log2π constant) / RMSE, "
             "mean ± standard error over splits. One hidden layer of 50 ReLU units, heteroscedastic "
             "[μ, log σ] head, inputs and targets standardised with training statistics. "
             "The stopping epoch (and the grid point, where a method's grid in `_CONFIGS` has more than "
             "one) is chosen per split on 20 % of its training rows; the test rows are never used to "
             "choose. Predictive = equal-weight mixture of the "
             "Gaussians of all nets / draws. `laplace`: a K-FAC GGN Laplace around the MAP net (the "
             "ensemble's first member), prior precision by its marginal likelihood on the training rows, "
             "GLM predictive; `ensemble_laplace`: the same around each of the ensemble's 5 members, mixed "
             "with equal weights (a mixture of Laplace approximations, Eschenhagen et al. 2021). "
             "Produced by `python -m experiments.uci --table` (settings: `fbnn/regression.py`, `_CONFIGS`; "
             "the protocol / methods / steps-scale groups: `TABLE_RUNS` in `experiments/uci.py`); one "
             "cell with steps_scale s below comes from `python -m experiments.uci --protocol <protocol> "
             "--datasets <dataset> --methods <method> --steps-scale s`.", ""]
    for protocol in PROTOCOLS:
        by_method = results.get(protocol, {})
        if not by_method:
            continue
        methods = [m for m in reg.REGRESSION_METHODS if m in by_method]
        datasets = [d for d in UCI_DATASETS if any(d in by_method[m] for m in methods)]
        lines += [f"## {protocol}", ""]
        head = ["dataset", *methods]
        if protocol == "standard20":
            head += [f"{name} (published)" for name in PUBLISHED]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for d in datasets:
            row = [d] + [_cell(by_method[m].get(d)) for m in methods]
            if protocol == "standard20":
                row += [f"{PUBLISHED[name][d][0]:.2f} / {PUBLISHED[name][d][1]:.2f}" for name in PUBLISHED]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "n_splits per cell: " + ", ".join(
            f"{m}/{d}={by_method[m][d]['n_splits']}" for m in methods for d in datasets if d in by_method[m]), "",
                  "steps_scale (fraction of the configured training steps) per cell: " + ", ".join(
            f"{m}/{d}={by_method[m][d].get('steps_scale', 1.0):g}" for m in methods for d in datasets
            if d in by_method[m]), ""]
        if protocol == "standard20":
            lines += [f"### Best fbnn method per dataset vs {BAR}", "",
                      f"| dataset | best fbnn method | test LL | {BAR} | beats? |", "|---|---|---|---|---|"]
            wins = 0
            for d in datasets:
                best = max((m for m in methods if d in by_method[m]),
                           key=lambda m: by_method[m][d]["test_ll_mean"])
                ll = by_method[best][d]["test_ll_mean"]
                win = ll > PUBLISHED[BAR][d][0]
                wins += win
                lines.append(f"| {d} | {best} | {ll:.3f} ± {by_method[best][d]['test_ll_se']:.3f} | "
                             f"{PUBLISHED[BAR][d][0]:.2f} | {'yes' if win else 'no'} |")
            lines += ["", f"Beats {BAR} on {wins} of {len(datasets)} datasets.", ""]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=UCI_DATASETS, default=list(UCI_DATASETS))
    p.add_argument("--methods", nargs="+", choices=reg.REGRESSION_METHODS,
                   default=list(reg.REGRESSION_METHODS))
    p.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--quick", action="store_true", help="2 splits, one grid point, a few epochs")
    p.add_argument("--max-splits", type=int, default=None, help="run only the first splits")
    p.add_argument("--data-dir", default=None, help="data root holding uci/ (default: $FBNN_DATA or ../shared/data)")
    p.add_argument("--out", default=str(RESULTS), help="folder for uci.json and uci.md")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply every method's training steps (a smaller CPU budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true",
                   help="run TABLE_RUNS, the protocol / methods / steps-scale groups behind results/uci.json "
                        "(replaces --protocol, --methods and --steps-scale)")
    p.add_argument("--report-only", action="store_true", help="only rewrite <out>/uci.md from <out>/uci.json")
    return p


def run_group(args, root: Path, out: Path, protocol: str, methods, steps_scale: float,
              max_splits: int | None) -> None:
    """Every method of ``methods`` on every dataset of ``args.datasets`` under ``protocol``;
    each result is merged into ``out/uci.json`` as soon as it exists."""
    json_path = out / "uci.json"
    runs = reg.uci_method_runs(methods)
    for dataset in args.datasets:
        splits = load_splits(dataset, protocol, root)[:max_splits]
        for run, with_laplace in runs:
            t0 = time.perf_counter()
            key = fr.fold_in(fr.key(args.seed), UCI_DATASETS.index(dataset))
            tag = f"[{protocol} {dataset}]"
            res = reg.score_splits(run, splits, key, quick=args.quick, laplace=with_laplace,
                                   steps_scale=steps_scale,
                                   progress=lambda msg, tag=tag: print(f"{tag} {msg}", flush=True))
            wall = time.perf_counter() - t0
            for method, per_split in res.items():
                if method not in methods:
                    continue
                entry = {**reg.summarize(per_split["test_ll"], per_split["rmse"]),
                         "test_ll_per_split": per_split["test_ll"], "rmse_per_split": per_split["rmse"],
                         "choices": per_split.get("choice"), "wall_s_of_run": wall, "quick": args.quick,
                         "steps_scale": steps_scale}
                results = merge_results(json_path, protocol, method, dataset, entry)
                print(f"[{protocol} {dataset}] {method}: test LL {entry['test_ll_mean']:.3f} ± "
                      f"{entry['test_ll_se']:.3f}, RMSE {entry['rmse_mean']:.3f} ± {entry['rmse_se']:.3f} "
                      f"({entry['n_splits']} splits, run {wall:.0f} s)", flush=True)
                cli.write_text_atomic(out / "uci.md", markdown(results))


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.report_only:
        json_path = Path(args.out) / "uci.json"
        if not json_path.exists():
            raise FileNotFoundError(f"no results to report: {json_path} does not exist")
        cli.write_text_atomic(Path(args.out) / "uci.md", markdown(json.loads(json_path.read_text())))
        return 0
    root = fdata.data_dir(args.data_dir)
    if not (root / "uci").is_dir():
        raise FileNotFoundError(f"UCI data folder {root / 'uci'} does not exist (see shared/data/README.md)")
    max_splits = args.max_splits if args.max_splits is not None else (2 if args.quick else None)
    out = Path(args.out)
    groups = TABLE_RUNS if args.table else [(p, args.methods, args.steps_scale) for p in args.protocol]
    for protocol, methods, steps_scale in groups:
        run_group(args, root, out, protocol, methods, steps_scale, max_splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
