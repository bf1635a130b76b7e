"""Evidential deep learning on MNIST with LeNet: labml's configuration (SPEC 6.1).

    python -m experiments.evidential_mnist                # 10 epochs, records row `evidential`
    python -m experiments.evidential_mnist --time-steps 200   # time 200 steps, record nothing

LeNet (dropout 0.5), AdamW (lr 1e-3, decoupled weight decay 0.005), batch 64, Bayes risk
of squared error, softplus evidence, labml's KL annealing over ``epochs * 60000``
examples, MNIST normalised as SPEC 1.1. Trains with ``fbnn.fit`` and a checkpoint per
epoch under ``runs/mnist/<row>`` (an existing one is always continued), then evaluates
the expected probabilities ``alpha / S`` on the 10,000 test images, writes
``metrics.json`` next to the checkpoint and records the row in ``results/mnist.json``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

from fbnn import cli, metrics, models, optim
from fbnn import random as fr
from fbnn.fit import epoch_keys, fit, load_checkpoint
from fbnn.methods import Batch

ev = importlib.import_module("fbnn.methods.evidential")  # the module, even if `methods.evidential` names the function

CONFIG = {"method": "evidential", "dataset": "mnist", "model": "lenet", "dropout": 0.5, "optimizer": "adamw",
          "lr": 1e-3, "weight_decay": 0.005, "loss": "mse", "evidence": "softplus", "annealing": "labml",
          "epochs": 10, "batch_size": 64, "seed": 0}


def build(cfg: dict, n_data: int):
    """``(model, method)`` for a config like ``CONFIG``."""
    model = models.lenet(10, dropout=cfg["dropout"])
    opt = optim.adamw(cfg["lr"], weight_decay=cfg["weight_decay"])
    method = ev.evidential(model, opt, loss=cfg["loss"], evidence=cfg["evidence"], annealing=cfg["annealing"],
                           n_data=n_data, epochs=cfg["epochs"])
    return model, method


def class_error_pct(log_alpha, y) -> float:
    """Error % of ``argmax p_hat``, computed exactly from ``log alpha (B, K)``."""
    return 100.0 * float((ev.predicted_class(log_alpha) != y).double().mean())


def evaluate(method, state, x, y) -> dict:
    """Test metrics of the expected probabilities ``alpha / S`` (one parameter set).

    The predicted class is ``argmax p_hat`` computed exactly, from ``log alpha``
    (``ev.predicted_class``); ``error_pct_rounded_probs`` is the argmax of the float32
    ``p_hat``, where inputs without evidence tie at ``1 / K`` and fall to class 0."""
    t0 = time.perf_counter()
    log_alpha = ev.predict_log_alpha(method, state, x)[0]
    probs32, _ = ev.dirichlet_from_log_alpha(log_alpha)
    probs, u = ev.dirichlet_from_log_alpha(log_alpha.double())
    _, _, mutual_info = ev.dirichlet_entropy_decomposition(log_alpha.double().exp())
    correct = ev.predicted_class(log_alpha) == y
    max_p = probs.max(-1).values
    total, _, epistemic = metrics.entropy_decomposition(probs.unsqueeze(0))

    def mean_over(v, mask):
        return float(v[mask].double().mean()) if mask.any() else float("nan")

    return {"error_pct": 100.0 * float((~correct).double().mean()),
            "error_pct_rounded_probs": metrics.error_pct(probs32, y),
            "test_loglik_sum": metrics.test_loglik_sum(probs, y),
            "nll_mean": metrics.nll_mean(probs, y), "brier": metrics.brier(probs, y), "ece": metrics.ece(probs, y),
            "mean_total_entropy": float(total.mean()), "mean_epistemic_entropy": float(epistemic.mean()),
            "mean_u": float(u.mean()), "mean_u_correct": mean_over(u, correct),
            "mean_u_wrong": mean_over(u, ~correct), "max_prob_correct": mean_over(max_p, correct),
            "max_prob_wrong": mean_over(max_p, ~correct),
            "mean_dirichlet_mutual_info": float(mutual_info.mean()),
            "n_samples": 1, "eval_s": time.perf_counter() - t0}


def time_steps(method, state, x, y, key, batch_size: int, n_steps: int):
    """``(state, timings)``: wall and CPU seconds per step over ``n_steps`` steps of epoch 0
    (after 5 warm-up steps)."""
    _, step_base = epoch_keys(key, 0)
    order = fr.permutation(epoch_keys(key, 0)[0], x.shape[0])

    def run(lo, hi, st):
        for i in range(lo, hi):
            idx = order[i * batch_size:(i + 1) * batch_size]
            st, _ = method.step(st, Batch(x[idx], y[idx], idx), fr.fold_in(step_base, i))
        return st

    state = run(0, 5, state)
    w0, c0 = time.perf_counter(), time.process_time()
    state = run(5, 5 + n_steps, state)
    wall, cpu = (time.perf_counter() - w0) / n_steps, (time.process_time() - c0) / n_steps
    steps_per_epoch = -(-x.shape[0] // batch_size)
    return state, {"steps": n_steps, "wall_s_per_step": wall, "cpu_s_per_step": cpu,
            "steps_per_epoch": steps_per_epoch, "epoch_wall_s_estimate": wall * steps_per_epoch,
            "epoch_cpu_s_estimate": cpu * steps_per_epoch, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=CONFIG["epochs"])
    p.add_argument("--seed", type=int, default=CONFIG["seed"])
    p.add_argument("--loss", choices=ev.LOSSES, default=CONFIG["loss"])
    p.add_argument("--evidence", choices=ev.EVIDENCE, default=CONFIG["evidence"])
    p.add_argument("--annealing", choices=("labml", "paper"), default=CONFIG["annealing"])
    p.add_argument("--row-name", default="evidential")
    p.add_argument("--runs-dir", default="runs/mnist", help="checkpoints go to RUNS_DIR/<row>")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--eval-every", type=int, default=1, help="test error every N epochs (0: only at the end)")
    p.add_argument("--time-steps", type=int, default=0, help="only time this many training steps")
    p.add_argument("--no-record", action="store_true", help="do not write results/")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quick", action="store_true", help="1 epoch on 1,000 images, 500 test images (same code paths)")
    p.add_argument("--results-dir", default=None, help="where mnist.json / mnist.md are written (default results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m experiments.evidential_mnist " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg = {**CONFIG, "epochs": args.epochs, "seed": args.seed, "loss": args.loss, "evidence": args.evidence,
           "annealing": args.annealing}
    x, y, xt, yt, _ = cli.load_dataset("mnist", args.data_dir)
    if args.quick:
        x, y, xt, yt = x[:1000], y[:1000], xt[:500], yt[:500]
        cfg["subset"] = 1000
    model, method = build(cfg, x.shape[0])
    k_init, k_fit, _ = fr.split(fr.key(args.seed), 3)
    state = method.init(k_init, model.init(k_init))
    if args.time_steps:
        state, timing = time_steps(method, state, x, y, k_fit, cfg["batch_size"], args.time_steps)
        log_alpha = ev.predict_log_alpha(method, state, xt[:2000])[0]  # a sanity check of the partial run
        timing.update({"test2000_error_pct": class_error_pct(log_alpha, yt[:2000]),
                       "test2000_mean_u": float(ev.dirichlet_from_log_alpha(log_alpha)[1].mean())})
        print(json.dumps(timing, indent=2))
        return 0

    commit = cli.git_commit()
    out_dir = Path(args.runs_dir) / args.row_name
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists():
        old = (load_checkpoint(ckpt).get("meta") or {}).get("config", {})
        changed = sorted(k for k in cfg if old.get(k) != cfg[k])
        if changed:
            raise SystemExit(f"{ckpt} was trained with other settings: "
                             + ", ".join(f"{k}={old.get(k)!r} (now {cfg[k]!r})" for k in changed)
                             + "; choose another --row-name or --runs-dir")
    eval_fn = None
    if args.eval_every:
        def eval_fn(st, epoch):
            log_alpha = ev.predict_log_alpha(method, st, xt)[0]
            return {"dev_error_pct": class_error_pct(log_alpha, yt),
                    "dev_mean_u": float(ev.dirichlet_from_log_alpha(log_alpha)[1].mean())}
    result = fit(method, state, (x, y), k_fit, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                 eval_fn=eval_fn, eval_every=max(args.eval_every, 1), checkpoint=ckpt,
                 resume=True, progress=not args.no_progress, meta={"config": cfg},
                 description=f"evidential {cfg['loss']} mnist")
    out = evaluate(method, result.state, xt, yt)
    out.update({"train_wall_s": result.history[-1]["wall_s"] if result.history else 0.0,
                "epochs": cfg["epochs"], "config": cfg, "commit": commit, "command": command,
                "history": result.history})
    cli.write_json_atomic(out_dir / "metrics.json", out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("config", "history")}, indent=2))
    if not args.no_record:
        from experiments import mnist
        mnist.record(args.row_name, out, command, args.results_dir or mnist.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
