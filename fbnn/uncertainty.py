"""Uncertainty experiments on image classifiers (SPEC 4): rotations, FGSM, OOD, calibration.

Pure functions over tensors. A ``Posterior`` bundles what every experiment needs: the
model, ``S`` parameter draws (a ``Samples`` with leading axis ``S``), the per-draw key of
a keyed model (MC dropout masks) and whether the outputs are ``log alpha`` of a
Dirichlet (evidential nets). ``outputs`` gives the raw ``(S, B, K)`` outputs once per
input set; everything else (predictive probabilities, entropies, AUROC, ECDFs,
reliability bins) is computed from them.

Inputs are the models' inputs: MNIST-like images normalised as SPEC 1.1,
``x = (pixel - MNIST_MEAN) / MNIST_STD`` with ``pixel`` in [0, 1], flattened ``(B, 784)``
or ``(B, 1, 28, 28)``.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from . import metrics, tree
from . import random as fr
from .data.idx import MNIST_MEAN, MNIST_STD
from .methods.base import Samples
from .predict import predict

__all__ = [
    "Posterior", "BLACK", "SEED_ANGLES", "FGSM_EPSILONS", "FGSM_SPACES",
    "rotate", "rotations", "outputs", "sample_probs", "predictive_probs", "entropies",
    "true_class_probs", "predictive_nll_grad", "fgsm", "fgsm_sweep", "ood_auroc",
    "ecdf", "complementary_ecdf", "reliability_bins", "mean_std", "weight_values",
    "weight_histogram",
]

#: A black pixel in the normalised space: ``(0 - MNIST_MEAN) / MNIST_STD``.
BLACK = (0.0 - MNIST_MEAN) / MNIST_STD
#: The seed's rotation angles (degrees): ``np.linspace(0, 179, 16).astype(int)`` (SPEC 4.2).
SEED_ANGLES = (0, 11, 23, 35, 47, 59, 71, 83, 95, 107, 119, 131, 143, 155, 167, 179)
#: FGSM step sizes 0, 0.05, ..., 0.70 (SPEC 4.4).
FGSM_EPSILONS = tuple(round(0.05 * i, 2) for i in range(15))
FGSM_SPACES = ("pixel", "normalised")


class Posterior(NamedTuple):
    """``S`` parameter draws of ``model`` and how to run them.

    ``samples``: params (and model state) with leading axis ``S``; ``key``: per-draw keys
    come from ``split(key, S)`` (a keyed model such as MC dropout), ``None`` runs every
    draw deterministically; ``dirichlet``: the outputs are ``log alpha (B, K)`` of a
    Dirichlet over class probabilities (evidential nets), else logits."""
    model: Any
    samples: Samples
    key: torch.Tensor | None = None
    dirichlet: bool = False

    @property
    def n_samples(self) -> int:
        return tree.leaves(self.samples.params)[0].shape[0]


# --- input transformations ----------------------------------------------------------------

def _as_images(x: torch.Tensor, side: int) -> tuple[torch.Tensor, tuple]:
    """``(B, side * side)`` or ``(B, 1, side, side)`` -> ``((B, 1, side, side), original shape)``."""
    return x.reshape(x.shape[0], 1, side, side), tuple(x.shape)


def rotate(x: torch.Tensor, angle: float, fill: float = BLACK, side: int = 28) -> torch.Tensor:
    """Images rotated counter-clockwise (as displayed, row 0 on top) by ``angle`` degrees
    about their centre, bilinear interpolation, ``fill`` outside the source image.

    ``x``: ``(B, side * side)`` or ``(B, 1, side, side)``; returns the same shape.
    The seed rotated with ``scipy.ndimage.rotate`` (cubic spline, SPEC 4.2); a multiple
    of 90 degrees moves pixel centres onto pixel centres, so it equals ``torch.rot90``."""
    img, shape = _as_images(x, side)
    a = math.radians(float(angle))
    cos, sin = math.cos(a), math.sin(a)
    # affine_grid maps output coordinates (x right, y down, in [-1, 1]) to the input
    # coordinates sampled there; a counter-clockwise turn on screen samples R(-a) p.
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=img.dtype)
    grid = F.affine_grid(theta.expand(img.shape[0], 2, 3), list(img.shape), align_corners=False)
    out = F.grid_sample(img - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out.reshape(shape)


def rotations(x: torch.Tensor, angles, fill: float = BLACK, side: int = 28) -> torch.Tensor:
    """``x (B, ...)`` rotated by each angle: ``(A, B, ...)``."""
    return torch.stack([rotate(x, a, fill, side) for a in angles])


# --- predictions ----------------------------------------------------------------------------

def outputs(post: Posterior, x: torch.Tensor, **kw) -> torch.Tensor:
    """Raw outputs of every draw on every input, ``(S, B, K)`` (logits, or ``log alpha``).
    ``kw`` goes to ``fbnn.predict.predict`` (memory budget, chunks)."""
    return predict(post.model, post.samples, x, key=post.key, **kw)


def sample_probs(out: torch.Tensor) -> torch.Tensor:
    """Per-draw class probabilities ``(S, B, K)`` from outputs ``(S, B, K)``: softmax of
    logits, or the Dirichlet mean ``alpha / sum(alpha)`` (= softmax of ``log alpha``)."""
    return torch.softmax(out.double(), -1)


def predictive_probs(out: torch.Tensor) -> torch.Tensor:
    """The posterior predictive ``(B, K)``: per-draw probabilities averaged over ``S``."""
    return sample_probs(out).mean(0)


def entropies(out: torch.Tensor, dirichlet: bool = False) -> dict[str, torch.Tensor]:
    """``{"total", "aleatoric", "epistemic"}``, each ``(B,)`` float64 nats, from outputs ``(S, B, K)``.

    Samples (SPEC 4.1, without the seed's 1e-5 offset): total ``H[mean_s p_s]``, aleatoric
    ``mean_s H[p_s]``, epistemic their difference (the mutual information; exactly 0 for
    ``S = 1``). Dirichlet (``dirichlet=True``, one draw): the closed form of
    ``Dir(alpha)``: total ``H[alpha / S]``, aleatoric ``E_Dir H[p]``, epistemic the mutual
    information between the label and ``p``."""
    if dirichlet:
        if out.shape[0] != 1:
            raise ValueError(f"entropies: a Dirichlet posterior has one draw, got {out.shape[0]}")
        from .methods.evidential import dirichlet_entropy_decomposition
        total, aleatoric, epistemic = dirichlet_entropy_decomposition(out[0].double().exp())
    else:
        total, aleatoric, epistemic = metrics.entropy_decomposition(sample_probs(out))
    return {"total": total, "aleatoric": aleatoric, "epistemic": epistemic}


def true_class_probs(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p(y_i | x_i)`` of predictive probabilities ``(..., B, K)`` at labels ``(B,)``: ``(..., B)``."""
    index = y.expand(*probs.shape[:-1]).unsqueeze(-1)
    return probs.gather(-1, index).squeeze(-1)


# --- FGSM ---------------------------------------------------------------------------------

def predictive_nll_grad(post: Posterior, x: torch.Tensor, y: torch.Tensor, chunk: int = 100) -> torch.Tensor:
    """Gradient w.r.t. the (normalised) inputs of ``-sum_i log pbar(y_i | x_i)``,
    ``pbar = (1/S) sum_s p_s`` the MC-averaged predictive of the draws: ``(B, ...)``
    like ``x``. Exact in chunks of ``chunk`` inputs (the loss is a sum over inputs).
    Keyed draws use the same masks as ``outputs`` would for each chunk's inputs."""
    params, model_state = post.samples
    n = post.n_samples
    keys = fr.split(post.key, n) if post.key is not None else None

    def log_probs(p, ms, k, xb):
        return F.log_softmax(post.model.apply(p, xb, key=k, state=ms), -1)

    batched = vmap(log_probs, in_dims=(0, 0, None if keys is None else 0, None))

    def loss(xb, yb):
        log_pbar = torch.logsumexp(batched(params, model_state, keys, xb), 0) - math.log(n)  # (B, K)
        return -log_pbar.gather(1, yb.unsqueeze(1)).sum()

    g = grad(loss)
    return torch.cat([g(x[i:i + chunk], y[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


def fgsm(x: torch.Tensor, grad_x: torch.Tensor, eps: float, space: str = "pixel",
         mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """One untargeted FGSM step ``x' = x + eps sign(grad)``, returned in the normalised space.

    ``x``: normalised inputs ``(B, ...)``; ``grad_x``: the loss gradient w.r.t. ``x``, same
    shape. ``space="pixel"``: the step is taken on the [0, 1] pixels ``x * std + mean``
    and the result clipped to [0, 1] (the sign of the gradient is the same in both spaces
    since ``std > 0``); ``space="normalised"``: the step is taken on ``x`` itself, no
    clipping (what the seed most plausibly did, SPEC 4.4)."""
    if space not in FGSM_SPACES:
        raise ValueError(f"fgsm: unknown space {space!r}; choose one of {FGSM_SPACES}")
    if not eps >= 0:
        raise ValueError(f"fgsm: eps must be >= 0, got {eps}")
    step = eps * grad_x.sign()
    if space == "normalised":
        return x + step
    pixels = (x * std + mean + step).clamp(0.0, 1.0)
    return (pixels - mean) / std


def fgsm_sweep(x: torch.Tensor, grad_x: torch.Tensor, epsilons, space: str = "pixel") -> torch.Tensor:
    """``fgsm`` at each step size: ``(E, B, ...)``. One gradient serves every ``eps``."""
    return torch.stack([fgsm(x, grad_x, e, space) for e in epsilons])


# --- out-of-distribution and calibration ------------------------------------------------------

def ood_auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """AUROC of telling OOD inputs (``scores_out (M,)``, positives) from in-distribution
    ones (``scores_in (N,)``) by a score that is higher for OOD (an entropy): 0.5 for
    identical distributions, 1 when every OOD score exceeds every in-distribution one."""
    return metrics.auroc(scores_in, scores_out)


def ecdf(values: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Empirical CDF of ``values (N,)`` evaluated at ``at (M,)``: ``#{values <= t} / N``, ``(M,)`` float64."""
    v = torch.sort(values.detach().double().flatten()).values
    if v.numel() == 0:
        raise ValueError("ecdf: no values")
    return torch.searchsorted(v, at.double(), right=True).double() / v.numel()


def complementary_ecdf(values: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``1 - ecdf``: the fraction of ``values (N,)`` strictly above each of ``at (M,)``, ``(M,)``."""
    return 1.0 - ecdf(values, at)


def reliability_bins(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> dict[str, list]:
    """Reliability-diagram bins of predictive probabilities ``(B, K)`` and labels ``(B,)``:
    ``n_bins`` equal-width confidence bins ``(lo, hi]`` (confidence = max probability),
    per bin the lower/upper edge, mean confidence, accuracy (NaN when empty) and count,
    as lists (JSON-ready)."""
    bins = metrics.reliability_diagram(probs, y, n_bins)
    return {k: v.tolist() for k, v in bins.items()}


def mean_std(values: torch.Tensor) -> tuple[list, list]:
    """Mean and population std over the last axis: ``(..., B) -> (lists (...), (...))``."""
    v = values.double()
    return v.mean(-1).tolist(), v.std(-1, correction=0).tolist()


# --- weights ---------------------------------------------------------------------------------

def weight_values(params: dict, n_draws: int | None = None, include_bias: bool = False) -> torch.Tensor:
    """All weight-matrix entries (biases excluded by default) of the first ``n_draws`` draws
    of ``params`` (leaves with leading axis ``S``), flattened: ``(n_draws * P,)``.
    Weights are the leaves with at least two dimensions per draw."""
    parts = []
    for leaf in params.values():
        if leaf.dim() - 1 >= 2 or (include_bias and leaf.dim() == 2):
            parts.append(leaf[:n_draws].detach().reshape(-1).float())
    if not parts:
        raise ValueError("weight_values: no weight matrices in params")
    return torch.cat(parts)


def weight_histogram(values: torch.Tensor, bins: int = 200, limit: float = 0.5) -> dict[str, list]:
    """Density histogram of ``values (N,)`` over ``[-limit, limit]``: ``{"edges" (bins + 1,),
    "density" (bins,), "fraction_inside"}``; the density integrates to the fraction of
    values inside the range (values outside are not folded in)."""
    v = values.float()
    counts = torch.histc(v, bins=bins, min=-limit, max=limit).double()
    width = 2 * limit / bins
    n = v.numel()
    edges = torch.linspace(-limit, limit, bins + 1, dtype=torch.float64)
    return {"edges": edges.tolist(), "density": (counts / (n * width)).tolist(),
            "fraction_inside": float(counts.sum() / n), "std": float(v.double().std()), "n": n}
