"""Per-step time of the seed's four BBP MNIST rows against a MAP step of the same net.

    OMP_NUM_THREADS=1 python -m experiments.benchmarks.bbp_step [--repeats 7] [--json PATH]

The configurations are ``experiments.bbp_mnist.CONFIGS`` (784-1200-1200-10 MLP, batch 100,
M = 600): ``bbp_gaussian``/``bbp_gmm``/``bbp_laplace`` draw S = 3 weight sets per step with
the Monte Carlo KL, ``bbp_lrt`` uses local reparametrisation, S = 1 and the closed-form KL.
MAP is plain SGD on the summed cross-entropy (the seed's MAP row without weight decay).
Every repeat steps each method once, in turn, from the same state on the same minibatch
(synthetic data: timing does not depend on the pixels); the script prints the median
time per step (CPU time of this process, which a busy machine inflates less than wall
time; both are kept in the JSON), its ratio to MAP's median and the implied epoch time
(600 steps). A row whose S changes during training (``bbp_gmm`` 3 -> 5, ``bbp_lrt`` 1 -> 3)
is also timed at its later S, as ``<row> S=<S>``; ``epoch_schedule_s`` turns a row's
schedule into the epoch times ``experiments.reproduce --times`` sums.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fbnn import cli, likelihoods, models, optim
from fbnn import random as fr
from fbnn.methods import Batch, map_estimate

from .. import bbp_mnist

STEPS_PER_EPOCH = 600


def schedule(row: str) -> dict[int, int]:
    """``{first_epoch: S}`` of a row's config (an int S is ``{0: S}``)."""
    n = bbp_mnist.CONFIGS[row]["n_samples"]
    return {int(k): int(v) for k, v in n.items()} if isinstance(n, dict) else {0: int(n)}


def timed_samples(row: str) -> list[tuple[str, int]]:
    """``(name, S)`` timed for a row: ``row`` at the S of epoch 0, ``row S=<S>`` at each later S."""
    sched = schedule(row)
    return [(row, sched[0])] + [(f"{row} S={s}", s) for e, s in sorted(sched.items()) if e > 0]


def epoch_schedule_s(row: str, summary: dict, epochs: int | None = None) -> tuple[float, str] | None:
    """Estimated CPU seconds of a row's training, ``(seconds, how)``: each epoch at the
    per-step time of its S (``summary`` as this script's JSON); ``None`` when a needed S was
    not timed."""
    epochs = bbp_mnist.CONFIGS[row]["epochs"] if epochs is None else epochs
    sched, names = schedule(row), {s: n for n, s in timed_samples(row)}
    starts = sorted(e for e in sched if e < epochs)
    total, parts = 0.0, []
    for i, e in enumerate(starts):
        n_ep = (starts[i + 1] if i + 1 < len(starts) else epochs) - e
        entry = summary.get(names[sched[e]], {})
        if "epoch_s_cpu" not in entry:
            return None
        total += n_ep * entry["epoch_s_cpu"]
        parts.append(f"{n_ep} epochs x {entry['epoch_s_cpu']:.0f} s (S={sched[e]})")
    return total, " + ".join(parts)


def make_steps(rows, batch_size: int = 100):
    """``{name: (step_fn, state)}`` for the BBP rows and MAP, and the minibatch."""
    x = fr.normal(fr.key(1), (batch_size, bbp_mnist.ARCH[0]))
    y = fr.randint(fr.key(2), bbp_mnist.ARCH[-1], (batch_size,))
    out = {}
    for row in rows:
        for name, s in timed_samples(row):
            cfg = bbp_mnist.config(row, n_samples=s)
            model, method, _ = bbp_mnist.build(cfg, STEPS_PER_EPOCH * batch_size)
            out[name] = (method.step, method.init(fr.key(0), model.init(fr.key(0))))
    model = models.mlp(bbp_mnist.ARCH)
    mp = map_estimate(model, likelihoods.categorical(), optim.sgd(1e-3))
    out["map"] = (mp.step, mp.init(fr.key(0), model.init(fr.key(0))))
    return out, Batch(x, y)


def time_steps(steps: dict, batch, repeats: int) -> dict:
    """``{name: {"cpu": [s, ...], "wall": [s, ...]}}``, interleaved over the methods."""
    times = {k: {"cpu": [], "wall": []} for k in steps}
    for k, (step, state) in steps.items():  # warm-up (layer discovery, allocator)
        step(state, batch, fr.key(0))
    for r in range(repeats):
        for k, (step, state) in steps.items():
            c0, w0 = time.process_time(), time.perf_counter()
            step(state, batch, fr.key(r + 1))
            times[k]["cpu"].append(time.process_time() - c0)
            times[k]["wall"].append(time.perf_counter() - w0)
    return times


def summary(times: dict) -> dict:
    ref = {c: statistics.median(times["map"][c]) for c in ("cpu", "wall")}
    return {k: {f"{c}_ms": 1e3 * statistics.median(v[c]) for c in ("cpu", "wall")}
            | {f"{c}_ratio_to_map": statistics.median(v[c]) / ref[c] for c in ("cpu", "wall")}
            | {"epoch_s_cpu": STEPS_PER_EPOCH * statistics.median(v["cpu"])}
            for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(bbp_mnist.CONFIGS), choices=list(bbp_mnist.CONFIGS))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None, help="also write the summary and raw times here")
    args = p.parse_args(argv)
    steps, batch = make_steps(args.rows)
    times = time_steps(steps, batch, args.repeats)
    res = summary(times)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.repeats} interleaved repeats, "
          "medians of CPU time per step")
    print(f"{'config':14s} {'ms/step':>9s} {'x MAP':>7s} {'epoch (600 steps)':>18s}   (wall: ms, x MAP)")
    for k, r in res.items():
        print(f"{k:14s} {r['cpu_ms']:9.1f} {r['cpu_ratio_to_map']:7.2f} {r['epoch_s_cpu']:16.1f} s"
              f"   ({r['wall_ms']:.1f}, {r['wall_ratio_to_map']:.2f})")
    if args.json:
        cli.write_json_atomic(args.json, {"summary": res, "times": times, "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
