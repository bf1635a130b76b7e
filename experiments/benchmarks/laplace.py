"""Laplace approximations: fbnn against laplace-torch, in one process, same weights and data.

    nice -n 10 /work/venvs/laplace/bin/python -m experiments.benchmarks.laplace [--n-fit 10000] [--repeats 3]

laplace-torch is installed only in its own virtualenv (``/work/venvs/laplace``, with fbnn
installed there ``--no-deps`` in editable mode); under an interpreter without it the script
times fbnn alone. Three measurements, each the median of ``--repeats`` interleaved runs:

1. fit time of K-FAC Laplace (exact GGN factors; laplace-torch: ``hessian_structure="kron"``,
   its default Curvlinops backend, type-2 Fisher = exact GGN) on an MLP 784-100-100-10 over
   ``--n-fit`` MNIST training images, minibatches of 128;
2. the same for the diagonal GGN (laplace-torch: default Curvlinops backend and BackPACK);
3. the GLM predictive with the probit approximation for 1,000 test inputs on an MLP
   784-500-500-10 (K-FAC over all weights fitted on ``--n-glm-fit`` images, prior precision 1):
   the first call (including the eigendecomposition of the factors, which both libraries
   compute lazily) and a second call, with the peak memory of the first call.

Memory is the peak resident set size (RSS) of the process during the call minus the RSS just
before it, sampled every millisecond from ``/proc/self/statm`` by a background thread
(torch's CPU allocator is invisible to ``tracemalloc``). The weights are random (PyTorch's
default init): timings and memory do not depend on training. The agreement of the two
libraries' probit predictives is printed as a check that they compute the same thing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import torch

from fbnn import likelihoods, models
from fbnn import random as fr
from fbnn.data import load_mnist_like
from fbnn.methods import laplace as fl

try:
    import laplace as laplace_torch
    from laplace.curvature import BackPackGGN
    HAVE_LAPLACE = True
    LAPLACE_ERROR = ""
except Exception as err:  # noqa: BLE001 - report exactly why it is unavailable
    HAVE_LAPLACE = False
    LAPLACE_ERROR = f"{type(err).__name__}: {err}"

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRss:
    """Peak RSS increase over the ``with`` block, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 1e-3):
        self.interval, self.peak, self.base = interval, 0, 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def increase(self) -> int:
        return self.peak - self.base


def torch_mlp(sizes, params):
    """An ``nn.Sequential`` MLP holding fbnn's params (``fc{i}`` -> module ``2 i``)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for i in range(len(sizes) - 1):
            net[2 * i].weight.copy_(params[f"fc{i}.weight"])
            net[2 * i].bias.copy_(params[f"fc{i}.bias"])
    return net.eval()


def loader(x, y, batch_size=128):
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def fmt_ratio(a, b):
    return f"{a / b:7.2f}" if b else "     -"


def bench_fit(args, x, y, lik):
    sizes = [784, 100, 100, 10]
    model = models.mlp(sizes)
    params = model.init(fr.key(0))
    cases = {"kfac": (fl.kfac_laplace(model, lik), dict(hessian_structure="kron")),
             "diag": (fl.diag_laplace(model, lik), dict(hessian_structure="diag"))}
    rows = []
    for name, (la, lt_kw) in cases.items():
        variants = {"fbnn": lambda la=la: fl.fit_laplace(la, params, (x, y), batch_size=128)}
        if HAVE_LAPLACE:
            net = torch_mlp(sizes, params)

            def lt_fit(kw=lt_kw, backend=None):
                extra = {} if backend is None else {"backend": backend}
                lap = laplace_torch.Laplace(net, "classification", subset_of_weights="all", **kw, **extra)
                lap.fit(loader(x, y))
                return lap
            variants["laplace-torch"] = lt_fit
            if name == "diag":
                variants["laplace-torch (BackPACK)"] = lambda kw=lt_kw: lt_fit(kw, BackPackGGN)
        times = {k: [] for k in variants}
        for k, fn in variants.items():   # warm-up
            fn()
        for _ in range(args.repeats):    # interleaved so every variant sees the same machine load
            for k, fn in variants.items():
                times[k].append(timed(fn)[0])
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in med.items():
            rows.append((f"fit {name} 784-100-100-10, {x.shape[0]} images", k, v, med["fbnn"]))
    return rows


def bench_glm(args, x_fit, y_fit, xq, lik):
    sizes = [784, 500, 500, 10]
    model = models.mlp(sizes)
    params = model.init(fr.key(1))
    la = fl.kfac_laplace(model, lik, prior_precision=1.0)
    state = fl.fit_laplace(la, params, (x_fit, y_fit), batch_size=128)
    rows, probs = [], {}

    def fbnn_first():
        return la.glm_probs(state, xq)          # decomposes the factors inside the call
    with PeakRss() as mem:
        t_first, probs["fbnn"] = timed(fbnn_first)
    decomposed = la.decompose(state)
    t_second = statistics.median(timed(lambda: la.glm_probs(decomposed, xq))[0] for _ in range(args.repeats))
    results = {"fbnn": (t_first, t_second, mem.increase)}
    if HAVE_LAPLACE:
        net = torch_mlp(sizes, params)
        lap = laplace_torch.Laplace(net, "classification", subset_of_weights="all", hessian_structure="kron",
                                    prior_precision=1.0)
        lap.fit(loader(x_fit, y_fit))
        with PeakRss() as mem:
            t_first, probs["laplace-torch"] = timed(lambda: lap(xq, pred_type="glm", link_approx="probit"))
        t_second = statistics.median(timed(lambda: lap(xq, pred_type="glm", link_approx="probit"))[0]
                                     for _ in range(args.repeats))
        results["laplace-torch"] = (t_first, t_second, mem.increase)
    base = results["fbnn"]
    for k, (t1, t2, m) in results.items():
        rows.append((f"GLM probit, 784-500-500-10, {xq.shape[0]} inputs: 1st call", k, t1, base[0]))
        rows.append((f"GLM probit, 784-500-500-10, {xq.shape[0]} inputs: 2nd call", k, t2, base[1]))
    mem_rows = [(k, m) for k, (_, _, m) in results.items()]
    agree = None
    if len(probs) == 2:
        agree = float((probs["fbnn"].double() - probs["laplace-torch"].detach().double()).abs().max())
    return rows, mem_rows, agree


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-fit", type=int, default=10000)
    p.add_argument("--n-glm-fit", type=int, default=2000)
    p.add_argument("--n-glm", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-fit", action="store_true")
    args = p.parse_args(argv)
    x, y = load_mnist_like("mnist", "train")
    xt, _ = load_mnist_like("mnist", "test")
    lik = likelihoods.categorical()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")
    if HAVE_LAPLACE:
        print(f"laplace-torch {getattr(laplace_torch, '__version__', '0.3')} from {laplace_torch.__file__}")
    else:
        print(f"laplace-torch unavailable ({LAPLACE_ERROR}); timing fbnn alone")
    rows = []
    if not args.skip_fit:
        rows += bench_fit(args, x[:args.n_fit].clone(), y[:args.n_fit].clone(), lik)
    glm_rows, mem_rows, agree = bench_glm(args, x[:args.n_glm_fit].clone(), y[:args.n_glm_fit].clone(),
                                          xt[:args.n_glm].clone(), lik)
    rows += glm_rows
    print(f"\n{'benchmark':58s} {'library':26s} {'seconds':>9s} {'/ fbnn':>7s}")
    for what, lib, t, ref in rows:
        print(f"{what:58s} {lib:26s} {t:9.3f} {fmt_ratio(t, ref)}")
    print("\npeak RSS increase during the first GLM call (sampled every 1 ms):")
    for lib, m in mem_rows:
        print(f"  {lib:26s} {m / 2 ** 20:9.1f} MiB  (goal <= 2048 MiB)")
    if agree is not None:
        print(f"\nmax |p_fbnn - p_laplace-torch| over the 1,000 x 10 probit probabilities: {agree:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
