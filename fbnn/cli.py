"""The ``fbnn`` command: ``fbnn train`` and ``fbnn evaluate``.

``train`` builds a model and a method from names and hyperparameters, fits it with
per-epoch atomic checkpoints (``--resume`` continues one), and writes the run's config
into the checkpoint so that ``evaluate`` can rebuild everything from the file alone.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import likelihoods, methods, metrics, models, optim, priors, torch_draws, tree
from . import random as fr
from .fit import Collector, atomic_write, fit, load_checkpoint
from .methods.base import Samples
from .predict import predict, predictive

__all__ = ["main", "build", "load_dataset", "evaluate_run", "write_json_atomic", "git_commit",
           "METHODS", "SAMPLERS", "CLASSIFICATION_DATASETS", "REGRESSION_DATASETS"]

METHODS = ("map", "mc_dropout", "ensemble", "sgld", "psgld", "sghmc", "sghmc_sa")
SAMPLERS = ("sgld", "psgld", "sghmc", "sghmc_sa")
CLASSIFICATION_DATASETS = ("mnist", "fashion-mnist")
REGRESSION_DATASETS = ("toy-homo", "toy-hetero", "housing", "concrete", "energy", "power", "wine", "yacht")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


# --- datasets ---------------------------------------------------------------------------

def load_dataset(name: str, data_dir=None, split: int = 0):
    """``(x_train, y_train, x_test, y_test, info)`` for a dataset name."""
    from . import data as fdata
    if name in CLASSIFICATION_DATASETS:
        x, y = fdata.load_mnist_like(name, "train", data_dir)
        xt, yt = fdata.load_mnist_like(name, "test", data_dir)
        return x, y, xt, yt, {"task": "classification", "n_classes": 10, "y_std": 1.0}
    if name in ("toy-homo", "toy-hetero"):
        toy = fdata.gp_toy_data(name.split("-")[1])
        return toy.x_train, toy.y_train, toy.x_train, toy.y_train, {"task": "regression", "y_std": 1.0}
    if name in REGRESSION_DATASETS:
        s = fdata.uci_split(name, split, root=data_dir)
        return s.x_train, s.y_train, s.x_test, s.y_test, {"task": "regression", "y_std": s.y_std}
    raise ValueError(f"unknown dataset {name!r}; choose one of "
                     f"{CLASSIFICATION_DATASETS + REGRESSION_DATASETS}")


# --- building models and methods from a config dict -------------------------------------

def _optimizer(cfg: dict):
    name = cfg["optimizer"]
    if name == "sgd":
        return optim.sgd(cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    if name == "adam":
        return optim.adam(cfg["lr"], weight_decay=cfg["weight_decay"])
    if name == "adamw":
        return optim.adamw(cfg["lr"], weight_decay=cfg["weight_decay"])
    if name == "rmsprop":
        return optim.rmsprop(cfg["lr"], weight_decay=cfg["weight_decay"], momentum=cfg["momentum"])
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def _model(cfg: dict, n_in: int, n_out: int, regression: bool):
    if cfg["model"] == "lenet":
        if regression:
            raise ValueError("model 'lenet' is for 28x28 classification datasets")
        return models.lenet(n_out, dropout=cfg["dropout"] or 0.5)
    if cfg["model"] != "mlp":
        raise ValueError(f"unknown model {cfg['model']!r}; choose 'mlp' or 'lenet'")
    sizes = [n_in, *cfg["hidden"], n_out]
    return models.mlp(sizes, dropout=cfg["dropout"], head="hetero" if regression else None)


def build(cfg: dict, n_in: int, n_data: int, n_out: int = 10):
    """``(model, method)`` from a config dict (as ``train`` stores it)."""
    regression = cfg["dataset"] in REGRESSION_DATASETS
    model = _model(cfg, n_in, 1 if regression else n_out, regression)
    lik = likelihoods.gaussian() if regression else likelihoods.categorical()
    opt = _optimizer(cfg)
    name = cfg["method"]
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")
    if name == "mc_dropout" and not cfg["dropout"] and cfg["model"] == "mlp":
        raise ValueError("method 'mc_dropout' needs --dropout p > 0")
    if name in SAMPLERS:
        return model, _sampler(cfg, model, lik, n_data)
    kw = {"reduction": cfg["reduction"], "n_data": n_data}
    inner = (methods.mc_dropout if name == "mc_dropout" or cfg.get("member") == "mc_dropout"
             else methods.map)(model, lik, opt, **kw)
    if name == "ensemble":
        resample = None if cfg["resample"] == "none" else cfg["resample"]
        return model, methods.ensemble(inner, cfg["members"], resample=resample, n_data=n_data,
                                       fraction=cfg["fraction"], batches=cfg.get("batches", "independent"))
    return model, inner


def steps_per_epoch(cfg: dict, n_data: int) -> int:
    return math.ceil(n_data / cfg["batch_size"])


def _sampler(cfg: dict, model, lik, n_data: int):
    """An SG-MCMC method; the gradient is N x minibatch-mean NLL + prior (SPEC 1.3)."""
    name, lr, sigma = cfg["method"], cfg["lr"], cfg["prior_sigma"]
    prior = priors.normal(sigma)
    tempering = {"temperature": cfg.get("temperature", 1.0),
                 "likelihood_temperature": cfg.get("likelihood_temperature", 1.0)}
    if name == "sgld":
        return methods.sgld(model, lik, prior, n_data, lr, **tempering)
    if name == "psgld":
        return methods.psgld(model, lik, prior, n_data, lr, alpha=cfg["alpha"], eps=cfg["eps"], **tempering)
    if name == "sghmc":
        return methods.sghmc(model, lik, prior, n_data, lr, friction=cfg["friction"],
                             resample_momentum_every=cfg["resample_momentum_every"], **tempering)
    return methods.sghmc_sa(model, lik, n_data, lr, burn_in=cfg["adapt_epochs"] * steps_per_epoch(cfg, n_data),
                            friction=cfg["friction"], prior_sigma=sigma,
                            resample_momentum_every=cfg["resample_momentum_every"],
                            resample_prior_every=cfg["resample_prior_every"], clip_std_mul=cfg["clip_std_mul"],
                            adaptation=cfg.get("adaptation", "seed"), **tempering)


def _collector(cfg: dict, directory) -> Collector | None:
    """Samples kept after epoch i when i >= collect_from and (i - collect_from) % thin == 0,
    the last ``keep`` of them, on disk under ``directory``."""
    if cfg["method"] not in SAMPLERS:
        return None
    return Collector(burn_in=cfg["collect_from"], thin=cfg["thin"], capacity=cfg["keep"], directory=directory)


def _init_params(model, cfg, key, sizes):
    if cfg.get("torch_seed") is not None:
        return torch_draws.linear_params(sizes, torch_draws.generator(cfg["torch_seed"]))
    if cfg["method"] == "ensemble":
        return methods.init_members(model, key, cfg["members"])
    return model.init(key)


def mlp_sizes(cfg: dict, n_in: int, n_out: int) -> list:
    return [n_in, *cfg["hidden"], n_out]


def run_order(cfg: dict, sizes, n: int):
    """The example order of a ``--torch-seed`` run (``fit``'s ``order``), else ``None``: a
    torch-1.0 script's DataLoader after its net's init, one test pass per epoch (the seed's)."""
    if cfg.get("torch_seed") is None:
        return None
    return torch_draws.DataLoaderOrder(cfg["torch_seed"], n, torch_draws.n_words(sizes))


def _check_torch_seed(cfg: dict) -> None:
    if cfg.get("torch_seed") is None:
        return
    if cfg["model"] != "mlp" or cfg["dataset"] in REGRESSION_DATASETS or cfg["method"] == "ensemble":
        raise ValueError("--torch-seed replays a PyTorch script's nn.Linear init and DataLoader order: it needs "
                         f"a classification mlp trained as one stream (got model {cfg['model']!r}, dataset "
                         f"{cfg['dataset']!r}, method {cfg['method']!r})")


def default_eval_samples(cfg: dict) -> int:
    if cfg["method"] in SAMPLERS:
        return cfg["keep"]
    if cfg["method"] == "ensemble":
        return cfg["members"]
    return 100 if cfg["method"] == "mc_dropout" else 1


# --- evaluation ---------------------------------------------------------------------------

def collected_draws(ckpt: dict):
    """The draws an SG-MCMC checkpoint lists under ``collected``, loaded one at a time."""
    return (load_checkpoint(p) for p in ckpt.get("collected", []))


def _collected_outputs(model, collections, x) -> torch.Tensor:
    """``(S, B, ...)`` model outputs of every collected draw, one collection at a time."""
    outs = [predict(model, Samples(*draw), x) for draw in collections]
    if not outs:
        raise ValueError("no posterior samples were collected (the run ended before --collect-from?)")
    return torch.cat(outs)


def evaluate_run(method, state, x, y, key, n_samples: int, info: dict, collections=None) -> dict:
    """Metrics of the posterior predictive on ``(x, y)``: from ``n_samples`` draws of
    ``method.sample``, or from ``collections`` (an iterable of collected
    ``(params, model_state)`` draws, for SG-MCMC), whose every draw is used."""
    t0 = time.perf_counter()
    classification = info["task"] == "classification"
    if collections is not None:
        outs = _collected_outputs(method.model, collections, x)
        n_samples = outs.shape[0]
    else:
        outs = predictive(method, state, x, key, n_samples, probs=False)
    if classification:
        sample_probs = torch.softmax(outs, -1)
        out = metrics.classification_summary(sample_probs.mean(0), y, sample_probs)
    else:
        mean, log_sigma = likelihoods.split_mean_log_sigma(outs)
        means, stds = mean[..., 0], log_sigma[..., 0].exp()
        ll = metrics.gaussian_mixture_loglik(means, stds, y)
        pm, _ = metrics.moment_match(means, stds)
        out = {"test_loglik": float(ll.mean()) - math.log(info["y_std"]),
               "rmse": metrics.uci_rmse(pm, y, info["y_std"])}
    out.update({"n_samples": n_samples, "eval_s": time.perf_counter() - t0})
    return out


def dev_eval_fn(method, x, y, info: dict, n_samples: int):
    """A per-epoch evaluation for ``fit``: deterministic passes (no dropout masks; the
    seed's dev curve sampled one, SPEC 7 #8) averaged over ``n_samples`` draws."""
    def eval_fn(state, epoch):
        out = predict(method.model, method.sample(state, fr.fold_in(fr.key(0), epoch), n_samples), x)
        if info["task"] == "classification":
            probs = torch.softmax(out, -1).mean(0)
            return {"dev_error_pct": metrics.error_pct(probs, y), "dev_nll_mean": metrics.nll_mean(probs, y)}
        mean, _ = likelihoods.split_mean_log_sigma(out.mean(0))
        return {"dev_rmse": metrics.uci_rmse(mean[:, 0], y, info["y_std"])}
    return eval_fn


# --- files --------------------------------------------------------------------------------

def write_json_atomic(path, obj) -> None:
    """JSON written atomically (see ``fit.atomic_write``)."""
    def write(f):
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    atomic_write(path, write, binary=False)


def write_text_atomic(path, text: str) -> None:
    """Text written atomically (see ``fit.atomic_write``)."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def git_commit() -> str:
    """The checkout's short commit, with ``-dirty`` when tracked code differs from it."""
    here = Path(__file__).resolve().parent

    def git(*argv):
        return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=here,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short=7", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", str(here), str(here.parent / "experiments"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _check_state_fits(model, method, cfg, state, ckpt_path) -> None:
    shapes_cfg = {k: v for k, v in cfg.items() if k != "torch_seed"}  # the same shapes, from a key
    expected = method.init(fr.key(0), _init_params(model, shapes_cfg, fr.key(0), None))
    got_shapes = [tuple(t.shape) for t in tree.leaves(state) if isinstance(t, torch.Tensor)]
    want_shapes = [tuple(t.shape) for t in tree.leaves(expected) if isinstance(t, torch.Tensor)]
    if got_shapes != want_shapes:
        raise ValueError(f"checkpoint {ckpt_path} does not fit the architecture in its config "
                         f"({cfg['model']}, hidden {cfg['hidden']}, method {cfg['method']})")


# --- commands -------------------------------------------------------------------------------

SAMPLER_OPTIONS = ("prior_sigma", "alpha", "eps", "friction", "resample_momentum_every",
                   "resample_prior_every", "clip_std_mul", "adapt_epochs", "collect_from", "thin", "keep")


def _run_config(args) -> dict:
    keys = ("method", "dataset", "model", "hidden", "dropout", "optimizer", "lr", "momentum",
            "weight_decay", "reduction", "members", "resample", "fraction", "member", "epochs",
            "batch_size", "seed", "split")
    if args.method in SAMPLERS:
        keys += SAMPLER_OPTIONS
    cfg = {k: getattr(args, k) for k in keys}
    if args.method == "sghmc_sa":
        cfg["adaptation"] = args.adaptation
    for k in ("temperature", "likelihood_temperature"):  # only when set: older configs compare equal
        if args.method in SAMPLERS and getattr(args, k) != 1.0:
            cfg[k] = getattr(args, k)
    cfg.update({k: getattr(args, k) for k in ("val", "subset", "test_subset")
                if getattr(args, k, None) is not None})
    if args.batches != "independent":  # only when set, so older runs' configs still compare equal
        cfg["batches"] = args.batches
    if args.torch_seed is not None:
        cfg["torch_seed"] = args.torch_seed
    return cfg


def _subsets(cfg: dict, x, y, xt, yt) -> tuple:
    """The training and evaluation sets of a run: with ``cfg["val"] = V`` the last V training
    examples replace the test set and leave training; then the first ``cfg["subset"]`` training
    and ``cfg["test_subset"]`` evaluation examples (all when unset)."""
    v = cfg.get("val")
    if v is not None:
        if v >= x.shape[0]:
            raise ValueError(f"--val {v} holds out every one of the {x.shape[0]} training examples")
        x, y, xt, yt = x[:-v], y[:-v], x[-v:], y[-v:]
    n, m = cfg.get("subset"), cfg.get("test_subset")
    return x[:n], y[:n], xt[:m], yt[:m]


def eval_set(cfg: dict) -> str:
    """What a run's ``test_*`` metrics were measured on."""
    return f"validation: the last {cfg['val']} training examples" if cfg.get("val") else "test"


def _check_sampler_schedule(cfg: dict) -> None:
    if cfg["method"] not in SAMPLERS:
        return
    if cfg["collect_from"] >= cfg["epochs"]:
        raise ValueError(f"--collect-from {cfg['collect_from']} leaves no epoch to collect in a run of "
                         f"{cfg['epochs']} epochs")
    if cfg["method"] == "sghmc_sa" and cfg["adapt_epochs"] >= cfg["epochs"]:
        raise ValueError(f"--adapt-epochs {cfg['adapt_epochs']} (burn-in) is not shorter than the run "
                         f"({cfg['epochs']} epochs)")


def run_keys(seed: int):
    """``(k_init, k_fit, k_eval)`` of a ``train`` run with this seed."""
    return fr.split(fr.key(seed), 3)


def cmd_train(args) -> dict:
    cfg = _run_config(args)
    _check_sampler_schedule(cfg)
    _check_torch_seed(cfg)
    x, y, xt, yt, info = load_dataset(args.dataset, args.data_dir, args.split)
    x, y, xt, yt = _subsets(cfg, x, y, xt, yt)
    model, method = build(cfg, x.shape[-1], x.shape[0], info.get("n_classes", 10))
    k_init, k_fit, k_eval = run_keys(args.seed)
    out_dir = Path(args.out)
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists() and not args.resume:
        raise FileExistsError(f"{ckpt} exists; pass --resume to continue it or choose another --out")
    if ckpt.exists():
        old = (load_checkpoint(ckpt).get("meta") or {}).get("config", {})
        changed = sorted(k for k in cfg if k != "epochs" and old.get(k) != cfg[k])
        if changed:
            raise ValueError(f"--resume: {ckpt} was trained with other settings: "
                             + ", ".join(f"{k}={old.get(k)!r} (now {cfg[k]!r})" for k in changed))
    sizes = mlp_sizes(cfg, x.shape[-1], info.get("n_classes", 10))
    state = method.init(k_init, _init_params(model, cfg, k_init, sizes))
    n_eval = args.eval_samples or default_eval_samples(cfg)
    commit = git_commit()  # the code this run starts with
    eval_fn = None
    if args.eval_every:
        n_dev = cfg["members"] if cfg["method"] == "ensemble" else 1
        eval_fn = dev_eval_fn(method, xt, yt, info, n_dev)
    collector = _collector(cfg, out_dir / "samples")
    result = fit(method, state, (x, y), k_fit, epochs=args.epochs, batch_size=args.batch_size,
                 eval_fn=eval_fn, eval_every=max(args.eval_every, 1), collector=collector,
                 checkpoint=ckpt, resume=args.resume, progress=not args.no_progress,
                 meta={"config": cfg}, description=f"{args.method} {args.dataset}",
                 order=run_order(cfg, sizes, x.shape[0]))
    collections = collector.iter_samples() if collector is not None else None
    metrics_out = evaluate_run(method, result.state, xt, yt, k_eval, n_eval, info, collections)
    metrics_out.update({"eval_set": eval_set(cfg),
                        "train_wall_s": result.history[-1]["wall_s"] if result.history else 0.0,
                        "epochs": args.epochs, "config": cfg, "commit": commit,
                        "command": " ".join(["fbnn", *sys.argv[1:]]) if args.command_line is None
                        else args.command_line})
    write_json_atomic(out_dir / "metrics.json", metrics_out)
    print(json.dumps({k: v for k, v in metrics_out.items() if k != "config"}, indent=2))
    return metrics_out


def cmd_evaluate(args) -> dict:
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    cfg = (ckpt.get("meta") or {}).get("config")
    if cfg is None:
        raise ValueError(f"checkpoint {path} was not written by `fbnn train` (no config inside)")
    x, y, xt, yt, info = load_dataset(cfg["dataset"], args.data_dir, cfg["split"])
    x, y, xt, yt = _subsets(cfg, x, y, xt, yt)
    model, method = build(cfg, x.shape[-1], x.shape[0], info.get("n_classes", 10))
    _check_state_fits(model, method, cfg, ckpt["state"], path)
    key = run_keys(args.seed if args.seed is not None else cfg["seed"])[2]
    collections = None
    if cfg["method"] in SAMPLERS:
        collections = collected_draws(ckpt)
    out = evaluate_run(method, ckpt["state"], xt, yt, key,
                       args.samples or default_eval_samples(cfg), info, collections)
    out.update({"eval_set": eval_set(cfg), "epochs_trained": ckpt["epoch"], "checkpoint": str(path)})
    if args.out:
        write_json_atomic(args.out, out)
    print(json.dumps(out, indent=2))
    return out


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated ints, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden must hold positive ints, got {text!r}")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _every_or_never(text: str) -> int | None:
    """A period in steps; 0 means never (None)."""
    if text.strip() == "0":
        return None
    return _positive_int(text)


def _non_negative_float(text: str) -> float:
    v = float(text)
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fbnn", description="Bayesian neural networks on torch.func")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model with an inference method",
                       description="Train a model with an inference method; checkpoints every epoch.")
    t.add_argument("--method", choices=METHODS, required=True)
    t.add_argument("--dataset", choices=CLASSIFICATION_DATASETS + REGRESSION_DATASETS, required=True)
    t.add_argument("--split", type=int, default=0, help="UCI split index (standard 20 splits)")
    t.add_argument("--model", choices=("mlp", "lenet"), default="mlp")
    t.add_argument("--hidden", type=_hidden, default=[1200, 1200], help="hidden sizes, e.g. 1200,1200")
    t.add_argument("--dropout", type=float, default=None, help="dropout probability (MC dropout)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    t.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (> 0)")
    t.add_argument("--momentum", type=float, default=0.5)
    t.add_argument("--weight-decay", type=_non_negative_float, default=0.0)
    t.add_argument("--reduction", choices=("sum", "mean", "dataset"), default="sum",
                   help="minibatch loss: summed (the seed's), mean, or N x mean")
    t.add_argument("--members", type=int, default=10, help="ensemble members")
    t.add_argument("--member", choices=("map", "mc_dropout"), default="map", help="ensemble member method")
    t.add_argument("--resample", choices=("none", "bernoulli", "bootstrap"), default="bernoulli")
    t.add_argument("--fraction", type=float, default=0.8, help="resampling fraction")
    t.add_argument("--batches", choices=("independent", "subset"), default="independent",
                   help="ensemble minibatches: 'independent' shuffles of the whole training set, each "
                        "example weighted by the member's resample; 'subset': each member iterates "
                        "over its own resampled examples in full batches (the seed's SubsetRandomSampler)")
    g = t.add_argument_group("SG-MCMC (sgld, psgld, sghmc, sghmc_sa)",
                             "gradient = N x minibatch-mean NLL + prior; samples are kept on disk under "
                             "OUT/samples after epoch i when i >= --collect-from and (i - collect-from) % "
                             "--thin == 0, the last --keep of them")
    g.add_argument("--prior-sigma", type=_positive_float, default=0.1, help="Gaussian prior std (initial, sghmc_sa)")
    g.add_argument("--alpha", type=float, default=0.99, help="pSGLD RMSprop decay")
    g.add_argument("--eps", type=_positive_float, default=1e-8, help="pSGLD preconditioner offset")
    g.add_argument("--friction", type=float, default=0.05, help="SGHMC friction C")
    g.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="posterior temperature T (> 0): samples exp(-U/T); T < 1 is a cold posterior")
    g.add_argument("--likelihood-temperature", type=_positive_float, default=1.0,
                   help="likelihood temperature T_lik (> 0): N / T_lik x minibatch-mean NLL + prior, "
                        "so the prior (and sghmc_sa's Gibbs step) stays untempered")
    g.add_argument("--resample-momentum-every", type=_every_or_never, default=50,
                   help="steps (SGHMC); 0: never")
    g.add_argument("--resample-prior-every", type=_every_or_never, default=15,
                   help="steps (sghmc_sa Gibbs precision); 0: never, a fixed N(0, prior-sigma^2) prior")
    g.add_argument("--clip-std-mul", type=float, default=20.0, help="sghmc_sa dynamic clipping k")
    g.add_argument("--adapt-epochs", type=int, default=20, help="sghmc_sa burn-in (adaptation) epochs")
    g.add_argument("--adaptation", choices=("seed", "pybnn"), default="seed",
                   help="sghmc_sa burn-in averaging: the seed's order (r from the new tau; unstable after "
                        "burn-in on MNIST) or pybnn's (r = 1/(tau+1) from the old tau)")
    g.add_argument("--collect-from", type=int, default=16, help="first epoch (0-based) to collect")
    g.add_argument("--thin", type=int, default=2, help="collect every THIN epochs")
    g.add_argument("--keep", type=int, default=90, help="FIFO capacity: samples kept and evaluated")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--val", type=_positive_int, default=None,
                   help="hold the last N training examples out of training and evaluate on them instead "
                        "of the test set (settings chosen without the test set)")
    t.add_argument("--subset", type=_positive_int, default=None, help="train on the first N examples only")
    t.add_argument("--test-subset", type=_positive_int, default=None, help="evaluate on the first N test examples")
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--torch-seed", type=int, default=None,
                   help="replay a PyTorch script that calls torch.manual_seed(S) and builds nn.Linear layers: "
                        "start from the parameters torch draws there, and visit the data in the order of its "
                        "torch-1.0 DataLoader(shuffle=True) with one test pass per epoch (the seed notebooks'); "
                        "a private generator, never the global one. Other draws still come from --seed")
    t.add_argument("--eval-samples", type=int, default=None,
                   help="posterior samples for the test predictive (default: 1 MAP, 100 MC dropout, "
                        "members for an ensemble; samplers use every kept sample)")
    t.add_argument("--eval-every", type=int, default=0,
                   help="evaluate on the test set every N epochs (deterministic passes; 0: only at the end)")
    t.add_argument("--out", required=True, help="output directory (checkpoint.pt, metrics.json)")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    t.add_argument("--data-dir", default=None, help="data root (default: $FBNN_DATA or ../shared/data)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train, command_line=None)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint, write metrics JSON",
                       description="Evaluate a checkpoint written by `fbnn train` on its test set.")
    e.add_argument("checkpoint", help="checkpoint.pt or the run directory holding it")
    e.add_argument("--samples", type=int, default=None, help="posterior samples for the predictive")
    e.add_argument("--seed", type=int, default=None, help="key for the predictive (default: the run's)")
    e.add_argument("--out", default=None, help="metrics JSON path")
    e.add_argument("--data-dir", default=None)
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
        print(f"fbnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
