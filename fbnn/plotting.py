"""Figures of the uncertainty experiments (SPEC 4), drawn from their JSON-ready results.

Every function takes plain dicts/lists (what ``experiments/uncertainty.py`` writes to
``uncertainty.json``) and a path, writes one PNG and returns the path. matplotlib is
imported inside the functions and drawn with its Agg canvas (no pyplot, no display,
no global backend change).
"""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["rotation_figure", "rotation_comparison_figure", "ood_ecdf_figure", "fgsm_figure",
           "reliability_figure", "weights_figure", "LN10"]

LN10 = math.log(10.0)
ENTROPY_COLOURS = {"total": "tab:blue", "aleatoric": "tab:green", "epistemic": "tab:red"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _colours(names):
    from matplotlib import colormaps
    cmap = colormaps["tab10"] if len(names) <= 10 else colormaps["tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _grid(n: int, cols: int = 4):
    cols = min(cols, n)
    return math.ceil(n / cols), cols


def _band(ax, x, mean, std, colour, label, lo=None, hi=None):
    import numpy as np
    mean, std = np.asarray(mean), np.asarray(std)
    ax.plot(x, mean, color=colour, marker="o", ms=3, label=label)
    low, high = mean - std, mean + std
    if lo is not None:
        low = np.maximum(low, lo)
    if hi is not None:
        high = np.minimum(high, hi)
    ax.fill_between(x, low, high, color=colour, alpha=0.15, lw=0)


def rotation_figure(name: str, rot: dict, path, subtitle: str = "") -> Path:
    """One model: left, mean +- std of the predictive probability of the true class
    against the rotation angle; right, mean +- std of total, aleatoric and epistemic
    entropy (nats). ``rot``: ``angles`` and ``{true_prob, total, aleatoric, epistemic,
    error}_{mean,std}`` lists (``error`` is a plain list)."""
    fig = _figure(10, 3.8)
    ax_p, ax_h = fig.subplots(1, 2)
    x = rot["angles"]
    _band(ax_p, x, rot["true_prob_mean"], rot["true_prob_std"], "black", "p(true class | x)", 0, 1)
    ax_p.plot(x, rot["error"], color="tab:purple", ls="--", label="error rate")
    ax_p.set(xlabel="rotation angle (degrees)", ylabel="probability / error rate", ylim=(0, 1.02),
             title="true-class probability (mean ± std)")
    ax_p.legend(loc="upper right", fontsize=8)
    for part, colour in ENTROPY_COLOURS.items():
        _band(ax_h, x, rot[f"{part}_mean"], rot[f"{part}_std"], colour, part, 0, None)
    ax_h.axhline(LN10, color="grey", lw=0.8, ls=":", label="ln 10 (uniform)")
    ax_h.set(xlabel="rotation angle (degrees)", ylabel="entropy (nats)", ylim=(0, 2.4),
             title="predictive entropy (mean ± std)")
    ax_h.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{name}: rotated MNIST test digits{subtitle}")
    return _save(fig, path)


def rotation_comparison_figure(results: dict, path, subtitle: str = "") -> Path:
    """All models: mean epistemic and total entropy, and error rate, against angle.
    ``results``: ``{model: rot}`` as in ``rotation_figure``."""
    fig = _figure(15, 4.2)
    axes = fig.subplots(1, 3)
    colours = _colours(list(results))
    for name, rot in results.items():
        axes[0].plot(rot["angles"], rot["epistemic_mean"], marker="o", ms=3, color=colours[name], label=name)
        axes[1].plot(rot["angles"], rot["total_mean"], marker="o", ms=3, color=colours[name], label=name)
        axes[2].plot(rot["angles"], rot["error"], marker="o", ms=3, color=colours[name], label=name)
    axes[0].set(xlabel="rotation angle (degrees)", ylabel="mean epistemic entropy (nats)",
                title="epistemic (mutual information)")
    axes[1].set(xlabel="rotation angle (degrees)", ylabel="mean total entropy (nats)", ylim=(0, LN10),
                title="total predictive entropy")
    axes[2].set(xlabel="rotation angle (degrees)", ylabel="error rate", ylim=(0, 1), title="error rate")
    axes[0].set_ylim(bottom=0)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Rotated MNIST digits, all models{subtitle}")
    return _save(fig, path)


def ood_ecdf_figure(results: dict, ood_name: str, path, subtitle: str = "") -> Path:
    """Complementary ECDFs ``P(H > h)`` of total (left) and epistemic (right) entropy over
    ``[0, ln 10]``: the OOD set solid, MNIST test dotted, one colour per model.
    ``results``: ``{model: {"grid", "mnist_total", "mnist_epistemic", "<ood>_total",
    "<ood>_epistemic", "auroc_total", "auroc_epistemic"}}``."""
    fig = _figure(12, 4.6)
    axes = fig.subplots(1, 2)
    colours = _colours(list(results))
    for name, r in results.items():
        for ax, part in zip(axes, ("total", "epistemic")):
            auc = r.get(f"auroc_{part}")
            label = f"{name} (AUROC {auc:.3f})" if auc is not None else name
            ax.plot(r["grid"], r[f"{ood_name}_{part}"], color=colours[name], label=label)
            ax.plot(r["grid"], r[f"mnist_{part}"], color=colours[name], ls=":", lw=1)
    for ax, part in zip(axes, ("total", "epistemic")):
        ax.set(xlabel=f"{part} entropy h (nats)", ylabel="fraction of inputs with entropy > h",
               xlim=(0, LN10), ylim=(0, 1.02),
               title=f"{part}: {ood_name} (solid) vs MNIST test (dotted)")
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Complementary ECDF of predictive entropy, MNIST-trained models on {ood_name}{subtitle}")
    return _save(fig, path)


def fgsm_figure(results: dict, path, subtitle: str = "") -> Path:
    """All models against FGSM step size: error rate, mean ``1 - p(true class)``, mean total
    and mean epistemic entropy. ``results``: ``{model: {"epsilons", "error",
    "true_prob_mean", "total_mean", "epistemic_mean", ...}}``."""
    fig = _figure(16, 4.2)
    axes = fig.subplots(1, 4)
    colours = _colours(list(results))
    for name, r in results.items():
        eps = r["epsilons"]
        axes[0].plot(eps, r["error"], marker="o", ms=3, color=colours[name], label=name)
        axes[1].plot(eps, [1 - p for p in r["true_prob_mean"]], marker="o", ms=3, color=colours[name])
        axes[2].plot(eps, r["total_mean"], marker="o", ms=3, color=colours[name])
        axes[3].plot(eps, r["epistemic_mean"], marker="o", ms=3, color=colours[name])
    axes[0].set(ylabel="error rate", ylim=(0, 1.02), title="error rate")
    axes[1].set(ylabel="mean 1 - p(true class | x')", ylim=(0, 1.02), title="1 - true-class probability")
    axes[2].set(ylabel="mean total entropy (nats)", ylim=(0, LN10), title="total entropy")
    axes[3].set(ylabel="mean epistemic entropy (nats)", title="epistemic entropy")
    axes[3].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("FGSM step size ε")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"FGSM on MNIST test digits{subtitle}")
    return _save(fig, path)


def reliability_figure(results: dict, path, subtitle: str = "") -> Path:
    """One panel per model: accuracy per confidence bin (bars, with the number of images
    above each) and the bin's mean confidence (red ticks) against the diagonal, the ECE in
    the title. ``results``: ``{model: {"bins": reliability_bins dict, "ece"}}``."""
    import numpy as np
    rows, cols = _grid(len(results))
    fig = _figure(3.6 * cols, 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, r) in zip(axes, results.items()):
        b = r["bins"]
        lo, hi = np.asarray(b["bin_lower"]), np.asarray(b["bin_upper"])
        acc, conf, count = (np.asarray(b[k], dtype=float) for k in ("accuracy", "confidence", "count"))
        f = count > 0
        ax.bar(lo[f], acc[f], width=(hi - lo)[f], align="edge", color="tab:blue", alpha=0.7,
               edgecolor="black", lw=0.5, label="accuracy")
        ax.hlines(conf[f], lo[f], hi[f], colors="tab:red", lw=2, label="mean confidence")
        for x, y, c in zip((lo[f] + hi[f]) / 2, acc[f], count[f]):
            ax.text(x, y + 0.01, f"{int(c)}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.15), xlabel="confidence (max predictive probability)",
               ylabel="accuracy", title=f"{name}: ECE {r['ece']:.4f}")
        ax.legend(fontsize=7, loc="center left")
    for ax in axes[len(results):]:
        ax.axis("off")
    fig.suptitle(f"Reliability diagrams, MNIST test digits, 15 bins (numbers: images per bin){subtitle}")
    return _save(fig, path)


def weights_figure(results: dict, path, subtitle: str = "") -> Path:
    """One panel per model: density histogram of the weight-matrix entries (biases
    excluded) over the histogram's range. ``results``: ``{model: weight_histogram dict +
    "draws"}``."""
    import numpy as np
    rows, cols = _grid(len(results))
    fig = _figure(3.6 * cols, 3.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, h) in zip(axes, results.items()):
        edges = np.asarray(h["edges"])
        ax.stairs(h["density"], edges, fill=True, color="tab:blue", alpha=0.6)
        ax.set(xlim=(edges[0], edges[-1]), xlabel="weight value", ylabel="density",
               title=f"{name}: {h['draws']} draw(s), std {h['std']:.3f}")
        ax.text(0.02, 0.95, f"{100 * h['fraction_inside']:.1f}% inside ±{edges[-1]:g}\n"
                            f"{h['n']:,} values", transform=ax.transAxes, va="top", fontsize=7)
    for ax in axes[len(results):]:
        ax.axis("off")
    fig.suptitle(f"Weight distributions (all weight matrices){subtitle}")
    return _save(fig, path)
