"""K-FAC Laplace on MNIST (SPEC 3.8, 8 ``kfac_laplace``): MAP phase, factors, three rows.

    nohup nice -n 10 python -m experiments.kfac_mnist --map-only > runs/kfac_mnist.log 2>&1 &
    nice -n 10 python -m experiments.kfac_mnist              # factors + the three rows

MAP phase (the seed's notebook): MNIST 784-1200-1200-10, summed cross-entropy, SGD lr 1e-3,
momentum 0.5, weight decay 1e-8, B=100, 10 epochs, one checkpoint per epoch under
``runs/kfac_mnist/`` (``--resume`` continues it). Every epoch's parameters are kept with
their test error; the seed picked the epoch with the lowest *test* error (its
``theta_best``, SPEC 7 #11): ``--ckpt best_on_test`` (default, as the seed) or ``last``.

Laplace phase: K-FAC factors (exact per-example Gauss-Newton recursion) over the 60k
training images in batches of 128, N=60000, then three rows of ``results/mnist.json``:
- ``kfac_laplace``: the seed's damping (hessian_diag_sig 0.15), 100 matrix-normal samples,
  predictive = mean softmax (target -1387.24 / 2.08 %);
- ``kfac_laplace_glm``: the standard K-FAC posterior (precision N Q x H + tau I, eigen-
  decomposed) with the prior precision tau chosen by maximising the Laplace marginal
  likelihood, linearised (GLM) predictive with the probit approximation;
- ``last_layer_laplace``: full-covariance Laplace over the last layer (12,010 parameters),
  prior precision by marginal likelihood, GLM/probit predictive.

A fourth row, ``kfac_laplace_glm_val`` (``--val 10000 --rows kfac_laplace_glm_val --runs-dir
runs/kfac_mnist_val``), holds the last 10,000 training images out of the MAP phase and the
curvature and picks the prior precision on them by a grid search of the GLM/probit predictive's
log-likelihood.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fbnn import cli, likelihoods, methods, metrics, models, optim, torch_draws
from fbnn import random as fr
from fbnn.fit import fit, load_checkpoint, save_checkpoint
from fbnn.methods import laplace as fl
from fbnn.predict import predict_probs

from experiments.map_sensitivity import jittered

MAP_CONFIG = {"method": "map", "dataset": "mnist", "model": "mlp", "hidden": [1200, 1200], "optimizer": "sgd",
              "lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-8, "reduction": "sum", "batch_size": 100,
              "epochs": 10}


def replay_settings(args) -> dict:
    """The MAP phase's ``--torch-seed`` / ``--jitter`` settings, as kept in its config."""
    out = {} if args.torch_seed is None else {"torch_seed": args.torch_seed}
    if args.jitter >= 0:
        out.update({"jitter": args.jitter, "jitter_eps": args.jitter_eps})
    return out


def map_phase(args, x, y, xt, yt, epochs: int = MAP_CONFIG["epochs"], hidden=MAP_CONFIG["hidden"]):
    """Train (or resume) the MAP net; returns ``(params, chosen_epoch, history, train_wall_s)``."""
    out = Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = models.mlp([784, *hidden, 10])
    lik = likelihoods.categorical()
    opt = optim.sgd(MAP_CONFIG["lr"], momentum=MAP_CONFIG["momentum"], weight_decay=MAP_CONFIG["weight_decay"])
    method = methods.map(model, lik, opt, reduction="sum", n_data=x.shape[0])
    k_init, k_fit, _ = fr.split(fr.key(args.seed), 3)
    sizes, config = [784, *hidden, 10], {**MAP_CONFIG, **replay_settings(args)}
    params = model.init(k_init)
    if args.torch_seed is not None:  # the notebook's own init (fbnn.torch_draws)
        params = torch_draws.linear_params(sizes, torch_draws.generator(args.torch_seed))
    if args.jitter >= 0:  # the init times 1 + eps z (experiments.map_sensitivity)
        params = jittered(params, args.jitter_eps, args.jitter)
    order = cli.run_order(config, sizes, x.shape[0])  # the notebook's data order with a torch seed
    state = method.init(k_init, params)

    def eval_fn(st, epoch):
        with torch.no_grad():
            probs = torch.softmax(model.apply(st.params, xt), -1)
        save_checkpoint(out / f"params_epoch{epoch}.pt", {"params": st.params, "epoch": epoch})
        return {"dev_error_pct": metrics.error_pct(probs, yt), "dev_loglik_sum": metrics.test_loglik_sum(probs, yt)}

    result = fit(method, state, (x, y), k_fit, epochs=epochs, batch_size=MAP_CONFIG["batch_size"],
                 eval_fn=eval_fn, checkpoint=out / "checkpoint.pt", resume=True, progress=not args.no_progress,
                 meta={"config": config}, description="kfac-map mnist", order=order)
    history = result.history
    if args.ckpt == "last":
        epoch = len(history) - 1
    else:
        epoch = min(range(len(history)), key=lambda e: (history[e]["dev_error_pct"], -e))
    params = load_checkpoint(out / f"params_epoch{epoch}.pt")["params"]
    return model, params, epoch, history, history[-1].get("wall_s", 0.0)


def curvature_state(la, name, params, x, y, out: Path):
    """The accumulated curvature of ``la`` at ``params`` over the training set (B=128), cached
    in ``out/<name>.pt``; returns ``(state, wall_s)``."""
    path = out / f"{name}.pt"
    if path.exists():
        ckpt = load_checkpoint(path)
        return ckpt["state"], ckpt["wall_s"]
    t0 = time.perf_counter()
    state = fl.fit_laplace(la, params, (x, y), batch_size=128, progress=True)
    wall = time.perf_counter() - t0
    save_checkpoint(path, {"state": state, "wall_s": wall})
    return state, wall


def glm_function_samples(la, state, x, key, n, **kw):
    """Softmax of ``n`` draws ``f ~ N(f*(x), J Sigma J')``: ``(S, B, K)`` (for the entropy
    decomposition of the GLM rows), with the probit probabilities ``(B, K)``."""
    mean, cov = la.glm_predictive(state, x, **kw)
    mean, cov = mean.double(), cov.double()
    chol = torch.linalg.cholesky(cov + 1e-10 * torch.eye(cov.shape[-1], dtype=cov.dtype))
    z = fr.normal(key, (n,) + tuple(mean.shape), dtype=torch.float64)
    f = mean + torch.einsum("bkl,sbl->sbk", chol, z)
    return torch.softmax(f, -1).float(), fl.probit(mean, cov).float()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", default="runs/kfac_mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-seed", type=int, default=None,
                   help="MAP phase from the notebook's own draws: torch.manual_seed(S)'s nn.Linear init and its "
                        "DataLoader's order (fbnn.torch_draws; the notebook's S is 42)")
    p.add_argument("--jitter", type=int, default=-1,
                   help="MAP phase from the init times 1 + eps z, z drawn from key JITTER (-1: none; "
                        "experiments.map_sensitivity), to see how much one run's figures owe to float rounding")
    p.add_argument("--jitter-eps", type=float, default=1e-7, help="eps of --jitter (about one float32 rounding)")
    p.add_argument("--ckpt", choices=("best_on_test", "last"), default="best_on_test")
    p.add_argument("--map-only", action="store_true", help="train the MAP net and stop")
    p.add_argument("--map-from", default=None,
                   help="use the params of this fbnn.fit checkpoint (e.g. runs/mnist/map/checkpoint.pt) "
                        "instead of training the MAP phase")
    p.add_argument("--rows", default="kfac_laplace,kfac_laplace_glm,last_layer_laplace")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--hessian-diag-sig", type=float, default=0.15)
    p.add_argument("--row-suffix", default="", help="record rows as <row><suffix>")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--n-train", type=int, default=60000, help="(smoke tests) curvature over the first n images")
    p.add_argument("--n-test", type=int, default=10000, help="(smoke tests) evaluate on the first n images")
    p.add_argument("--val", type=int, default=0,
                   help="hold out the last VAL training images (MAP, curvature and N use the rest); "
                        "needed by the kfac_laplace_glm_val row, which picks tau on them")
    p.add_argument("--quick", action="store_true",
                   help="784-100-100-10, 1 MAP epoch, curvature on 1,000 and evaluation on 500 images, "
                        "5 samples (same code paths)")
    p.add_argument("--results-dir", default=None, help="where mnist.json / mnist.md are written (default results/)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    map_epochs, hidden = MAP_CONFIG["epochs"], MAP_CONFIG["hidden"]
    if args.quick:
        args.n_train, args.n_test, args.samples, map_epochs, hidden = 1000, 500, 5, 1, [100, 100]
    command = "python -m experiments.kfac_mnist " + " ".join(argv if argv is not None else sys.argv[1:])
    commit = cli.git_commit()
    x, y, xt, yt, _ = cli.load_dataset("mnist")
    if "kfac_laplace_glm_val" in args.rows and not args.val:
        p.error("the kfac_laplace_glm_val row needs --val N (held-out training images)")
    x_val, y_val = x[x.shape[0] - args.val:], y[y.shape[0] - args.val:]
    x, y = x[:x.shape[0] - args.val], y[:y.shape[0] - args.val]
    out = Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.map_from:
        ckpt = load_checkpoint(args.map_from)
        model, params = models.mlp([784, *hidden, 10]), ckpt["state"].params
        epoch, train_s = ckpt["epoch"] - 1, ckpt.get("wall_s", 0.0)
        map_info = {"map_from": args.map_from, "map_config": (ckpt.get("meta") or {}).get("config"),
                    "map_epoch": epoch, "map_ckpt": "last"}
    else:
        model, params, epoch, history, train_s = map_phase(args, x[:args.n_train], y[:args.n_train], xt, yt,
                                                           map_epochs, hidden)
        map_info = {"map_config": {**MAP_CONFIG, "epochs": map_epochs, "hidden": hidden, **replay_settings(args)},
                    "map_epoch": epoch,
                    "map_ckpt": args.ckpt,
                    "map_dev_error_pct": [h["dev_error_pct"] for h in history]}
        print(json.dumps({"chosen_epoch": epoch, "history": history}, indent=1))
    if args.map_only:
        return 0
    lik = likelihoods.categorical()
    x, y, xt, yt = x[:args.n_train], y[:args.n_train], xt[:args.n_test], yt[:args.n_test]
    with torch.no_grad():
        map_probs = torch.softmax(model.apply(params, xt), -1)
    print("MAP:", json.dumps(metrics.classification_summary(map_probs, yt)), flush=True)
    rows = [r for r in args.rows.split(",") if r]
    key = fr.fold_in(fr.key(args.seed), 7)

    def finish(row, m):
        """Print and record one row as soon as it is evaluated."""
        extra = m["config"].get("factors_s", 0.0) + m["config"].get("prior_opt_s", 0.0)
        m.update({"train_wall_s": train_s + extra, "epochs": map_epochs, "commit": commit})
        print(row, json.dumps({k: v for k, v in m.items() if k != "config"}), flush=True)
        if not args.no_record:
            from experiments.mnist import RESULTS, record
            record(row + args.row_suffix, m, command, args.results_dir or RESULTS)

    n_data = x.shape[0]
    if {"kfac_laplace", "kfac_laplace_glm", "kfac_laplace_glm_val"} & set(rows):
        tau_seed = 1.0 / args.hessian_diag_sig ** 2
        la_seed = fl.kfac_laplace(model, lik, damping="ritter", prior_precision=tau_seed, n_data=n_data)
        la_std = fl.kfac_laplace(model, lik, damping="standard", n_data=n_data)
        state, fit_s = curvature_state(la_seed, f"kfac_ggn_epoch{epoch}_n{x.shape[0]}", params, x, y, out)
        print(f"K-FAC factors: {fit_s:.1f} s", flush=True)
        if "kfac_laplace" in rows:
            t0 = time.perf_counter()
            samples = la_seed.sample(state, fr.fold_in(key, 0), args.samples)
            sample_probs = predict_probs(model, samples, xt)
            del samples
            m = metrics.classification_summary(sample_probs.mean(0), yt, sample_probs)
            m.update({"n_samples": args.samples, "eval_s": time.perf_counter() - t0})
            m["config"] = {"method": "kfac_laplace", "structure": "kfac", "curvature": "ggn", "damping": "ritter",
                           "hessian_diag_sig": args.hessian_diag_sig, "prior_precision": tau_seed,
                           "n_data": n_data, "factor_batch_size": 128, "predictive": "mc_mean_softmax",
                           "factors_s": fit_s, **map_info}
            finish("kfac_laplace", m)
        if "kfac_laplace_glm" in rows:
            t0 = time.perf_counter()
            state_d = la_std.decompose(state)
            tau = la_std.optimize_prior_precision(state_d)
            tau_layers = la_std.optimize_prior_precision(state_d, per_layer=True)
            lml = float(la_std.log_marginal_likelihood(state_d, tau))
            opt_s = time.perf_counter() - t0
            print(f"K-FAC marginal likelihood: tau={tau:.4g} (per layer {tau_layers}), log ML {lml:.1f}", flush=True)
            t0 = time.perf_counter()
            sample_probs, probs = glm_function_samples(la_std, state_d, xt, fr.fold_in(key, 1), args.samples,
                                                       prior_precision=tau)
            m = metrics.classification_summary(probs, yt, sample_probs)
            m.update({"n_samples": args.samples, "eval_s": time.perf_counter() - t0})
            m["config"] = {"method": "kfac_laplace_glm", "structure": "kfac", "curvature": "ggn",
                           "damping": "standard", "prior_precision": tau, "prior_precision_per_layer": tau_layers,
                           "log_marginal_likelihood": lml, "n_data": n_data, "predictive": "glm_probit",
                           "entropies_from": f"{args.samples} draws of f ~ N(f*, J S J')",
                           "factors_s": fit_s, "prior_opt_s": opt_s, **map_info}
            finish("kfac_laplace_glm", m)
        if "kfac_laplace_glm_val" in rows:
            t0 = time.perf_counter()
            state_d = la_std.decompose(state)
            grid = [10.0 ** (k / 2) for k in range(2, 11)]  # 10 ... 1e5
            tau, scores = fl.grid_search_prior_precision(la_std, state_d, x_val, y_val, grid)
            opt_s = time.perf_counter() - t0
            print(f"K-FAC validation grid: tau={tau:.4g}, mean val log lik {scores}", flush=True)
            t0 = time.perf_counter()
            sample_probs, probs = glm_function_samples(la_std, state_d, xt, fr.fold_in(key, 3), args.samples,
                                                       prior_precision=tau)
            m = metrics.classification_summary(probs, yt, sample_probs)
            m.update({"n_samples": args.samples, "eval_s": time.perf_counter() - t0})
            m["config"] = {"method": "kfac_laplace_glm_val", "structure": "kfac", "curvature": "ggn",
                           "damping": "standard", "prior_precision": tau,
                           "prior_selection": f"grid {grid} by mean log lik of the GLM/probit predictive on "
                                              f"the last {args.val} training images (held out of MAP and "
                                              f"curvature)",
                           "val_scores": {str(k): v for k, v in scores.items()}, "n_data": n_data,
                           "predictive": "glm_probit",
                           "entropies_from": f"{args.samples} draws of f ~ N(f*, J S J')",
                           "factors_s": fit_s, "prior_opt_s": opt_s, **map_info}
            finish("kfac_laplace_glm_val", m)
        del state

    if "last_layer_laplace" in rows:
        la_ll = fl.last_layer_laplace(model, lik, n_data=n_data)
        state, fit_s = curvature_state(la_ll, f"last_layer_ggn_epoch{epoch}_n{x.shape[0]}", params, x, y, out)
        print(f"last-layer GGN: {fit_s:.1f} s", flush=True)
        t0 = time.perf_counter()
        state = la_ll.decompose(state)
        tau = la_ll.optimize_prior_precision(state)
        lml = float(la_ll.log_marginal_likelihood(state, tau))
        opt_s = time.perf_counter() - t0
        print(f"last-layer marginal likelihood: tau={tau:.4g}, log ML {lml:.1f} ({opt_s:.0f} s)", flush=True)
        t0 = time.perf_counter()
        sample_probs, probs = glm_function_samples(la_ll, state, xt, fr.fold_in(key, 2), args.samples,
                                                   prior_precision=tau)
        m = metrics.classification_summary(probs, yt, sample_probs)
        m.update({"n_samples": args.samples, "eval_s": time.perf_counter() - t0})
        m["config"] = {"method": "last_layer_laplace", "structure": "last_layer", "curvature": "ggn",
                       "prior_precision": tau, "log_marginal_likelihood": lml, "n_data": n_data,
                       "predictive": "glm_probit", "entropies_from": f"{args.samples} draws of f ~ N(f*, J S J')",
                       "factors_s": fit_s, "prior_opt_s": opt_s, **map_info}
        finish("last_layer_laplace", m)

    return 0


if __name__ == "__main__":
    sys.exit(main())
