"""Laplace approximations: fbnn against laplace-torch, in one process, same weights and data.

    nice -n 10 /work/venvs/laplace/bin/python -m experiments.benchmarks.laplace [--n-fit 10000] [--repeats 3]

laplace-torch is installed only in its own virtualenv (``/work/venvs/laplace``, with fbnn
installed there ``--no-deps`` in editable mode); under an interpreter without it the script
times fbnn alone. Three measurements (fit times: the median of ``--repeats`` interleaved runs
after a warm-up on 256 images):

1. fit time of K-FAC Laplace (exact GGN factors; laplace-torch: ``hessian_structure="kron"``,
   its default Curvlinops backend, type-2 Fisher = exact GGN) on an MLP 784-100-100-10 over
   ``--n-fit`` MNIST training images, minibatches of 128;
2. the same for the diagonal GGN (laplace-torch: BackPACK, and its default backend, which
   forms per-batch Jacobians and is so slow that it runs once on ``--lt-diag-n`` images,
   scaled linearly to ``--n-fit``);
3. the GLM predictive with the probit approximation for 1,000 test inputs on an MLP
   784-500-500-10 (K-FAC over all weights fitted on ``--n-glm-fit`` images, prior precision 1):
   the first call (including the eigendecomposition of the factors, which both libraries
   compute lazily) and a second call (one run each), with the peak memory of the first call.
   laplace-torch forms the ``(B, K, P)`` Jacobian of all 648,010 weights (2.6 GB per 100
   inputs in float32), so it is called on ``--lt-chunk`` inputs at a time.

Memory is the peak resident set size (RSS) of the process during the call minus the RSS just
before it, sampled every millisecond from ``/proc/self/statm`` by a background thread
(torch's CPU allocator is invisible to ``tracemalloc``). The weights are random (PyTorch's
default init): timings and memory do not depend on training. The agreement of the two
libraries' probit predictives is printed as a check that they compute the same thing.
"""
from __future__ import annotations

import argparse
import itertools
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
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
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
    rows = []
    for name in ("kfac", "diag"):
        la = fl.laplace(model, lik, structure=name)
        variants = {"fbnn": (lambda xs, ys, la=la: fl.fit_laplace(la, params, (xs, ys), batch_size=128), x.shape[0])}
        if HAVE_LAPLACE:
            def lt_fit(xs, ys, structure="kron" if name == "kfac" else "diag", backend=None):
                extra = {} if backend is None else {"backend": backend}
                net = torch_mlp(sizes, params)   # fresh: BackPACK leaves hooks on the modules it extends
                lap = laplace_torch.Laplace(net, "classification", subset_of_weights="all",
                                            hessian_structure=structure, **extra)
                lap.fit(loader(xs, ys))
                return lap
            n_default = x.shape[0] if name == "kfac" else min(args.lt_diag_n, x.shape[0])
            variants["laplace-torch"] = (lt_fit, n_default)
            if name == "diag":
                variants["laplace-torch (BackPACK)"] = (lambda xs, ys: lt_fit(xs, ys, backend=BackPackGGN), x.shape[0])
        for fn, _ in variants.values():   # warm-up on a small subset
            fn(x[:256], y[:256])
        times = {k: [] for k in variants}
        for r in range(args.repeats):    # interleaved so every variant sees the same machine load
            for k, (fn, n) in variants.items():
                if n < x.shape[0] and r > 0:
                    continue                 # the slow default-backend diagonal: one run on a subset
                times[k].append(timed(lambda fn=fn, n=n: fn(x[:n], y[:n]))[0])
        label = f"fit {name} 784-100-100-10, {x.shape[0]} images"
        ref = statistics.median(times["fbnn"])
        for k, v in times.items():
            n = variants[k][1]
            if n < x.shape[0]:  # scaled linearly from n images (the cost is per batch)
                rows.append((label, f"{k} [{n} imgs x{x.shape[0] / n:g}]", statistics.median(v) * x.shape[0] / n, ref))
            else:
                rows.append((label, k, statistics.median(v), ref))
    return rows


def bench_glm(args, x_fit, y_fit, xq, lik):
    sizes = [784, 500, 500, 10]
    model = models.mlp(sizes)
    params = model.init(fr.key(1))
    la = fl.kfac_laplace(model, lik, prior_precision=1.0)
    state = fl.fit_laplace(la, params, (x_fit, y_fit), batch_size=128)
    rows, probs = [], {}
    with PeakRss() as mem:          # includes the eigendecomposition of the factors
        t_first, probs["fbnn"] = timed(lambda: la.glm_probs(state, xq))
    decomposed = la.decompose(state)
    t_second = timed(lambda: la.glm_probs(decomposed, xq))[0]
    results = {"fbnn": (t_first, t_second, mem.increase)}
    if HAVE_LAPLACE:
        net = torch_mlp(sizes, params)
        lap = laplace_torch.Laplace(net, "classification", subset_of_weights="all", hessian_structure="kron",
                                    prior_precision=1.0)
        lap.fit(loader(x_fit, y_fit))

        def lt_glm():  # in chunks: laplace-torch forms the (B, K, P) Jacobian of all 648,010 weights
            return torch.cat([lap(xq[i:i + args.lt_chunk], pred_type="glm", link_approx="probit").detach()
                              for i in range(0, xq.shape[0], args.lt_chunk)])
        with PeakRss() as mem:
            t_first, probs["laplace-torch"] = timed(lt_glm)
        t_second = timed(lt_glm)[0]
        results[f"laplace-torch [chunks of {args.lt_chunk}]"] = (t_first, t_second, mem.increase)
    base = results["fbnn"]
    for k, (t1, t2, _) in results.items():
        rows.append((f"GLM probit, 784-500-500-10, {xq.shape[0]} inputs: 1st call", k, t1, base[0]))
        rows.append((f"GLM probit, 784-500-500-10, {xq.shape[0]} inputs: 2nd call", k, t2, base[1]))
    mem_rows = [(k, m) for k, (_, _, m) in results.items()]
    agree = None
    if len(probs) == 2:
        agree = float((probs["fbnn"].double() - probs["laplace-torch"].double()).abs().max())
    return rows, mem_rows, agree


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-fit", type=int, default=10000)
    p.add_argument("--n-glm-fit", type=int, default=2000)
    p.add_argument("--n-glm", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lt-diag-n", type=int, default=1000,
                   help="images for laplace-torch's default-backend diagonal fit (slow), scaled to --n-fit")
    p.add_argument("--lt-chunk", type=int, default=100, help="inputs per laplace-torch GLM call")
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
        print(f"\nmax |p_fbnn - p_laplace-torch| over the {args.n_glm} x 10 probit probabilities: {agree:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
