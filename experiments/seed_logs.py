"""Our MNIST runs against the per-epoch figures the seed's notebooks print, not its table.

The seed's table holds one number per method from one run. Its notebooks also print, every
epoch, the training cross-entropy and error averaged over that epoch's minibatches, each
taken before the step on it (``Jtr_pred``), and the test cross-entropy and error of the
epoch's final weights (``Jdev``). For a sampler those are per-sample statistics of the chain;
the K-FAC notebook also evaluates its MAP net and its Laplace predictive on the training set.
For MAP, whose table number is one net's last epoch, the training curve shows whether our
optimiser follows the seed's.
Matching them shows whether a sampler or a posterior is the seed's, apart from the ensemble
or predictive number the table compares, and nothing in it is chosen on the test set.

    python -m experiments.seed_logs chain sgld_seed1 psgld_seed1     # runs/mnist/<row>
    python -m experiments.seed_logs kfac runs/kfac_mnist runs/kfac_mnist_seed2
    python -m experiments.seed_logs map map_seed5 map_seed6                 # runs/mnist/<row>

``chain``: the mean over the run's kept samples of the single-sample test cross-entropy and
error (the seed's ``Jdev`` at the same epochs, 20, 22, ..., 198); the minibatch cross-entropy
and error over one more epoch of the chain from its last checkpoint, each batch scored just
before its step (the seed's ``Jtr_pred``, against its last 10 epochs); and, for contrast,
the cross-entropy of the last sample on the whole training set; and the single-sample test
figures averaged over windows of the run (``WINDOWS``), against the seed's Jdev at the same
epochs, to show the chain moves along its run as the seed's does; and the averaging gain, the
mean single-sample test CE less the predictive's, which grows as the samples disagree. ``kfac``: the MAP net and
100 K-FAC Laplace samples (the seed's damping, hessian_diag_sig 0.15) on the test set and on
``--n-train`` training images (sums scaled to 60,000, as the seed's). ``map``: the training
cross-entropy of every epoch, the mean over its minibatches each taken before its step (the
seed's ``Jtr_pred``, notebooks/MAP_NN_MNIST.ipynb), read from the run's history, beside the
last epoch's test figures (the seed's last ``Jdev``, its table row). Results go to
``results/seed_logs.json`` and ``results/seed_logs.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fbnn import cli, likelihoods, metrics, models
from fbnn import random as fr
from fbnn.fit import load_checkpoint
from fbnn.methods import laplace as fl
from fbnn.methods.base import Batch
from fbnn.predict import predict_probs

from experiments.mnist import SEED as SEED_TABLE
from experiments.mnist import load_results

RESULTS = Path("results")
N_TRAIN = 60000
HESSIAN_DIAG_SIG = 0.15  # the seed's K-FAC damping (SPEC 3.8.3)

# Means of the seed's per-epoch log (notebooks/classification/{SGLD,pSGLD}_MNIST.ipynb at
# b3c0101): Jdev and its error over the epochs of the 90 kept samples (20, 22, ..., 198);
# Jtr_pred and its error over the last 10 epochs (190..199). Errors in %.
SEED_CHAIN = {
    "sgld": {"test_ce_kept": 0.1793, "test_err_kept": 4.839, "train_ce_during": 0.1442, "train_err_during": 4.069},
    "psgld": {"test_ce_kept": 0.1866, "test_err_kept": 3.808, "train_ce_during": 0.0487, "train_err_during": 1.539},
}
# The same Jdev means over windows of the kept epochs, [start, stop): (test CE, error %) per
# window, to show how the chain moves along its run, not only where it is on average.
WINDOWS = ((20, 60), (60, 100), (100, 140), (140, 200))
SEED_CHAIN_WINDOWS = {
    "sgld": ((0.2051, 5.394), (0.1704, 4.671), (0.1654, 4.481), (0.1774, 4.820)),
    "psgld": ((0.1527, 3.848), (0.1760, 3.782), (0.1924, 3.733), (0.2124, 3.849)),
}
# notebooks/KFAC_Laplace_MNIST.ipynb (0559a2e): test and training-set sums over all images.
SEED_KFAC = {"map_test": (-564.552979, 1.47), "map_train": (-42.213203, 0.0),
             "laplace_test": SEED_TABLE["kfac_laplace"], "laplace_train": (-7313.162598, 0.488333)}


# notebooks/MAP_NN_MNIST.ipynb (93d5ee1): Jtr_pred of epochs 0..9; the table row is epoch 9's Jdev.
SEED_MAP_TRAIN_CE = (0.234868, 0.083005, 0.049510, 0.032136, 0.020423, 0.011957, 0.007625, 0.003913,
                     0.002451, 0.001193)
# ... and Jdev, err of epochs 0..9: mean test cross-entropy and error % of each epoch's net.
SEED_MAP_DEV = ((0.119621, 3.81), (0.074746, 2.46), (0.067373, 2.06), (0.068393, 2.07), (0.066524, 2.01),
                (0.063032, 1.86), (0.061786, 1.76), (0.062205, 1.72), (0.058446, 1.52), (0.057291, 1.58))


def _ce_err(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and error % of logits ``(B, K)``."""
    lp = torch.log_softmax(logits, -1)
    return float(-lp.gather(1, y[:, None]).mean()), float((lp.argmax(-1) != y).double().mean() * 100)


def _apply_chunked(model, params, x, chunk: int = 10000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.apply(params, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


def chain_stats(run: Path, x, y, xt, yt, key) -> dict:
    """Per-sample statistics of the SG-MCMC run in ``run`` (see the module doc)."""
    info = json.loads((run / "metrics.json").read_text())
    cfg = info["config"]
    x, y, xt, yt = cli._subsets(cfg, x, y, xt, yt)
    model, method = cli.build(cfg, x.shape[1], x.shape[0])
    files = sorted((run / "samples").glob("*.pt"))
    if not files:
        raise FileNotFoundError(f"seed_logs: no samples under {run / 'samples'}")
    def sample_params(f):
        return {k: v[0] for k, v in torch.load(f, weights_only=False).params.items()}
    test = [_ce_err(_apply_chunked(model, sample_params(f), xt), yt) for f in files]
    epochs = [int(f.stem.removeprefix("sample_")) for f in files]  # the collector names files by epoch
    last_train = _ce_err(_apply_chunked(model, sample_params(files[-1]), x), y)
    state = load_checkpoint(run / "checkpoint.pt")["state"]
    order = fr.permutation(fr.fold_in(key, 0), x.shape[0])
    bs, ce, err, t0 = cfg["batch_size"], 0.0, 0.0, time.perf_counter()
    for i, start in enumerate(range(0, x.shape[0], bs)):
        idx = order[start:start + bs]
        c, e = _ce_err(_apply_chunked(model, state.params, x[idx]), y[idx])
        ce, err = ce + c * len(idx), err + e * len(idx)
        state, _ = method.step(state, Batch(x[idx], y[idx], idx), fr.fold_in(fr.fold_in(key, 1), i))
    n = x.shape[0]
    return {"method": cfg["method"], "n_kept": len(files), "n_test": yt.shape[0],
            "predictive": (info["error_pct"], info["test_loglik_sum"]),
            "test_ce_kept": sum(t[0] for t in test) / len(test), "test_err_kept": sum(t[1] for t in test) / len(test),
            "test_by_window": window_means(epochs, test),
            "train_ce_during": ce / n, "train_err_during": err / n,
            "train_ce_last_sample": last_train[0], "train_err_last_sample": last_train[1],
            "extra_epoch_s": time.perf_counter() - t0}


def map_stats(run: Path) -> dict:
    """Per-epoch training cross-entropy of the MAP run in ``run`` (see the module doc)."""
    info = json.loads((run / "metrics.json").read_text())
    cfg = info["config"]
    if cfg["method"] != "map" or cfg["reduction"] != "sum" or cfg["weight_decay"] != 0:
        raise ValueError(f"seed_logs map: {run} is not a MAP run on the summed cross-entropy without weight "
                         "decay, whose history holds the training cross-entropy alone")
    n = cfg.get("subset") or N_TRAIN
    steps = cli.steps_per_epoch(cfg, n)
    history = load_checkpoint(run / "checkpoint.pt")["history"]
    out = {"method": "map", "n_test": cfg.get("test_subset") or 10000,
           "train_ce_by_epoch": [h["loss"] * steps / n for h in history],  # mean of batch sums -> per image
           "test": (info["test_loglik_sum"], info["error_pct"])}
    if cfg.get("torch_seed") is not None:
        out["torch_seed"] = cfg["torch_seed"]
    if all("dev_nll_mean" in h for h in history):  # runs with --eval-every 1
        out["dev_by_epoch"] = [(h["dev_nll_mean"], h["dev_error_pct"]) for h in history]
    return out


def window_means(epochs: list[int], figures: list[tuple[float, float]]) -> list:
    """Mean of each figure pair over the epochs in each of ``WINDOWS``; None for an empty window."""
    out = []
    for start, stop in WINDOWS:
        inside = [f for e, f in zip(epochs, figures) if start <= e < stop]
        out.append([sum(f[i] for f in inside) / len(inside) for i in range(2)] if inside else None)
    return out


def seed_procedure_probs(params: dict, state, x, key, n_samples: int, n_data: int,
                         prior_sig: float = HESSIAN_DIAG_SIG) -> torch.Tensor:
    """The K-FAC notebook's sampler, written out on its own as a check of ``fbnn``'s: per
    layer ``U_Q = upper-Cholesky(inv(sqrt(N) Q + sqrt(tau) I))`` and ``L_H`` = lower-Cholesky
    of the same for ``H``, in float32 as the seed; each draw ``W = M + L_H Z U_Q`` with
    ``M = [W | b]``, layer by layer. Mean softmax ``(B, K)``."""
    count, data_scale, prior_scale = float(state.count), n_data ** 0.5, 1.0 / prior_sig

    def chol_inv(f, upper):
        f = (f / count).float()
        return torch.linalg.cholesky(torch.inverse(data_scale * f + prior_scale * torch.eye(f.shape[0])),
                                     upper=upper)
    names = [w.removesuffix(".weight") for w in state.kron]
    factors = [(chol_inv(q, True), chol_inv(h, False)) for q, h in state.kron.values()]
    probs = torch.zeros(x.shape[0], params[f"{names[-1]}.bias"].shape[0])
    with torch.no_grad():
        for s in range(n_samples):
            a = x
            for i, (name, (u_q, l_h)) in enumerate(zip(names, factors)):
                m = torch.cat([params[f"{name}.weight"], params[f"{name}.bias"][:, None]], 1)
                w = m + l_h @ fr.normal(fr.fold_in(fr.fold_in(key, s), i), tuple(m.shape)) @ u_q
                a = a @ w[:, :-1].T + w[:, -1]
                a = torch.relu(a) if i < len(names) - 1 else a
            probs += torch.softmax(a, -1)
    return probs / n_samples


def kfac_stats(run: Path, x, y, xt, yt, key, n_train: int, n_samples: int = 100,
               hessian_diag_sig: float = HESSIAN_DIAG_SIG) -> dict:
    """MAP and K-FAC Laplace (the seed's damping, with prior precision ``1 / hessian_diag_sig^2``)
    of the ``experiments.kfac_mnist`` run in ``run``, on the test set and on ``n_train``
    training images (sums scaled to 60,000)."""
    caches = sorted(run.glob("kfac_ggn_epoch*_n*.pt"))
    if len(caches) != 1:
        raise FileNotFoundError(f"seed_logs: expected one K-FAC factor file kfac_ggn_epoch<E>_n<N>.pt in {run} "
                                f"(written by experiments.kfac_mnist), found {[c.name for c in caches]}")
    epoch, n_data = (int(v) for v in caches[0].stem.removeprefix("kfac_ggn_epoch").split("_n"))
    params = load_checkpoint(run / f"params_epoch{epoch}.pt")["params"]
    n_layers = len([k for k in params if k.endswith(".weight")])
    model = models.mlp([x.shape[1]] + [params[f"fc{i}.weight"].shape[0] for i in range(n_layers)])
    state = load_checkpoint(caches[0])["state"]
    la = fl.kfac_laplace(model, likelihoods.categorical(), damping="ritter",
                         prior_precision=1 / hessian_diag_sig ** 2, n_data=n_data)
    sub = fr.permutation(fr.fold_in(key, 2), x.shape[0])[:n_train]
    xs, ys, scale = x[sub], y[sub], N_TRAIN / n_train

    def sums(probs, yy, factor=1.0):
        return metrics.test_loglik_sum(probs, yy) * factor, metrics.error_pct(probs, yy)

    out = {"map_epoch": epoch, "n_data": n_data, "n_train": n_train, "n_samples": n_samples,
           "hessian_diag_sig": hessian_diag_sig,
           "map_test": sums(torch.softmax(_apply_chunked(model, params, xt), -1), yt),
           "map_train": sums(torch.softmax(_apply_chunked(model, params, xs), -1), ys, scale)}
    samples = la.sample(state, fr.fold_in(key, 3), n_samples)
    out["laplace_test"] = sums(predict_probs(model, samples, xt).mean(0), yt)
    out["laplace_train"] = sums(predict_probs(model, samples, xs).mean(0), ys, scale)
    out["laplace_test_seed_procedure"] = sums(seed_procedure_probs(params, state, xt, fr.fold_in(key, 4),
                                                                   n_samples, n_data, hessian_diag_sig), yt)
    return out


def averaging_gain(sample_ce: float, loglik_sum: float, n_test: int) -> float:
    """Mean single-sample test CE minus the predictive's (Jensen's gap of -log over the samples)."""
    return sample_ce + loglik_sum / n_test


def markdown(results: dict) -> str:
    lines = ["# Our runs against the seed's per-epoch logs", "",
             "Written by `python -m experiments.seed_logs`; see its docstring for what each column measures. "
             "Cross-entropies are nats per image, errors %.", ""]
    chains = results.get("chain", {})
    if chains:
        lines += ["## SG-MCMC: per-sample statistics of the chain", "",
                  "| run | kept | test CE, mean over samples | test err | train CE during an epoch | train err "
                  "| train CE, last sample, whole set | all kept samples: error / log lik "
                  "| averaging gain |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row, r in sorted(chains.items()):
            lines.append(f"| {row} | {r['n_kept']} | {r['test_ce_kept']:.4f} | {r['test_err_kept']:.2f} "
                         f"| {r['train_ce_during']:.4f} | {r['train_err_during']:.2f} "
                         f"| {r['train_ce_last_sample']:.4f} "
                         f"| {r['predictive'][0]:.2f} / {r['predictive'][1]:.1f} "
                         f"| {averaging_gain(r['test_ce_kept'], r['predictive'][1], r['n_test']):.4f} |")
        methods = sorted({r["method"] for r in chains.values()})
        for m in sorted(SEED_CHAIN.keys() & set(methods)):  # sghmc_sa: the seed has no notebook
            s, (ll, err) = SEED_CHAIN[m], SEED_TABLE[m]
            lines.append(f"| seed's {m} notebook | 90 | {s['test_ce_kept']:.4f} | {s['test_err_kept']:.2f} "
                         f"| {s['train_ce_during']:.4f} | {s['train_err_during']:.2f} | (not printed) "
                         f"| {err:.2f} / {ll:.1f} | {averaging_gain(s['test_ce_kept'], ll, 10000):.4f} |")
        lines += ["", "Averaging gain: the mean single-sample test CE minus the test CE of the predictive "
                  "(minus its log lik over the test images), the nats per image that averaging the "
                  "samples' probabilities wins; it grows as the samples disagree more on the true labels.",
                  "", "Single-sample test CE / error % along the run: the mean over the kept samples whose "
                  "epoch lies in each window (the seed's: its Jdev at the same epochs).", "",
                  "| run | " + " | ".join(f"epochs {a}-{b - 1}" for a, b in WINDOWS) + " |",
                  "|---|" + "---|" * len(WINDOWS)]

        def cells(ws):
            return " | ".join("–" if w is None else f"{w[0]:.4f} / {w[1]:.2f}" for w in ws)
        for m in methods:
            for row, r in sorted(chains.items()):
                if r["method"] == m and "test_by_window" in r:
                    lines.append(f"| {row} | {cells(r['test_by_window'])} |")
            if m in SEED_CHAIN_WINDOWS:
                lines.append(f"| seed's {m} notebook | {cells(SEED_CHAIN_WINDOWS[m])} |")
        lines.append("")
    maps = results.get("map", {})
    if maps:
        n_epochs = len(SEED_MAP_TRAIN_CE)
        lines += ["## MAP: training cross-entropy by epoch, and the last epoch's net on the test set", "",
                  "| run | " + " | ".join(f"epoch {e}" for e in range(n_epochs)) + " | test log lik / error % |",
                  "|---|" + "---|" * (n_epochs + 1)]

        def row(name, ces, test):
            return f"| {name} | " + " | ".join(f"{c:.4f}" for c in ces) + f" | {test[0]:.1f} / {test[1]:.2f} |"
        for run, r in sorted(maps.items()):
            lines.append(row(_map_label(run, r), r["train_ce_by_epoch"], r["test"]))
        keyed = [r for r in maps.values() if r.get("torch_seed") is None]
        if keyed:
            by_epoch = list(zip(*(r["train_ce_by_epoch"] for r in keyed)))
            lines.append("| runs from fbnn's keys: min – max | "
                         + " | ".join(f"{min(c):.4f} – {max(c):.4f}" for c in by_epoch)
                         + f" | {min(r['test'][0] for r in keyed):.1f} – {max(r['test'][0] for r in keyed):.1f} |")
        seed_ll, seed_err = SEED_TABLE["map"]
        lines += [row("seed's notebook", SEED_MAP_TRAIN_CE, (seed_ll, seed_err)), ""]
        lines += map_dev_table(maps)
    kfac = results.get("kfac", {})
    if kfac:
        lines += ["## K-FAC Laplace: MAP net and Laplace predictive, test and training set", "",
                  "Log-likelihoods are sums over the 10,000 test images and, on the training set, over "
                  "`n_train` images scaled to 60,000.", "",
                  "`Laplace test, seed's procedure`: other draws from the same factors through the notebook's "
                  "sampler written out on its own (`seed_procedure_probs`), a check of `fbnn`'s. Rows marked "
                  "`(sig s)` damp with prior precision 1 / s^2 in place of the notebook's hessian_diag_sig 0.15.", "",
                  "| run | MAP epoch | MAP test | MAP train | Laplace test | Laplace train "
                  "| Laplace test, seed's procedure |", "|---|---|---|---|---|---|---|"]

        def cell(v):
            return f"{v[0]:.1f} / {v[1]:.3g} %"
        for run, r in sorted(kfac.items()):
            lines.append(f"| {run} (n_train {r['n_train']}) | {r['map_epoch']} | {cell(r['map_test'])} "
                         f"| {cell(r['map_train'])} | {cell(r['laplace_test'])} | {cell(r['laplace_train'])} "
                         f"| {cell(r['laplace_test_seed_procedure'])} |")
        lines.append(f"| seed's notebook | 9 | {cell(SEED_KFAC['map_test'])} | {cell(SEED_KFAC['map_train'])} "
                     f"| {cell(SEED_KFAC['laplace_test'])} | {cell(SEED_KFAC['laplace_train'])} | – |")
        lines.append("")
    return "\n".join(lines)


def _map_label(name: str, r: dict) -> str:
    return f"{name} (torch seed {r['torch_seed']})" if r.get("torch_seed") is not None else name


def map_dev_table(maps: dict) -> list[str]:
    """Test cross-entropy / error % of every epoch's net (the seed's Jdev) for the MAP runs that
    evaluated each epoch; runs replayed from a torch seed (``fbnn train --torch-seed``) say so."""
    runs = {name: r for name, r in sorted(maps.items()) if r.get("dev_by_epoch")}
    if not runs:
        return []
    n_epochs = len(SEED_MAP_DEV)
    lines = ["### MAP: test cross-entropy / error % of every epoch's net (the seed's `Jdev`)", "",
             "A run with a torch seed starts from the parameters `torch.manual_seed(s)` gives `nn.Linear` and "
             "visits the data in the order of the seed's DataLoader (`fbnn.torch_draws`): the notebook's own "
             "draws, s = 42.", "",
             "| run | " + " | ".join(f"epoch {e}" for e in range(n_epochs)) + " |",
             "|---|" + "---|" * n_epochs]

    def row(name, figures):
        return f"| {name} | " + " | ".join(f"{ce:.4f} / {err:.2f}" for ce, err in figures) + " |"
    for name, r in runs.items():
        lines.append(row(_map_label(name, r), r["dev_by_epoch"]))
    return lines + [row("seed's notebook", SEED_MAP_DEV), ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("chain", "kfac", "map"))
    p.add_argument("runs", nargs="+", help="chain, map: row names under --runs-dir; kfac: run directories")
    p.add_argument("--runs-dir", default="runs/mnist")
    p.add_argument("--n-train", type=int, default=10000, help="kfac: training images scored (<= 60000)")
    p.add_argument("--hessian-diag-sig", type=float, default=HESSIAN_DIAG_SIG,
                   help="kfac: the prior's sigma in the seed's damping (default: the notebook's 0.15); "
                        "other values are kept as rows of their own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.hessian_diag_sig > 0:
        p.error(f"--hessian-diag-sig must be > 0, got {args.hessian_diag_sig}")
    if not 0 < args.n_train <= N_TRAIN:
        p.error(f"--n-train must be in 1..{N_TRAIN}, got {args.n_train}")
    if args.what != "map":  # map reads histories only
        x, y, xt, yt, _ = cli.load_dataset("mnist", args.data_dir)
    key = fr.key(args.seed)
    out_json = Path(args.results_dir) / "seed_logs.json"
    results = load_results(out_json)
    section = results.setdefault(args.what, {})
    for run in args.runs:
        t0 = time.perf_counter()
        if args.what == "chain":
            r = chain_stats(Path(args.runs_dir) / run, x, y, xt, yt, key)
        elif args.what == "map":
            r = map_stats(Path(args.runs_dir) / run)
        else:
            r = kfac_stats(Path(run), x, y, xt, yt, key, args.n_train, hessian_diag_sig=args.hessian_diag_sig)
        r["wall_s"] = time.perf_counter() - t0
        r["command"] = "python -m experiments.seed_logs " + " ".join(argv if argv is not None else sys.argv[1:])
        r["commit"] = cli.git_commit()
        damped = args.what == "kfac" and args.hessian_diag_sig != HESSIAN_DIAG_SIG
        section[f"{run} (sig {args.hessian_diag_sig:g})" if damped else run] = r
        print(run, json.dumps(r), flush=True)
        cli.write_json_atomic(out_json, results)
        cli.write_text_atomic(Path(args.results_dir) / "seed_logs.md", markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
