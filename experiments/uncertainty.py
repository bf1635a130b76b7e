"""MNIST uncertainty suite (SPEC 4): rotations, OOD (KMNIST, Fashion-MNIST), FGSM,
calibration and weight histograms for every trained MNIST model found on disk.

    OMP_NUM_THREADS=1 nice -n 19 python -m experiments.uncertainty                 # all models present
    python -m experiments.uncertainty --models map,mc_dropout --quick             # seconds, same code paths
    python -m experiments.uncertainty --n-samples 30 --subset 500 --ood-subset 2000

Models and where they are read (``--runs-dir``, default ``runs``):
``map, mc_dropout, ensemble, sgld, psgld, sghmc_sa``: ``mnist/<row>/checkpoint.pt`` (``fbnn
train``; SG-MCMC draws from the ``samples/`` kept next to it); ``evidential``:
``mnist/evidential/checkpoint.pt``; ``kfac_laplace``: the MAP params and K-FAC factors
``kfac_mnist/kfac_ggn_epoch*_n60000.pt`` of ``experiments.kfac_mnist`` (the seed's damping,
hessian_diag_sig 0.15); ``bbp_*``: ``bbp_mnist/<row>/checkpoint.pt``. A model whose
checkpoint is absent, or whose training has not finished, is skipped with a note.

Each model's predictive is evaluated once, on one batch holding every input set: the
first ``--subset`` MNIST test images at the 16 angles and at the 15 FGSM step sizes, and
the first ``--ood-subset`` images of the MNIST, KMNIST and Fashion-MNIST test sets
(calibration and OOD). Results are written after every model: ``OUT/uncertainty.json``,
``OUT/uncertainty.md`` and ``OUT/figures/{rotation,ood_ecdf,fgsm,reliability,weights}_*.png``;
the entries of models evaluated earlier with the same settings are kept.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from fbnn import cli, likelihoods, metrics, models, plotting, tree
from fbnn import random as fr
from fbnn import uncertainty as U
from fbnn.data import load_mnist_like
from fbnn.fit import load_checkpoint
from fbnn.methods.base import Samples

TRAIN_ROWS = ("map", "mc_dropout", "ensemble", "sgld", "psgld", "sghmc_sa")
BBP_ROWS = ("bbp_gaussian", "bbp_gmm", "bbp_laplace", "bbp_lrt")
MODELS = TRAIN_ROWS + ("evidential", "kfac_laplace") + BBP_ROWS
OOD_SETS = ("kmnist", "fashion-mnist")
KFAC_HESSIAN_DIAG_SIG = 0.15   # experiments.kfac_mnist's kfac_laplace row (the seed's damping)
KFAC_N_DATA = 60000
WEIGHT_DRAWS = 10              # SPEC 4.5: 10 draws (or members, or stored samples) per model
FGSM_TARGET = "NLL of the MC-averaged predictive: -sum_i log mean_s p_s(y_i | x_i), gradient w.r.t. the input"
ROTATION = ("torch affine_grid/grid_sample, bilinear, about the image centre, counter-clockwise, "
            "black (pixel 0) fill; the seed used scipy.ndimage.rotate (cubic spline)")
COMPARABLE = ("subset", "ood_subset", "angles", "epsilons", "fgsm_space", "seed", "quick")


class Skip(Exception):
    """A model that is not there (yet): skipped with a note, not an error."""


class Loaded(NamedTuple):
    post: U.Posterior
    source: str
    weight_draws: int       # distinct draws whose weights go into the histogram
    note: str
    shortened: str = ""     # e.g. "30/160 ep": trained for fewer epochs than the seed's config


# --- loading -------------------------------------------------------------------------------

def checkpoint_path(name: str, runs_dir: Path) -> Path:
    if name in TRAIN_ROWS or name == "evidential":
        return runs_dir / "mnist" / name / "checkpoint.pt"
    if name in BBP_ROWS:
        return runs_dir / "bbp_mnist" / name / "checkpoint.pt"
    return kfac_factor_file(runs_dir / "kfac_mnist")


def kfac_factor_file(folder: Path) -> Path:
    """The K-FAC factors over the most training images (the newest among equals)."""
    files = [(int(m.group(1)), p.stat().st_mtime, p) for p in folder.glob("kfac_ggn_epoch*_n*.pt")
             if (m := re.search(r"_n(\d+)\.pt$", p.name))]
    if not files:
        return folder / f"kfac_ggn_epoch*_n{KFAC_N_DATA}.pt"
    return max(files)[2]


def _config(ckpt: dict, path: Path) -> dict:
    cfg = (ckpt.get("meta") or {}).get("config")
    if cfg is None:
        raise ValueError(f"checkpoint {path} holds no config (not written by `fbnn train` or an experiment)")
    if cfg.get("dataset", "mnist") != "mnist":
        raise ValueError(f"checkpoint {path} was trained on {cfg['dataset']!r}, not MNIST: a different "
                         f"architecture and task than the 784-input, 10-class MNIST classifiers evaluated here")
    epoch, epochs = ckpt.get("epoch"), cfg.get("epochs")
    if epoch is not None and epochs is not None and epoch < epochs:
        raise Skip(f"{path}: training not finished (epoch {epoch} of {epochs}); not evaluated")
    return cfg


def _check_params(want: dict, got: dict, path: Path, arch: str) -> None:
    """``want``/``got``: ``{name: tensor}`` of one parameter set each."""
    want_shapes = {k: tuple(v.shape) for k, v in want.items()}
    got_shapes = {k: tuple(v.shape) for k, v in got.items()}
    if want_shapes != got_shapes:
        diff = sorted(set(want_shapes.items()) ^ set(got_shapes.items()))[:4]
        raise ValueError(f"checkpoint {path} does not fit the architecture {arch}: parameter shapes differ "
                         f"({', '.join(f'{k} {s}' for k, s in diff)})")


def _mlp_sizes(params: dict, path: Path) -> list[int]:
    """``[784, h1, ..., 10]`` read off ``fc{i}.weight`` shapes; a clear error for anything else."""
    names = sorted((k for k in params if re.fullmatch(r"fc\d+\.weight", k)), key=lambda k: int(k[2:-7]))
    if not names:
        raise ValueError(f"checkpoint {path} does not hold an MLP (no fc<i>.weight parameters)")
    sizes = [params[names[0]].shape[-1]] + [params[n].shape[-2] for n in names]
    if sizes[0] != 784 or sizes[-1] != 10:
        raise ValueError(f"checkpoint {path} holds an MLP {sizes}, not a 784-input, 10-class MNIST classifier")
    return sizes


def _evenly_spaced(n_have: int, n_want: int) -> list[int]:
    if n_want >= n_have:
        return list(range(n_have))
    return sorted({round(i * (n_have - 1) / (n_want - 1)) for i in range(n_want)}) if n_want > 1 else [n_have - 1]


def _sample_file(p: str, run_dir: Path) -> Path:
    path = Path(p)
    return path if path.exists() else run_dir / "samples" / path.name


def load_train_row(name: str, path: Path, n_samples: int, key) -> Loaded:
    ckpt = load_checkpoint(path)
    cfg = _config(ckpt, path)
    if cfg.get("method") != name:
        raise ValueError(f"checkpoint {path} holds method {cfg.get('method')!r}, expected {name!r}")
    model, method = cli.build(cfg, 784, cfg.get("subset") or 60000, 10)
    cli._check_state_fits(model, method, cfg, ckpt["state"], path)
    k_sample, k_predict = fr.split(key, 2)
    if name in cli.SAMPLERS:
        kept = ckpt.get("collected", [])
        if not kept:
            raise Skip(f"{path}: no posterior samples were collected")
        chosen = _evenly_spaced(len(kept), n_samples)
        draws = [Samples(*load_checkpoint(_sample_file(kept[i], path.parent))) for i in chosen]
        samples = tree.map(lambda *xs: torch.cat(xs), *draws)
        note = f"{len(chosen)} of the {len(kept)} kept samples, evenly spaced"
        return Loaded(U.Posterior(model, samples), str(path), min(WEIGHT_DRAWS, len(chosen)), note)
    if name == "ensemble":
        n = cfg["members"]
        return Loaded(U.Posterior(model, method.sample(ckpt["state"], k_sample, n)), str(path),
                      min(WEIGHT_DRAWS, n), f"{n} members (one draw each)")
    if name == "map":
        return Loaded(U.Posterior(model, method.sample(ckpt["state"], k_sample, 1)), str(path), 1, "one net")
    return Loaded(U.Posterior(model, method.sample(ckpt["state"], k_sample, n_samples), key=k_predict),
                  str(path), 1, f"{n_samples} dropout masks (p={cfg['dropout']})")


def load_evidential(path: Path, key) -> Loaded:
    from experiments import evidential_mnist
    ckpt = load_checkpoint(path)
    cfg = _config(ckpt, path)
    if cfg.get("method") != "evidential":
        raise ValueError(f"checkpoint {path} holds method {cfg.get('method')!r}, expected 'evidential'")
    model, method = evidential_mnist.build(cfg, 60000)
    _check_params(model.init(fr.key(0)), ckpt["state"].params, path, f"{cfg['model']} (evidential)")
    samples = method.sample(ckpt["state"], key, 1)
    return Loaded(U.Posterior(method.model, samples, dirichlet=True), str(path), 1,
                  "one net; entropies of its Dirichlet in closed form (epistemic = mutual information)")


def load_kfac(path: Path, n_samples: int, key) -> Loaded:
    from fbnn.methods import laplace as fl
    state = load_checkpoint(path)["state"]
    model = models.mlp(_mlp_sizes(state.params, path))
    _check_params(model.init(fr.key(0)), state.params, path, "mlp")
    la = fl.kfac_laplace(model, likelihoods.categorical(), damping="ritter",
                         prior_precision=1.0 / KFAC_HESSIAN_DIAG_SIG ** 2, n_data=KFAC_N_DATA)
    samples = la.sample(state, key, n_samples)
    return Loaded(U.Posterior(model, samples), str(path), min(WEIGHT_DRAWS, n_samples),
                  f"{n_samples} matrix-normal draws (damping 'ritter', hessian_diag_sig {KFAC_HESSIAN_DIAG_SIG})")


def load_bbp(name: str, path: Path, n_samples: int, key) -> Loaded:
    from experiments import bbp_mnist
    from fbnn.methods import vi
    ckpt = load_checkpoint(path)
    cfg = _config(ckpt, path)
    model, method, _ = bbp_mnist.build(cfg, cfg.get("subset") or 60000)
    state, best_epoch = bbp_mnist.selected_state(cfg, path.parent, ckpt["state"])
    _check_params(model.init(fr.key(0)), state.mean, path, f"mlp {bbp_mnist.ARCH}")
    draws = list(vi.sample_chunks(state, key, n_samples, 10))
    samples = tree.map(lambda *xs: torch.cat(xs), *draws)
    note = f"{n_samples} draws from q"
    if best_epoch is not None:
        note += f" (state of epoch {best_epoch}, best on test)"
    short = bbp_mnist.shortened(name, cfg["epochs"])
    if short:
        note += f"; trained {cfg['epochs']} of the seed's {bbp_mnist.CONFIGS[name]['epochs']} epochs"
    return Loaded(U.Posterior(method.model, samples), str(path), min(WEIGHT_DRAWS, n_samples), note, short)


def load_model(name: str, runs_dir: Path, n_samples: int, key) -> Loaded:
    """A model's posterior draws; ``Skip`` when its checkpoint is absent or unfinished."""
    path = checkpoint_path(name, runs_dir)
    if not path.exists():
        raise Skip(f"no checkpoint at {path} (not trained yet)")
    if name in TRAIN_ROWS:
        return load_train_row(name, path, n_samples, key)
    if name == "evidential":
        return load_evidential(path, key)
    if name == "kfac_laplace":
        return load_kfac(path, n_samples, key)
    return load_bbp(name, path, n_samples, key)


# --- evaluation ----------------------------------------------------------------------------

class Inputs(NamedTuple):
    x: torch.Tensor          # (N, 784) MNIST test subset for rotations and FGSM
    y: torch.Tensor          # (N,)
    clean_x: torch.Tensor    # (M, 784) MNIST test, calibration and in-distribution side of OOD
    clean_y: torch.Tensor    # (M,)
    ood: dict                # {name: (M, 784)}


def load_inputs(data_dir, subset: int, ood_subset: int) -> Inputs:
    x, y = load_mnist_like("mnist", "test", data_dir)
    ood = {name: load_mnist_like(name, "test", data_dir)[0][:ood_subset] for name in OOD_SETS}
    return Inputs(x[:subset], y[:subset], x[:ood_subset], y[:ood_subset], ood)


def condition_summary(out: torch.Tensor, y: torch.Tensor, dirichlet: bool) -> dict:
    """Per-condition means/stds over images of outputs ``(S, C, N, K)`` with labels ``(N,)``:
    lists of length ``C``."""
    s, c, n, k = out.shape
    flat = out.reshape(s, c * n, k)
    probs = U.predictive_probs(flat).reshape(c, n, k)
    ent = {part: v.reshape(c, n) for part, v in U.entropies(flat, dirichlet).items()}
    res = {"error": (probs.argmax(-1) != y).double().mean(-1).tolist()}
    for part, values in [("true_prob", U.true_class_probs(probs, y)), *ent.items()]:
        res[f"{part}_mean"], res[f"{part}_std"] = U.mean_std(values)
    return res


def rises(values: list) -> dict:
    """Does a curve ``values[0], ...`` rise from its first point: peak at least twice the
    start and 0.01 nats above it."""
    peak = max(range(len(values)), key=lambda i: values[i])
    return {"start": values[0], "peak": values[peak], "peak_index": peak,
            "rises": bool(values[peak] >= 2 * values[0] and values[peak] - values[0] >= 0.01)}


def evaluate_model(loaded: Loaded, inputs: Inputs, angles, epsilons, space: str) -> dict:
    post = loaded.post
    t0 = time.perf_counter()
    n, d = inputs.x.shape
    rotated = U.rotations(inputs.x, angles)                                     # (A, N, D)
    grad_x = U.predictive_nll_grad(post, inputs.x, inputs.y)
    t_grad = time.perf_counter() - t0
    adversarial = U.fgsm_sweep(inputs.x, grad_x, epsilons, space)               # (E, N, D)
    ood = [inputs.ood[name] for name in OOD_SETS]
    batch = torch.cat([rotated.reshape(-1, d), adversarial.reshape(-1, d), inputs.clean_x, *ood])
    out = U.outputs(post, batch)                                                # (S, total, K)
    t_predict = time.perf_counter() - t0 - t_grad
    s, k = out.shape[0], out.shape[-1]
    a, e, m = len(angles), len(epsilons), inputs.clean_x.shape[0]
    rot_out, adv_out, rest = out.split([a * n, e * n, (1 + len(ood)) * m], dim=1)
    rotation = {"angles": list(angles), **condition_summary(rot_out.reshape(s, a, n, k), inputs.y, post.dirichlet)}
    fgsm = {"epsilons": list(epsilons), **condition_summary(adv_out.reshape(s, e, n, k), inputs.y, post.dirichlet)}

    sets = dict(zip(("mnist", *OOD_SETS), rest.split(m, dim=1)))
    ent = {name: U.entropies(o, post.dirichlet) for name, o in sets.items()}
    probs = U.predictive_probs(sets["mnist"])
    clean = {"error_pct": metrics.error_pct(probs, inputs.clean_y), "nll_mean": metrics.nll_mean(probs, inputs.clean_y),
             "ece": metrics.ece(probs, inputs.clean_y, 15), "brier": metrics.brier(probs, inputs.clean_y),
             "bins": U.reliability_bins(probs, inputs.clean_y, 15),
             "mean_total": float(ent["mnist"]["total"].mean()),
             "mean_epistemic": float(ent["mnist"]["epistemic"].mean())}
    grid = torch.linspace(0, plotting.LN10, 201, dtype=torch.float64)
    ccdf = {"grid": grid.tolist()}
    ood_res = {}
    for name, e_ in ent.items():
        for part in ("total", "epistemic"):
            ccdf[f"{name}_{part}"] = U.complementary_ecdf(e_[part], grid).tolist()
        if name != "mnist":
            ood_res[name] = {f"auroc_{part}": U.ood_auroc(ent["mnist"][part], e_[part])
                             for part in ("total", "epistemic")}
            ood_res[name].update({f"mean_{part}": float(e_[part].mean()) for part in ("total", "epistemic")})
    weights = U.weight_histogram(U.weight_values(post.samples.params, loaded.weight_draws), bins=200, limit=0.5)
    weights["draws"] = loaded.weight_draws
    epistemic_all = torch.cat([rot_out.new_tensor(rotation["epistemic_mean"]).abs(),
                               adv_out.new_tensor(fgsm["epistemic_mean"]).abs()])
    acceptance = {"rotation_epistemic": rises(rotation["epistemic_mean"]),
                  "fgsm_epistemic": rises(fgsm["epistemic_mean"]),
                  "max_abs_mean_epistemic": float(epistemic_all.max())}
    return {"n_samples": s, "source": loaded.source, "note": loaded.note, "shortened": loaded.shortened,
            "dirichlet": post.dirichlet,
            "clean": clean, "rotation": rotation, "fgsm": fgsm, "ood": ood_res, "ccdf": ccdf,
            "weights": weights, "acceptance": acceptance,
            "wall_s": {"fgsm_gradient": t_grad, "predictive": t_predict, "total": time.perf_counter() - t0}}


# --- report --------------------------------------------------------------------------------

def label(name: str, m: dict) -> str:
    """A model's name in tables and legends, with ``(30/160 ep)`` when it was trained for fewer
    epochs than the seed's config."""
    return f"{name} ({m['shortened']})" if m.get("shortened") else name


def _fmt(v, f="{:.3f}"):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)


def _sweep_table(ms: dict, names, sweep: str, title: str, peak_name: str, labels: list, show: list) -> list:
    """Markdown rows of one sweep (``"rotation"`` or ``"fgsm"``): per model, error rate / mean
    total H / mean epistemic H at the columns ``show`` (indices into ``labels``), and the
    epistemic peak with its label."""
    lines = ["", title, "", "| model | " + " | ".join(labels[i] for i in show) + f" | epistemic peak ({peak_name}) |",
             "|---|" + "---|" * (len(show) + 1)]
    for n in names:
        r, acc = ms[n][sweep], ms[n]["acceptance"][f"{sweep}_epistemic"]
        cells = " | ".join(f"{r['error'][i]:.2f} / {r['total_mean'][i]:.2f} / {r['epistemic_mean'][i]:.3f}"
                           for i in show)
        lines.append(f"| {label(n, ms[n])} | {cells} | {acc['peak']:.3f} ({labels[acc['peak_index']]}) |")
    return lines


def markdown(res: dict) -> str:
    st, ms = res["settings"], res["models"]
    names = [n for n in MODELS if n in ms]
    eps, angles = st["epsilons"], st["angles"]
    lines = ["# MNIST uncertainty suite (SPEC 4)", "",
             (f"Command: `{st['command']}` (commit {st['commit']}). Entropies in nats, without the seed's 1e-5 "
              "offset, so one net's epistemic entropy is exactly 0."), "",
             (f"Inputs: the first {st['subset']:,} MNIST test images for rotations and FGSM; the first "
              f"{st['ood_subset']:,} images of the MNIST, KMNIST and Fashion-MNIST test sets for calibration and OOD "
              "(subsets for CPU time; fixed, the same for every model)."), "",
             f"- Rotation: {len(angles)} angles {angles} degrees; {st['rotation']}.",
             (f"- FGSM: one step x' = x + ε sign(∇x loss), ε ∈ {eps}, in the {st['fgsm_space_doc']}; "
              f"loss: {st['fgsm_target']}. MC dropout: the gradient's S masks are drawn afresh "
              "(not the evaluation's masks)."),
             ("- Evidential: a single net; its entropies are the closed forms of its Dirichlet "
              "(epistemic = mutual information of Dir(α)), not sample-based."), "",
             "## Out-of-distribution detection: AUROC (OOD = positive, higher entropy = more OOD)", "",
             "| model | S | KMNIST, total H | KMNIST, epistemic (MI) | Fashion, total H | Fashion, epistemic (MI) |",
             "|---|---|---|---|---|---|"]
    for n in names:
        o = ms[n]["ood"]
        lines.append(f"| {label(n, ms[n])} | {ms[n]['n_samples']} | {_fmt(o['kmnist']['auroc_total'])} | "
                     f"{_fmt(o['kmnist']['auroc_epistemic'])} | {_fmt(o['fashion-mnist']['auroc_total'])} | "
                     f"{_fmt(o['fashion-mnist']['auroc_epistemic'])} |")
    lines += ["", "A constant score (one net's epistemic entropy, identically 0) gives AUROC 0.5.", "",
              f"## Calibration on the {st['ood_subset']:,} clean MNIST test images", "",
              "| model | error % | NLL (nats/image) | ECE (15 bins) | Brier | mean total H | mean epistemic H |",
              "|---|---|---|---|---|---|---|"]
    for n in names:
        c = ms[n]["clean"]
        lines.append(f"| {label(n, ms[n])} | {c['error_pct']:.2f} | {c['nll_mean']:.4f} | {c['ece']:.4f} | "
                     f"{c['brier']:.4f} | {c['mean_total']:.4f} | {c['mean_epistemic']:.4f} |")
    lines += _sweep_table(ms, names, "rotation", "## Rotations: mean over images (error rate / mean total H / "
                          "mean epistemic H)", "angle", [f"{a}°" for a in angles],
                          [i for i, a in enumerate(angles) if a in (0, 23, 47, 71, 95, 131, 179)])
    lines += _sweep_table(ms, names, "fgsm", "## FGSM: error rate / mean total H / mean epistemic H", "ε",
                          [f"ε={v:g}" for v in eps],
                          [i for i, v in enumerate(eps) if v in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)])
    lines += ["", "## Acceptance: epistemic entropy under rotation and FGSM", "",
              ("\"rises\": the mean epistemic entropy's peak over the sweep is at least twice its value on the "
               "clean images and at least 0.01 nats above it."), "",
              ("| model | rotation: 0° → peak | rises | FGSM: ε=0 → peak | rises "
               "| largest mean epistemic, both sweeps |"),
              "|---|---|---|---|---|---|"]
    for n in names:
        a = ms[n]["acceptance"]
        r, f = a["rotation_epistemic"], a["fgsm_epistemic"]
        lines.append(f"| {label(n, ms[n])} | {r['start']:.4f} → {r['peak']:.4f} | {'yes' if r['rises'] else 'no'} | "
                     f"{f['start']:.4f} → {f['peak']:.4f} | {'yes' if f['rises'] else 'no'} | "
                     f"{a['max_abs_mean_epistemic']:.3g} |")
    both = [n for n in names if n != "map" and ms[n]["acceptance"]["rotation_epistemic"]["rises"]
            and ms[n]["acceptance"]["fgsm_epistemic"]["rises"]]
    others = [n for n in names if n != "map" and n not in both]
    lines += ["", f"Epistemic entropy rises under both rotation and FGSM: {', '.join(both) or 'none'}"
              + (f"; not under both: {', '.join(others)}" if others else "") + "."]
    if "map" in ms:
        zero = ms["map"]["acceptance"]["max_abs_mean_epistemic"] == 0.0
        lines.append(f"MAP's epistemic entropy {'is exactly 0 at every angle and step size' if zero else 'is not 0'} "
                     "(one net: total = aleatoric).")
    lines += ["", "## Models", "",
              ("Wall times: each model evaluated by its own command (1 or 2 threads), on 2 cores shared with "
               "training runs."), "",
              "| model | S | draws | weight std | checkpoint | wall (s) |", "|---|---|---|---|---|---|"]
    for n in names:
        m = ms[n]
        lines.append(f"| {label(n, m)} | {m['n_samples']} | {m['note']} | {m['weights']['std']:.4f} | "
                     f"`{m['source']}` | {m['wall_s']['total']:.0f} |")
    commands = sorted({ms[n].get("command", st["command"]) for n in names})
    if len(commands) > 1:
        lines += ["", "Commands (see each model's `command` in uncertainty.json):", *[f"- `{c}`" for c in commands]]
    if res.get("skipped"):
        lines += ["", "Skipped:", *[f"- `{n}`: {why}" for n, why in res["skipped"].items()]]
    lines += ["", ("Figures (`figures/`): `rotation_<model>.png`, `rotation_all.png`, `ood_ecdf_kmnist.png`, "
                   "`ood_ecdf_fashion-mnist.png`, `fgsm_all.png`, `reliability_all.png`, `weights_all.png`.")]
    return "\n".join(lines) + "\n"


def write_figures(res: dict, fig_dir: Path) -> None:
    by_name = {n: res["models"][n] for n in MODELS if n in res["models"]}
    sub = f" (first {res['settings']['subset']:,} test images)"
    for n, m in by_name.items():
        plotting.rotation_figure(label(n, m), m["rotation"], fig_dir / f"rotation_{n}.png",
                                 f"{sub}, S = {m['n_samples']}")
    ms = {label(n, m): m for n, m in by_name.items()}  # legends name shortened runs as such
    plotting.rotation_comparison_figure({n: m["rotation"] for n, m in ms.items()}, fig_dir / "rotation_all.png", sub)
    for ood in OOD_SETS:
        plotting.ood_ecdf_figure({n: {**m["ccdf"], **m["ood"][ood]} for n, m in ms.items()}, ood,
                                 fig_dir / f"ood_ecdf_{ood}.png", f" ({res['settings']['ood_subset']:,} images each)")
    plotting.fgsm_figure({n: m["fgsm"] for n, m in ms.items()}, fig_dir / "fgsm_all.png",
                         f"{sub}; ε in the {res['settings']['fgsm_space_doc']}")
    plotting.reliability_figure({n: {"bins": m["clean"]["bins"], "ece": m["clean"]["ece"]} for n, m in ms.items()},
                                fig_dir / "reliability_all.png", f" ({res['settings']['ood_subset']:,} images)")
    plotting.weights_figure({n: m["weights"] for n, m in ms.items()}, fig_dir / "weights_all.png")


# --- command line --------------------------------------------------------------------------

def parse_models(values: list[str]) -> list[str]:
    names = [n for v in values for n in v.split(",") if n]
    if names == ["all"] or not names:
        return list(MODELS)
    bad = [n for n in names if n not in MODELS]
    if bad:
        raise ValueError(f"unknown model {bad[0]!r}; choose from {', '.join(MODELS)} (or 'all')")
    return list(dict.fromkeys(names))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["all"], help=f"comma/space separated, from {', '.join(MODELS)}")
    p.add_argument("--n-samples", type=cli._positive_int, default=None,
                   help="posterior draws per model (default 100; SG-MCMC: at most this many of the kept samples; "
                        "ensemble: its members; MAP and evidential: 1)")
    p.add_argument("--subset", type=cli._positive_int, default=None,
                   help="first N MNIST test images for rotations and FGSM (default 1000)")
    p.add_argument("--ood-subset", type=cli._positive_int, default=None,
                   help="first M images of each test set for calibration and OOD (default 10000)")
    p.add_argument("--fgsm-space", choices=U.FGSM_SPACES, default="pixel",
                   help="pixel: eps on [0, 1] pixels, clipped; normalised: eps on the model's inputs, no clipping")
    p.add_argument("--quick", action="store_true",
                   help="tiny subsets (40 / 100 images) and at most 4 draws: the same code paths in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="data root (default: $FBNN_DATA or ../shared/data)")
    p.add_argument("--runs-dir", default="runs", help="where the checkpoints are (see above)")
    p.add_argument("--out", default="results", help="output folder (uncertainty.json, .md, figures/)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite uncertainty.md and the figures from OUT/uncertainty.json; compute nothing")
    return p


def _settings(args, argv) -> dict:
    quick = args.quick
    space_doc = ("[0, 1] pixel space before the model's normalisation, clipped to [0, 1]" if args.fgsm_space == "pixel"
                 else "normalised input space ((pixel - 0.1307) / 0.3081), not clipped")
    return {"subset": args.subset or (40 if quick else 1000),
            "ood_subset": args.ood_subset or (100 if quick else 10000),
            "n_samples": args.n_samples or (4 if quick else 100), "angles": list(U.SEED_ANGLES),
            "epsilons": list(U.FGSM_EPSILONS), "fgsm_space": args.fgsm_space, "fgsm_space_doc": space_doc,
            "fgsm_target": FGSM_TARGET, "rotation": ROTATION, "seed": args.seed, "quick": quick,
            "command": "python -m experiments.uncertainty " + " ".join(argv), "commit": cli.git_commit()}


def _previous(path: Path, settings: dict) -> dict:
    """Earlier model entries computed with the same settings (else none)."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    same = all(old.get("settings", {}).get(k) == settings[k] for k in COMPARABLE)
    return old.get("models", {}) if same else {}


def run(args, argv) -> dict:
    names = parse_models(args.models)
    settings = _settings(args, argv)
    inputs = load_inputs(args.data_dir, settings["subset"], settings["ood_subset"])
    out_dir = Path(args.out)
    json_path = out_dir / "uncertainty.json"
    res = {"settings": settings, "models": _previous(json_path, settings), "skipped": {}}
    runs_dir = Path(args.runs_dir)
    for name in names:
        key = fr.fold_in(fr.key(args.seed), MODELS.index(name))
        try:
            loaded = load_model(name, runs_dir, settings["n_samples"], key)
        except Skip as why:
            res["skipped"][name] = str(why)
            res["models"].pop(name, None)
            print(f"uncertainty: {name}: skipped: {why}", flush=True)
            continue
        print(f"uncertainty: {name}: {loaded.note} from {loaded.source}", flush=True)
        res["models"][name] = evaluate_model(loaded, inputs, settings["angles"], settings["epsilons"],
                                             settings["fgsm_space"])
        del loaded
        m = res["models"][name]
        print(f"uncertainty: {name}: {m['wall_s']['total']:.0f} s; AUROC KMNIST total "
              f"{m['ood']['kmnist']['auroc_total']:.3f} / MI {m['ood']['kmnist']['auroc_epistemic']:.3f}", flush=True)
        m["command"] = settings["command"]
        save_results(res, json_path, out_dir)   # after every model: a long run's results survive a stop
    if not res["models"]:
        raise ValueError("no model could be evaluated: " + "; ".join(f"{n}: {w}" for n, w in res["skipped"].items()))
    save_results(res, json_path, out_dir)
    write_figures(res, out_dir / "figures")
    return res


def save_results(res: dict, json_path: Path, out_dir: Path) -> None:
    """``uncertainty.json`` and ``uncertainty.md``, each written atomically."""
    cli.write_json_atomic(json_path, res)
    cli.write_text_atomic(out_dir / "uncertainty.md", markdown(res))


def report_only(out_dir: Path) -> dict:
    path = out_dir / "uncertainty.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run without --report-only first")
    res = json.loads(path.read_text())
    cli.write_text_atomic(out_dir / "uncertainty.md", markdown(res))
    write_figures(res, out_dir / "figures")
    return res


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.report_only:
            report_only(Path(args.out))
        else:
            run(args, argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"uncertainty: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
