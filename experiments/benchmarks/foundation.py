"""Foundation benchmarks: predictive throughput and memory, vmap versus a loop, ensemble epoch.

    python -m experiments.benchmarks.foundation [--quick] [--repeats N] [--json PATH]

Everything is measured side by side in one run; each timing is repeated (after a
warm-up) and reported as a median, with the raw per-repeat times in the JSON.

1. Predictive: ``predict_probs`` of ``S`` stacked samples of the 784-1200-1200-10 MLP on
   the MNIST test images. Wall time, achieved FLOP/s (2 S B sum(fan_in fan_out)) and its
   fraction of this machine's float32 ``torch.mm`` throughput. Peak memory of the
   predictive alone, in a fresh subprocess (``ru_maxrss`` growth over a baseline taken
   after imports, data and parameters), for the default ``max_bytes`` and a small one.
2. vmap versus loop: ``predict`` of a 13-50-1 net with many samples against a Python
   loop of ``model.apply`` over the samples; both results are compared. A diagnostic
   row runs ``predict`` with a small explicit ``sample_chunk``: the automatic chunk fills
   the memory budget, which on a CPU need not be the fastest choice.
3. Ensemble epoch: ``ensemble(map_estimate)`` of MNIST MLPs (vmapped members) against
   the same members trained one after another with ``map_estimate``, both through
   ``method.step`` on pre-sliced batches; a fixed number of steps scaled to an epoch.

``--quick`` shrinks every size so the whole run takes seconds (same code paths).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from fbnn import likelihoods, methods, optim, tree
from fbnn import random as fr
from fbnn.data import load_mnist_like
from fbnn.models import mlp
from fbnn.predict import chunk_sizes, forward_bytes, predict, predict_probs

MNIST_SIZES = (784, 1200, 1200, 10)
UCI_SIZES = (13, 50, 1)
MIB = 2 ** 20
GIB = 2 ** 30
DEFAULT_MAX_BYTES = GIB  # predict's default budget
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Config:
    matmul_n: int          # side of the square reference matmul
    pred_samples: int      # S for the MNIST predictive
    pred_inputs: int       # B (MNIST test images)
    small_budget: int      # max_bytes showing that the budget bounds memory
    loop_samples: int      # samples of the 13-50-1 net
    loop_inputs: int
    small_chunk: int       # explicit sample_chunk for a diagnostic vmap row (auto fills the budget)
    members: int           # ensemble size
    steps: int             # training steps timed per member
    batch_size: int


FULL = Config(matmul_n=2048, pred_samples=100, pred_inputs=10_000, small_budget=256 * MIB,
              loop_samples=10_000, loop_inputs=500, small_chunk=20, members=10, steps=50, batch_size=128)
QUICK = Config(matmul_n=512, pred_samples=4, pred_inputs=200, small_budget=MIB,
               loop_samples=500, loop_inputs=100, small_chunk=20, members=2, steps=3, batch_size=128)


# --- timing and memory helpers -----------------------------------------------------------

def timed(fn: Callable, repeats: int, *, setup: Callable = lambda: None,
          warmup: Callable | None = None) -> tuple[list[float], object]:
    """Per-repeat wall times of ``fn(setup())`` (``setup`` untimed) and the last result.

    ``warmup`` runs once first (default: one untimed ``fn(setup())``)."""
    if warmup is None:
        fn(setup())
    else:
        warmup()
    times, result = [], None
    for _ in range(repeats):
        arg = setup()
        t0 = time.perf_counter()
        result = fn(arg)
        times.append(time.perf_counter() - t0)
    return times, result


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "times_s": times}


def maxrss_bytes() -> int:
    """Peak resident set size of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024  # KiB on Linux


def proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/self/status``, in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's ``VmHWM`` (Linux >= 4.0); ``ru_maxrss`` itself cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def auto_chunks(model, params, x: torch.Tensor, max_bytes: int) -> tuple[int, int]:
    """The ``(sample_chunk, input_chunk)`` that ``predict`` picks for this budget."""
    n_samples = tree.leaves(params)[0].shape[0]
    per_sample, per_input = forward_bytes(model, tree.index(params, 0), x)
    return chunk_sizes(n_samples, x.shape[0], per_sample, per_input, max_bytes)


# --- data and parameters -------------------------------------------------------------------

def stacked_init(model, key, n: int) -> dict:
    """The values of ``methods.init_members(model, key, n)``, filled member by member.

    ``init_members`` vmaps the init, whose draws stack per-key results and then rescale
    them: its peak is over two stacks (measured: +409 MiB for a 182 MiB stack), which
    would set ``ru_maxrss`` above the predictive's own peak. Filling preallocated leaves
    keeps the peak near one stack.
    """
    keys = fr.split(key, n)
    first = model.init(keys[0])
    out = {name: torch.empty((n, *leaf.shape), dtype=leaf.dtype) for name, leaf in first.items()}
    for i in range(n):
        member = first if i == 0 else model.init(keys[i])
        for name, leaf in member.items():
            out[name][i] = leaf
    return out


def mnist_test_inputs(n: int) -> torch.Tensor:
    return load_mnist_like("mnist", "test")[0][:n]


def mlp_flops(sizes, n_samples: int, n_inputs: int) -> int:
    """Multiply-add FLOPs of the forward passes: 2 S B sum(fan_in * fan_out)."""
    return 2 * n_samples * n_inputs * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


# --- 0. reference matmul -----------------------------------------------------------------

def bench_matmul(n: int, repeats: int) -> dict:
    a, b = torch.randn(n, n), torch.randn(n, n)
    times, _ = timed(lambda _: torch.mm(a, b), max(repeats, 7))
    out = {"n": n, **summary(times)}
    out["flops_per_s"] = 2 * n ** 3 / out["median_s"]
    return out


# --- 1. predictive throughput and memory ---------------------------------------------------

def bench_predictive(cfg: Config, repeats: int, peak_flops: float) -> dict:
    model = mlp(MNIST_SIZES)
    key = fr.key(0)
    same_as_init_members = tree.equal(stacked_init(model, key, 2), methods.init_members(model, key, 2))
    params = stacked_init(model, key, cfg.pred_samples)
    x = mnist_test_inputs(cfg.pred_inputs)
    warm = tree.index(params, slice(0, min(2, cfg.pred_samples)))
    times, _ = timed(lambda _: predict_probs(model, params, x), repeats,
                     warmup=lambda: predict_probs(model, warm, x))
    flops = mlp_flops(MNIST_SIZES, cfg.pred_samples, x.shape[0])
    res = {"samples": cfg.pred_samples, "inputs": x.shape[0], "flops": flops,
           "chunks": list(auto_chunks(model, params, x, DEFAULT_MAX_BYTES)),
           "stacked_init_equals_init_members": same_as_init_members, **summary(times)}
    res["flops_per_s"] = flops / res["median_s"]
    res["fraction_of_matmul"] = res["flops_per_s"] / peak_flops
    return res


def predictive_memory_child(spec: dict) -> dict:
    """In a fresh process: the predictive's own peak RSS over a post-setup baseline."""
    model = mlp(MNIST_SIZES)
    x = mnist_test_inputs(spec["inputs"])
    params = stacked_init(model, fr.key(0), spec["samples"])
    chunks = auto_chunks(model, params, x, spec["max_bytes"])
    gc.collect()
    base_maxrss, base_rss = maxrss_bytes(), proc_status_bytes("VmRSS")
    hwm_reset = reset_peak_rss()
    probs = predict_probs(model, params, x, max_bytes=spec["max_bytes"])
    growth = maxrss_bytes() - base_maxrss
    hwm = proc_status_bytes("VmHWM")
    return {**spec, "chunks": list(chunks),
            "maxrss_growth_bytes": growth, "baseline_maxrss_bytes": base_maxrss,
            "baseline_rss_bytes": base_rss,
            "hwm_growth_bytes": (hwm - base_rss) if (hwm_reset and hwm and base_rss) else None,
            "output_bytes": probs.numel() * probs.element_size()}


def run_memory_child(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "experiments.benchmarks.foundation", "--child-predict", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {spec} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(cfg: Config) -> list[dict]:
    """Run first, while this process is small: after ``exec`` a child's ``ru_maxrss`` starts
    from its parent's peak (Linux), which must stay below the child's baseline."""
    return [run_memory_child({"samples": cfg.pred_samples, "inputs": cfg.pred_inputs, "max_bytes": budget})
            for budget in (DEFAULT_MAX_BYTES, cfg.small_budget)]


# --- 2. vmap versus loop ---------------------------------------------------------------------

def loop_predict(model, params, x: torch.Tensor) -> torch.Tensor:
    n = tree.leaves(params)[0].shape[0]
    with torch.no_grad():
        return torch.stack([model.apply(tree.index(params, i), x) for i in range(n)])


def bench_vmap_vs_loop(cfg: Config, repeats: int) -> dict:
    model = mlp(UCI_SIZES)
    params = methods.init_members(model, fr.key(1), cfg.loop_samples)
    x = fr.normal(fr.key(2), (cfg.loop_inputs, UCI_SIZES[0]))
    small = dict(sample_chunk=cfg.small_chunk, input_chunk=x.shape[0])
    vm_times, vm_out = timed(lambda _: predict(model, params, x), repeats)
    small_times, small_out = timed(lambda _: predict(model, params, x, **small), repeats)
    loop_times, loop_out = timed(lambda _: loop_predict(model, params, x), repeats)
    vm, vm_small, loop = summary(vm_times), summary(small_times), summary(loop_times)
    vm["chunks"] = list(auto_chunks(model, params, x, DEFAULT_MAX_BYTES))
    vm_small["chunks"] = [cfg.small_chunk, x.shape[0]]
    vm_small["speedup"] = loop["median_s"] / vm_small["median_s"]
    return {"samples": cfg.loop_samples, "inputs": cfg.loop_inputs,
            "vmap": vm, "vmap_small_chunk": vm_small, "loop": loop,
            "speedup": loop["median_s"] / vm["median_s"],
            "allclose": (torch.allclose(vm_out, loop_out, rtol=1e-5, atol=1e-6)
                         and torch.allclose(small_out, loop_out, rtol=1e-5, atol=1e-6)),
            "max_abs_diff": max(float((vm_out - loop_out).abs().max()),
                                float((small_out - loop_out).abs().max()))}


# --- 3. ensemble epoch ------------------------------------------------------------------------

def train_batches(steps: int, batch_size: int):
    x, y = load_mnist_like("mnist", "train")
    if steps * batch_size > x.shape[0]:
        raise ValueError(f"{steps} steps of {batch_size} need more than the {x.shape[0]} training images")
    batches = [methods.Batch(x[lo:lo + batch_size], y[lo:lo + batch_size], torch.arange(lo, lo + batch_size))
               for lo in range(0, steps * batch_size, batch_size)]
    return batches, x.shape[0]


def run_steps(method, state, batches, keys):
    for batch, k in zip(batches, keys):
        state, _ = method.step(state, batch, k)
    return state


def bench_ensemble(cfg: Config, repeats: int) -> dict:
    model = mlp(MNIST_SIZES)
    single = methods.map_estimate(model, likelihoods.categorical(), optim.sgd(1e-3, momentum=0.5),
                                  reduction="sum")
    ens = methods.ensemble(single, cfg.members, batches="shared")  # same batches as the loop
    batches, n_train = train_batches(cfg.steps, cfg.batch_size)
    keys = [fr.fold_in(fr.key(3), i) for i in range(cfg.steps)]
    params0 = methods.init_members(model, fr.key(4), cfg.members)
    member_keys = fr.split(fr.key(5), cfg.members)

    def init_vmapped():
        return ens.init(fr.key(5), params0)

    def init_sequential():
        return [single.init(member_keys[m], tree.index(params0, m)) for m in range(cfg.members)]

    v_times, v_state = timed(lambda s: run_steps(ens, s, batches, keys), repeats, setup=init_vmapped,
                             warmup=lambda: run_steps(ens, init_vmapped(), batches[:2], keys[:2]))
    s_times, s_states = timed(lambda states: [run_steps(single, s, batches, keys) for s in states],
                              repeats, setup=init_sequential,
                              warmup=lambda: run_steps(single, init_sequential()[0], batches[:2], keys[:2]))
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    scale = steps_per_epoch / cfg.steps
    vm, seq = summary(v_times), summary(s_times)
    vm["epoch_s"], seq["epoch_s"] = vm["median_s"] * scale, seq["median_s"] * scale
    seq_params = tree.stack([s.params for s in s_states])
    diff = max(float((a - b).abs().max()) for a, b in zip(tree.leaves(v_state.members.params),
                                                          tree.leaves(seq_params)))
    return {"members": cfg.members, "steps": cfg.steps, "batch_size": cfg.batch_size,
            "steps_per_epoch": steps_per_epoch, "vmapped": vm, "sequential": seq,
            "ratio_sequential_over_vmapped": seq["median_s"] / vm["median_s"],
            "params_allclose": tree.allclose(v_state.members.params, seq_params, rtol=1e-4, atol=1e-5),
            "params_max_abs_diff": diff}


# --- report -------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()}


def mib(n) -> str:
    return "n/a" if n is None else f"{n / MIB:.0f} MiB"


def table(r: dict) -> str:
    mm, pr, vl, en = r["matmul"], r["predictive"], r["vmap_vs_loop"], r["ensemble"]
    rows = [("matmul", f"torch.mm {mm['n']}^2 float32", f"{mm['median_s']:.4f} s",
             f"{mm['flops_per_s'] / 1e9:.1f} GFLOP/s (reference)")]
    rows.append(("predictive", f"S={pr['samples']} B={pr['inputs']} chunks={tuple(pr['chunks'])}",
                 f"{pr['median_s']:.3f} s",
                 f"{pr['flops_per_s'] / 1e9:.1f} GFLOP/s = {pr['fraction_of_matmul']:.2f} of matmul"))
    for m in r["memory"]:
        rows.append(("predictive peak", f"max_bytes={mib(m['max_bytes'])} chunks={tuple(m['chunks'])}",
                     f"+{mib(m['maxrss_growth_bytes'])}",
                     f"{m['maxrss_growth_bytes'] / m['max_bytes']:.2f} of budget; "
                     f"VmHWM +{mib(m['hwm_growth_bytes'])}; output {mib(m['output_bytes'])}"))
    rows.append(("loop of apply", f"13-50-1 S={vl['samples']} B={vl['inputs']}", f"{vl['loop']['median_s']:.3f} s",
                 f"allclose to both vmap rows={vl['allclose']} (max |diff| {vl['max_abs_diff']:.1e})"))
    for name, label in (("vmap", "vmap predict"), ("vmap_small_chunk", "vmap, small chunk")):
        v = vl[name]
        speedup = vl["speedup"] if name == "vmap" else v["speedup"]
        rows.append((label, f"same, chunks={tuple(v['chunks'])}", f"{v['median_s']:.3f} s",
                     f"speedup over loop {speedup:.1f}x"))
    rows.append(("ensemble vmapped", f"{en['members']} x MLP, {en['steps']} steps of {en['batch_size']}",
                 f"{en['vmapped']['median_s']:.3f} s", f"epoch ({en['steps_per_epoch']} steps) "
                 f"{en['vmapped']['epoch_s']:.1f} s"))
    rows.append(("ensemble sequential", f"{en['members']} x map_estimate, same steps",
                 f"{en['sequential']['median_s']:.3f} s",
                 f"epoch {en['sequential']['epoch_s']:.1f} s; sequential/vmapped "
                 f"{en['ratio_sequential_over_vmapped']:.2f}x; params allclose={en['params_allclose']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows)


def log(msg: str) -> None:
    print(msg, flush=True)


def run_all(cfg: Config, repeats: int) -> dict:
    res = {"machine": machine_info(), "config": dataclasses.asdict(cfg), "repeats": repeats}
    log(f"torch {res['machine']['torch']}, {res['machine']['threads']} threads, {res['machine']['cpu_model']}")
    res["memory"] = bench_memory(cfg)
    for m in res["memory"]:
        log(f"  predictive peak (max_bytes={mib(m['max_bytes'])}, chunks {tuple(m['chunks'])}): "
            f"ru_maxrss +{mib(m['maxrss_growth_bytes'])}, VmHWM +{mib(m['hwm_growth_bytes'])} "
            f"(baseline ru_maxrss {mib(m['baseline_maxrss_bytes'])}, VmRSS {mib(m['baseline_rss_bytes'])})")
    res["matmul"] = bench_matmul(cfg.matmul_n, repeats)
    log(f"  matmul {cfg.matmul_n}^2: {res['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s")
    res["predictive"] = bench_predictive(cfg, repeats, res["matmul"]["flops_per_s"])
    pr = res["predictive"]
    log(f"  predictive: {pr['median_s']:.3f} s, chunks {tuple(pr['chunks'])}, "
        f"{pr['fraction_of_matmul']:.2f} of matmul; "
        f"stacked_init == init_members: {pr['stacked_init_equals_init_members']}")
    res["vmap_vs_loop"] = bench_vmap_vs_loop(cfg, repeats)
    vl = res["vmap_vs_loop"]
    log(f"  vmap vs loop: speedup {vl['speedup']:.1f}x (chunk {vl['vmap_small_chunk']['chunks'][0]}: "
        f"{vl['vmap_small_chunk']['speedup']:.1f}x), allclose {vl['allclose']}")
    res["ensemble"] = bench_ensemble(cfg, repeats)
    log(f"  ensemble: sequential/vmapped {res['ensemble']['ratio_sequential_over_vmapped']:.2f}x")
    return res


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.benchmarks.foundation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds), same code paths")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    p.add_argument("--json", type=Path, help="write every number (raw per-repeat times too) here")
    p.add_argument("--child-predict", help=argparse.SUPPRESS)  # internal: memory measurement
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_predict:
        print(json.dumps(predictive_memory_child(json.loads(args.child_predict))))
        return 0
    cfg = QUICK if args.quick else FULL
    log(f"fbnn foundation benchmarks ({'quick' if args.quick else 'full'}, {args.repeats} repeats, medians)")
    res = run_all(cfg, args.repeats)
    res["quick"] = args.quick
    log("\n" + table(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
