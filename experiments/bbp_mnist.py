"""Bayes by Backprop rows of the seed's MNIST table (SPEC 0.1, 3.3, 3.4, 8) and the
weight-pruning table (SPEC 0.2, 4.6).

    python -m experiments.bbp_mnist train bbp_gaussian      # 160 epochs (hours on 2 cores)
    python -m experiments.bbp_mnist train bbp_gmm           # 200 epochs, theta_best on the test set
    python -m experiments.bbp_mnist train bbp_laplace       # 140 epochs
    python -m experiments.bbp_mnist train bbp_lrt           # 140 epochs, local reparametrisation
    python -m experiments.bbp_mnist prune bbp_gaussian      # SNR and KL pruning -> results/pruning.md

Training checkpoints every epoch under ``runs/bbp_mnist/<row>/checkpoint.pt`` (``--resume``
continues), evaluates the 100-sample predictive on the test set and adds the row to
``results/mnist.json`` / ``results/mnist.md`` (``experiments.mnist.record``).

``bbp_gmm`` reproduces the seed's ``theta_best``: the epoch with the lowest test error of
the posterior-mean net, i.e. **model selection on the test set** (the seed's leak, SPEC
1.1, 7 #11). It is the default for that row only (``--select best_on_test``); pass
``--select last`` for a clean number. Every row records the per-epoch posterior-mean
test error in the checkpoint's history.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from fbnn import cli, likelihoods, metrics, models, optim, pruning
from fbnn import priors as fp
from fbnn import random as fr
from fbnn.fit import fit, load_checkpoint, save_checkpoint
from fbnn.methods import vi
from fbnn.predict import predict, predict_probs

from . import mnist

RESULTS = Path(__file__).resolve().parents[1] / "results"
ARCH = [784, 1200, 1200, 10]

# SPEC 8 (values that produced the seed's numbers). prior: (kind, args); n_samples: S or {first_epoch: S}.
CONFIGS = {
    "bbp_gaussian": {"prior": ["normal", 0.1], "mean_scale": 0.2, "epochs": 160, "n_samples": 3,
                     "kl": "mc", "estimator": "sample", "select": "last"},
    "bbp_gmm": {"prior": ["scale_mixture", 0.75, 0.1, 5e-4, "joint_sum_additive"], "mean_scale": 0.1,
                "epochs": 200, "n_samples": {0: 3, 61: 5}, "kl": "mc", "estimator": "sample",
                "select": "best_on_test"},
    "bbp_laplace": {"prior": ["laplace", 0.1], "mean_scale": 0.2, "epochs": 140, "n_samples": 3,
                    "kl": "mc", "estimator": "sample", "select": "last"},
    "bbp_lrt": {"prior": ["normal", 0.1], "mean_scale": 0.2, "epochs": 140, "n_samples": {0: 1, 61: 3},
                "kl": "closed", "estimator": "lrt", "shared_bias_noise": True, "select": "last"},
}
COMMON = {"rho_init": [-3.0, -2.0], "optimizer": "sgd", "lr": 1e-3, "momentum": 0.0, "batch_size": 100,
          "kl_schedule": "uniform", "eval_samples": 100}

# SPEC 0.2: the seed notebooks' pruning errors (%) at SEED_FRACTIONS.
SEED_PRUNING = {
    ("bbp_gaussian", "snr"): [2.66, 2.74, 2.60, 2.66, 2.58, 2.63, 2.66, 2.75, 3.03],
    ("bbp_gmm", "snr"): [2.61, 2.54, 2.62, 2.53, 2.59, 2.58, 2.56, 2.56, 2.97],
    ("bbp_laplace", "snr"): [2.30, 2.30, 2.27, 2.30, 2.31, 2.30, 2.32, 3.02, 3.55],
    ("bbp_lrt", "snr"): [2.66, 2.61, 2.65, 2.66, 2.66, 2.76, 2.73, 2.98, 3.40],
    ("bbp_gaussian", "kl"): [2.64, 2.55, 2.71, 2.69, 2.73, 2.87, 3.27, 4.10, 4.37],
    ("bbp_laplace", "kl"): [2.34, 2.33, 2.42, 2.59, 2.95, 3.34, 3.71, 4.22, 4.58],
}


def make_prior(spec):
    kind, *args = spec
    if kind == "normal":
        return fp.normal(args[0])
    if kind == "laplace":
        return fp.laplace(args[0])
    if kind == "scale_mixture":
        pi, s1, s2, mode = args
        return fp.scale_mixture(pi, s1, s2, mode=mode)
    raise ValueError(f"unknown prior {kind!r}")


def config(row: str, **overrides) -> dict:
    if row not in CONFIGS:
        raise ValueError(f"unknown row {row!r}; choose one of {sorted(CONFIGS)}")
    cfg = {**COMMON, **CONFIGS[row], "row": row, "shared_bias_noise": CONFIGS[row].get("shared_bias_noise", False)}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def build(cfg: dict, n_train: int):
    """``(model, method, n_batches)`` for a config."""
    model = models.mlp(ARCH)
    n_batches = math.ceil(n_train / cfg["batch_size"])
    vmodel = vi.variational(model, estimator=cfg["estimator"], shared_bias_noise=cfg["shared_bias_noise"])
    n_samples = cfg["n_samples"]
    if isinstance(n_samples, dict):
        n_samples = {int(k): int(v) for k, v in n_samples.items()}
    method = vi.bbp(vmodel, likelihoods.categorical(), optim.sgd(cfg["lr"], momentum=cfg["momentum"]),
                    make_prior(cfg["prior"]), n_batches, n_samples=n_samples, kl=cfg["kl"],
                    kl_schedule=cfg["kl_schedule"], mean_init="uniform", mean_scale=cfg["mean_scale"],
                    rho_init=tuple(cfg["rho_init"]))
    return model, method, n_batches


def evaluate(method, state, x, y, key, n_samples: int, chunk: int = 10) -> dict:
    """The keys of ``fbnn.cli.evaluate_run`` for classification, with the weight draws made
    ``chunk`` at a time (100 draws of the 2.4M-weight net would take ~1 GB at once)."""
    t0 = time.perf_counter()
    sample_probs = torch.cat([predict_probs(method.model, s, x)
                              for s in vi.sample_chunks(state, key, n_samples, chunk)])
    return {**metrics.classification_summary(sample_probs.mean(0), y, sample_probs), "n_samples": n_samples,
            "eval_s": time.perf_counter() - t0}


def mean_error(method, state, x, y) -> float:
    """Test error (%) of the posterior-mean net (the seed's per-epoch ``eval``)."""
    out = predict(method.model, vi.posterior_mean(state), x)[0]
    return metrics.error_pct(torch.softmax(out, -1), y)


def dev_eval_fn(method, xt, yt, best_path: Path | None):
    """Per-epoch posterior-mean test error; with ``best_path`` also keeps the best state there
    (written atomically, so it survives an interrupted run and ``--resume``)."""
    best = {"error": math.inf}
    if best_path is not None and best_path.exists():
        best["error"] = load_checkpoint(best_path)["dev_error_pct"]

    def eval_fn(state, epoch):
        err = mean_error(method, state, xt, yt)
        if best_path is not None and err < best["error"]:
            best["error"] = err
            save_checkpoint(best_path, {"state": state, "epoch": epoch, "dev_error_pct": err})
        return {"dev_error_pct": err}
    return eval_fn


def _data(args):
    x, y, xt, yt, _ = cli.load_dataset("mnist", args.data_dir)
    if args.subset:
        x, y = x[:args.subset], y[:args.subset]
    if args.test_subset:
        xt, yt = xt[:args.test_subset], yt[:args.test_subset]
    return x, y, xt, yt


def run_dir(args, row: str) -> Path:
    return Path(args.runs_dir) / (row if args.seed == 0 else f"{row}_seed{args.seed}")


def selected_state(cfg, ckpt_dir: Path, state):
    """The state the row reports: the last one, or the best-on-test one (``theta_best``)."""
    if cfg["select"] == "best_on_test":
        best = load_checkpoint(ckpt_dir / "best.pt")
        return best["state"], best["epoch"]
    return state, None


def shortened(row: str, epochs: int | None) -> str:
    """``"30/160 ep"`` for a run of ``row`` trained for fewer epochs than the seed's config, else ``""``."""
    seed_epochs = CONFIGS.get(row, {}).get("epochs")
    return f"{epochs}/{seed_epochs} ep" if seed_epochs and epochs and epochs < seed_epochs else ""


def row_name(args) -> str:
    """The results row of a training run. A run shorter or longer than the seed's config (on the
    full training set) is not the seed's row: it needs ``--row-name`` (or ``--no-record``)."""
    if args.row_name:
        return args.row_name
    seed_epochs = CONFIGS[args.row]["epochs"]
    if args.epochs not in (None, seed_epochs) and not args.subset and not args.no_record:
        raise ValueError(f"--epochs {args.epochs} is not the seed's {seed_epochs} for {args.row}: record it "
                         f"under a name of its own (--row-name, e.g. {args.row}_{args.epochs}ep) or pass --no-record")
    return args.row if args.seed == 0 else f"{args.row}_seed{args.seed}"


def cmd_train(args) -> dict:
    name = row_name(args)
    cfg = config(args.row, epochs=args.epochs, select=args.select, eval_samples=args.eval_samples)
    cfg.update({"seed": args.seed, "subset": args.subset, "method": None})
    x, y, xt, yt = _data(args)
    model, method, _ = build(cfg, x.shape[0])
    cfg["method"] = method.name
    out_dir = run_dir(args, args.row)
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists() and not args.resume:
        raise FileExistsError(f"{ckpt} exists; pass --resume to continue it or choose another --runs-dir")
    if ckpt.exists():
        old = (load_checkpoint(ckpt).get("meta") or {}).get("config", {})
        changed = sorted(k for k in cfg if k != "epochs" and old.get(k) != cfg[k])
        if changed:
            raise ValueError(f"--resume: {ckpt} was trained with other settings: "
                             + ", ".join(f"{k}={old.get(k)!r} (now {cfg[k]!r})" for k in changed))
    k_init, k_fit, k_eval = fr.split(fr.key(args.seed), 3)
    state = method.init(k_init, model.init(k_init))
    commit = cli.git_commit()
    best_path = out_dir / "best.pt" if cfg["select"] == "best_on_test" else None
    result = fit(method, state, (x, y), k_fit, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                 eval_fn=dev_eval_fn(method, xt, yt, best_path), checkpoint=ckpt, resume=args.resume,
                 progress=not args.no_progress, meta={"config": cfg}, description=args.row)
    state, best_epoch = selected_state(cfg, out_dir, result.state)
    out = evaluate(method, state, xt, yt, k_eval, cfg["eval_samples"])
    out.update({"train_wall_s": result.history[-1]["wall_s"] if result.history else 0.0,
                "epochs": cfg["epochs"], "config": {**cfg, "best_epoch": best_epoch}, "commit": commit,
                "command": args.command_line})
    cli.write_json_atomic(out_dir / "metrics.json", out)
    print(json.dumps({k: v for k, v in out.items() if k != "config"}, indent=2))
    if not args.no_record:
        own = ["--epochs", str(cfg["epochs"])] if cfg["epochs"] != CONFIGS[args.row]["epochs"] else None
        mnist.record(name, out, args.command_line, args.results_dir, own_settings=own)
    return out


# --- pruning ------------------------------------------------------------------------------------

def pruning_markdown(results: dict) -> str:
    fr_cols = " | ".join(f"{f:g}" for f in pruning.SEED_FRACTIONS)
    lines = ["# Weight pruning of the BBP MNIST nets (SPEC 0.2, 4.6)", "",
             ("Test error (%) of the 100-sample predictive after removing the given fraction of all "
              "weights and biases with the lowest score (pruned: mu = 0, rho = -1000, i.e. sigma = 1e-6). "
              "Scores: `snr` = |mu|/sigma; `kl` = per-weight KL(q || prior), Monte Carlo with 20 samples "
              "as the seed. `seed` rows: the seed notebooks (SPEC 0.2)."), "",
             f"| row | criterion | {fr_cols} | kept at .99 / .995 | command |",
             "|---|---|" + "---|" * len(pruning.SEED_FRACTIONS) + "---|---|"]
    for key in sorted(results):
        r = results[key]
        short = shortened(r["row"], r.get("epochs_trained"))
        label = f"{r['row']} ({short})" if short else r["row"]
        errs = {round(p["fraction"], 6): p for p in r["rows"]}
        cells = " | ".join(f"{errs[round(f, 6)]['error_pct']:.2f}" if round(f, 6) in errs else "–"
                           for f in pruning.SEED_FRACTIONS)
        kept = " / ".join(str(errs[f]["n_kept"]) if f in errs else "–" for f in (0.99, 0.995))
        lines.append(f"| {label} | {r['criterion']} | {cells} | {kept} | `{r['command']}` |")
        seed = SEED_PRUNING.get((r["row"], r["criterion"]))
        if seed:
            lines.append(f"| {r['row']} (seed) | {r['criterion']} | "
                         + " | ".join(f"{v:.2f}" for v in seed) + " | 23953 / 11977 | |")
    return "\n".join(lines) + "\n"


def record_pruning(key: str, entry: dict, results_dir: Path = RESULTS) -> None:
    path = results_dir / "pruning.json"
    results = mnist.load_results(path)
    results[key] = entry
    cli.write_json_atomic(path, results)
    cli.write_text_atomic(results_dir / "pruning.md", pruning_markdown(results))


def prune_run(method, state, prior, xt, yt, key, criteria, fractions, n_samples: int, rule: str = "percentile"):
    """``{criterion: rows}`` of ``pruning.evaluate_pruning``; the seed's rule by default."""
    k_kl, k_eval = fr.split(key, 2)
    out = {}
    for criterion in criteria:
        if criterion == "snr":
            scores = pruning.snr(state)
        elif criterion == "kl":
            scores = pruning.kl_scores(state, prior, k_kl, n_samples=20)
        elif criterion == "kl_closed":
            scores = pruning.kl_scores(state, prior, closed_form=True)
        else:
            raise ValueError(f"unknown criterion {criterion!r}; choose snr, kl or kl_closed")
        out[criterion] = pruning.evaluate_pruning(method, state, xt, yt, k_eval, scores, fractions,
                                                  n_samples=n_samples, rule=rule)
    return out


def cmd_prune(args) -> dict:
    out_dir = run_dir(args, args.row)
    ckpt = load_checkpoint(out_dir / "checkpoint.pt")
    cfg = ckpt["meta"]["config"]
    x, _, xt, yt = _data(args)
    _, method, _ = build(cfg, cfg.get("subset") or x.shape[0])
    state, _ = selected_state(cfg, out_dir, ckpt["state"])
    fractions = args.fractions or list(pruning.SEED_FRACTIONS)
    prior = make_prior(cfg["prior"])
    out, failed = {}, []
    for criterion in args.criteria:  # each criterion recorded as soon as it is done
        t0 = time.perf_counter()
        try:
            rows = prune_run(method, state, prior, xt, yt, fr.key(args.seed + 1), [criterion], fractions,
                             args.eval_samples or cfg["eval_samples"], rule=args.rule)[criterion]
        except ValueError as err:  # e.g. KL scores under the seed's joint-sum "mixture"
            print(f"bbp_mnist prune: {args.row} {criterion}: skipped: {err}", file=sys.stderr)
            failed.append(criterion)
            continue
        entry = {"row": args.row, "criterion": criterion, "rule": args.rule, "rows": rows,
                 "epochs_trained": ckpt["epoch"], "wall_s": time.perf_counter() - t0,
                 "command": args.command_line, "commit": cli.git_commit()}
        print(json.dumps(entry, indent=2))
        if not args.no_record:
            record_pruning(f"{args.row}/{criterion}", entry, Path(args.results_dir))
        out[criterion] = rows
    if failed and not out:
        raise ValueError(f"no pruning criterion could be evaluated ({', '.join(failed)})")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, func in (("train", cmd_train), ("prune", cmd_prune)):
        s = sub.add_parser(name)
        s.add_argument("row", choices=sorted(CONFIGS))
        s.add_argument("--runs-dir", default="runs/bbp_mnist", help="checkpoints in RUNS_DIR/<row>")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--subset", type=int, default=None, help="first N training images (smoke runs)")
        s.add_argument("--test-subset", type=int, default=None, help="first N test images (smoke runs)")
        s.add_argument("--eval-samples", type=int, default=None, help="posterior samples (default 100)")
        s.add_argument("--data-dir", default=None)
        s.add_argument("--no-record", action="store_true", help="do not write results/")
        s.add_argument("--results-dir", default=str(RESULTS), help="where the results files are written")
        s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        s.set_defaults(func=func)
        if name == "train":
            s.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
            s.add_argument("--select", choices=("last", "best_on_test"), default=None,
                           help="reported state (default: the config's; bbp_gmm: best_on_test, a test-set leak)")
            s.add_argument("--resume", action="store_true")
            s.add_argument("--row-name", default=None,
                           help="record under this row name (needed when --epochs is not the seed's)")
            s.add_argument("--no-progress", action="store_true")
        else:
            s.add_argument("--criteria", nargs="+", default=["snr", "kl"], choices=("snr", "kl", "kl_closed"))
            s.add_argument("--fractions", type=float, nargs="+", default=None)
            s.add_argument("--rule", choices=pruning.RULES, default="percentile",
                           help="percentile: the seed's threshold; count: exactly the fraction")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.command_line = "python -m experiments.bbp_mnist " + " ".join(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
        print(f"bbp_mnist {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
