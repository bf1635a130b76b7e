"""Bayes by Backprop training step: fbnn against torchbnn and bayesian-torch, side by side.

    # the peers live in their own virtualenv, never in fbnn's:
    python -m venv /work/venvs/bnnpeers
    /work/venvs/bnnpeers/bin/pip install torch==2.13.0 torchbnn bayesian-torch tqdm numpy  # tqdm, numpy: fbnn imports them
    /work/venvs/bnnpeers/bin/pip install --no-deps -e .
    OMP_NUM_THREADS=1 /work/venvs/bnnpeers/bin/python -m experiments.benchmarks.bbp [--repeats 9] [--json PATH]

Under an interpreter without the peers the script times fbnn alone and says so.

The problem: the seed's 784-1200-1200-10 MLP, batch 100, M = 600 minibatches per epoch,
S = 3 weight samples per step (weight sampling, one draw per sample shared by the batch),
Gaussian prior N(0, 0.1^2), plain SGD lr 1e-3, loss (1/S) sum_s [sum_b CE + KL_s / M].
- fbnn ``mc``: ``vi.bbp(..., kl="mc")``, the seed's Monte Carlo KL log q(w_s) - log p(w_s)
  (the ``bbp_gaussian`` row's estimator); fbnn ``closed``: the closed-form KL, as the peers.
  The S samples go through one ``vmap``.
- torchbnn ``BayesLinear(0, 0.1, ...)``: sigma = exp(log_sigma); S forward passes (each draws
  its weights), closed-form KL once per step by ``BKLLoss(reduction="sum")``.
- bayesian-torch ``LinearReparameterization(prior_variance=0.1)`` (the argument is used as a
  standard deviation): sigma = log1p(exp(rho)); one weight draw per forward, so S samples
  are S forward passes; each forward also returns a closed-form KL, which bayesian-torch
  averages over the elements of each tensor (``kl.mean()``), not sums -- a different
  objective at the same cost.
Each repeat times one step of every library in turn (interleaved) from its own state;
medians of CPU time (this process) and wall time; ratios peer / fbnn (above 1: fbnn faster).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fbnn import cli, likelihoods, models, optim, priors
from fbnn import random as fr
from fbnn.methods import Batch, vi

ARCH = [784, 1200, 1200, 10]
BATCH, N_BATCHES, S, PRIOR_SIGMA, LR = 100, 600, 3, 0.1, 1e-3


def fbnn_step(kl: str):
    """A no-argument step closure of fbnn's BBP (the state is carried along)."""
    model = models.mlp(ARCH)
    method = vi.bbp(model, likelihoods.categorical(), optim.sgd(LR), priors.normal(PRIOR_SIGMA), N_BATCHES,
                    n_samples=S, kl=kl, mean_scale=0.2, rho_init=(-3.0, -2.0))
    box = {"state": method.init(fr.key(0), model.init(fr.key(0))), "i": 0}

    def step(x, y):
        box["i"] += 1
        box["state"], _ = method.step(box["state"], Batch(x, y), fr.key(box["i"]))
    return step


def _torch_step(model, kl_fn, forward):
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step(x, y):
        opt.zero_grad()
        loss = 0.0
        for _ in range(S):
            out, kl = forward(model, x)
            loss = loss + F.cross_entropy(out, y, reduction="sum") + (kl if kl is not None else 0.0) / N_BATCHES
        if kl_fn is not None:
            loss = loss + S * kl_fn(model) / N_BATCHES
        (loss / S).backward()
        opt.step()
    return step


def torchbnn_step():
    import torchbnn as bnn
    layers = []
    for i, (a, b) in enumerate(zip(ARCH[:-1], ARCH[1:])):
        layers.append(bnn.BayesLinear(prior_mu=0.0, prior_sigma=PRIOR_SIGMA, in_features=a, out_features=b))
        if i < len(ARCH) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    kl = bnn.BKLLoss(reduction="sum", last_layer_only=False)
    return _torch_step(model, kl, lambda m, x: (m(x), None))


def bayesian_torch_step():
    from bayesian_torch.layers import LinearReparameterization

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fcs = nn.ModuleList(LinearReparameterization(a, b, prior_mean=0.0, prior_variance=PRIOR_SIGMA,
                                                              posterior_rho_init=-3.0)
                                     for a, b in zip(ARCH[:-1], ARCH[1:]))

        def forward(self, x):
            kl = 0.0
            for i, fc in enumerate(self.fcs):
                x, k = fc(x)
                kl = kl + k
                if i < len(self.fcs) - 1:
                    x = F.relu(x)
            return x, kl

    return _torch_step(Net(), None, lambda m, x: m(x))


def contestants() -> tuple[dict, list]:
    steps = {"fbnn (kl=mc)": fbnn_step("mc"), "fbnn (kl=closed)": fbnn_step("closed")}
    notes = []
    for name, make in (("torchbnn", torchbnn_step), ("bayesian-torch", bayesian_torch_step)):
        try:
            steps[name] = make()
        except ImportError as err:
            notes.append(f"{name} not importable here ({err}); timing without it")
    return steps, notes


def run(steps: dict, repeats: int) -> dict:
    x = fr.normal(fr.key(1), (BATCH, ARCH[0]))
    y = fr.randint(fr.key(2), ARCH[-1], (BATCH,))
    torch.manual_seed(0)  # the peers draw from torch's global generator
    times = {k: {"cpu": [], "wall": []} for k in steps}
    for step in steps.values():
        step(x, y)  # warm-up
    for _ in range(repeats):
        for k, step in steps.items():
            c0, w0 = time.process_time(), time.perf_counter()
            step(x, y)
            times[k]["cpu"].append(time.process_time() - c0)
            times[k]["wall"].append(time.perf_counter() - w0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    steps, notes = contestants()
    times = run(steps, args.repeats)
    med = {k: {c: statistics.median(v[c]) for c in ("cpu", "wall")} for k, v in times.items()}
    ref = med["fbnn (kl=mc)"]
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    from importlib.metadata import PackageNotFoundError, version
    for mod in ("torchbnn", "bayesian-torch"):
        try:
            versions[mod] = version(mod)
        except PackageNotFoundError:
            versions[mod] = "not installed"
    print(f"BBP step, MLP {ARCH}, batch {BATCH}, S = {S}, prior N(0, {PRIOR_SIGMA}^2), SGD lr {LR}; "
          f"{torch.get_num_threads()} thread(s), {args.repeats} interleaved repeats; {versions}")
    for n in notes:
        print("note:", n)
    print(f"{'library':18s} {'cpu ms/step':>12s} {'/ fbnn(mc)':>11s} {'wall ms/step':>13s} {'/ fbnn(mc)':>11s}")
    for k, m in med.items():
        print(f"{k:18s} {1e3 * m['cpu']:12.1f} {m['cpu'] / ref['cpu']:11.2f} {1e3 * m['wall']:13.1f} "
              f"{m['wall'] / ref['wall']:11.2f}")
    if args.json:
        cli.write_json_atomic(args.json, {"medians_s": med, "times_s": times, "versions": versions, "notes": notes,
                                          "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
