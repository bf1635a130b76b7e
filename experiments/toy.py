"""1-D toy regression on GP data (SPEC §5.1, §5.3): one figure per method, plus the exact GP.

    python -m experiments.toy                         # all methods -> results/figures/toy_*.png
    python -m experiments.toy --methods ensemble sghmc --quick --out /tmp/toy

Data: ``fbnn.data.gp_toy_data`` (seed 2, 250 training points on x ≈ [-1.9, 1.9]), homoscedastic
(noise std 0.3) and heteroscedastic (0.3 |x + 2|). Every method uses a 50-unit ReLU net with a
heteroscedastic [mu, log sigma] head (evidential: a Normal-Inverse-Gamma head), trained full
batch (``fbnn.regression.toy_bands``). Each figure shows the data, the predictive mean, the
aleatoric band (mean ± 2 aleatoric std) and the total band (mean ± 2 sqrt(aleatoric² +
epistemic²)), with the exact GP posterior mean dashed; ``toy_gp.png`` is the exact GP
posterior with the true noise, heteroscedastic noise 0.09 (x + 2)² at the training points
(the seed's (x − 2)² sign bug fixed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fbnn import random as fr
from fbnn import regression as reg
from fbnn.data import gp_posterior, gp_toy_data, toy_noise_std
from fbnn.data.toy import TOY_KINDS

RESULTS = Path(__file__).resolve().parents[1] / "results"
GRID = (-5.0, 5.0, 200)
TITLES = {"homo": "homoscedastic", "hetero": "heteroscedastic"}


def exact_gp(kind: str, data, grid: torch.Tensor):
    """``(mean, aleatoric std, epistemic std)`` of the exact GP posterior on ``grid (m, 1)``."""
    noise_train = toy_noise_std(data.x_train[:, 0].numpy(), kind) ** 2
    noise_grid = toy_noise_std(grid[:, 0].numpy(), kind)
    post = gp_posterior(data.x_train, data.y_train, grid, noise_train)
    return post.mean, torch.from_numpy(noise_grid).float(), post.var_f.sqrt()


def plot_panel(ax, data, grid, bands, gp_mean=None, title=""):
    mean, aleatoric, epistemic = (b.detach().numpy() for b in bands)
    g = grid[:, 0].numpy()
    total = (aleatoric ** 2 + epistemic ** 2) ** 0.5
    ax.fill_between(g, mean - 2 * total, mean + 2 * total, color="tab:blue", alpha=0.25,
                    label="total ±2σ")
    ax.fill_between(g, mean - 2 * aleatoric, mean + 2 * aleatoric, color="tab:orange", alpha=0.35,
                    label="aleatoric ±2σ")
    ax.scatter(data.x_train[:, 0], data.y_train, s=5, color="black", label="training data")
    ax.plot(g, mean, color="tab:blue", lw=1.5, label="predictive mean")
    if gp_mean is not None:
        ax.plot(g, gp_mean.numpy(), color="tab:green", lw=1.0, ls="--", label="exact GP mean")
    ax.set(xlim=(-5, 5), ylim=(-5, 7), xlabel="x", ylabel="y", title=title)
    ax.legend(loc="upper left", fontsize=7)


def save_figure(path: Path, panels: list, suptitle: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        plot_panel(ax, **panel)
    fig.suptitle(suptitle)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=reg.TOY_METHODS, default=list(reg.TOY_METHODS))
    p.add_argument("--kinds", nargs="+", choices=TOY_KINDS, default=list(TOY_KINDS))
    p.add_argument("--quick", action="store_true", help="5 %% of the steps (same code paths)")
    p.add_argument("--data-dir", default=None, help="unused: the toy data are generated")
    p.add_argument("--out", default=str(RESULTS), help="figures go to <out>/figures/toy_*.png")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out) / "figures"
    grid = torch.linspace(*GRID)[:, None]
    data = {kind: gp_toy_data(kind) for kind in args.kinds}
    gps = {kind: exact_gp(kind, data[kind], grid) for kind in args.kinds}
    save_figure(out / "toy_gp.png", [dict(data=data[k], grid=grid, bands=gps[k], title=f"exact GP, {TITLES[k]}")
                                     for k in args.kinds], "exact GP posterior (RBF, true noise)")
    timings = {}
    for i, method in enumerate(args.methods):
        panels = []
        for j, kind in enumerate(args.kinds):
            t0 = time.perf_counter()
            key = fr.fold_in(fr.fold_in(fr.key(args.seed), i), j)
            bands = reg.toy_bands(method, data[kind].x_train, data[kind].y_train, grid, key, quick=args.quick)
            timings[f"{method}/{kind}"] = round(time.perf_counter() - t0, 1)
            panels.append(dict(data=data[kind], grid=grid, bands=bands, gp_mean=gps[kind][0],
                               title=f"{method}, {TITLES[kind]}"))
            print(f"toy {method} {kind}: {timings[f'{method}/{kind}']} s", flush=True)
        save_figure(out / f"toy_{method}.png", panels, f"{method} on GP toy data")
    print(json.dumps({"wall_s": timings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
