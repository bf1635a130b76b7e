"""Key derivation: a single plain key (hashed in Python ints) against the same key through
the int64-tensor hash that batches of keys and keys under ``vmap`` take, side by side.

    python -m experiments.benchmarks.keys [--calls 2000] [--repeats 5]

A batch holding one key, ``k[None]``, goes through the tensor hash and gives the same words
(checked here for every timed call). Each timing is the median over ``--repeats`` of the mean
time per call over ``--calls`` calls; the ratio is tensor path / plain path.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from experiments.benchmarks.foundation import timed
from fbnn import random as fr


def per_call_us(fn, calls: int, repeats: int) -> float:
    times, _ = timed(lambda _: [fn(i) for i in range(calls)], repeats)
    return statistics.median(times) / calls * 1e6


def cases(k: torch.Tensor) -> dict:
    """``name -> (plain, tensor path)``; each maps a call index to a key tensor."""
    batch = k[None]
    return {"split(k, 2)": (lambda i: fr.split(k, 2), lambda i: fr.split(batch, 2)[0]),
            "fold_in(k, i)": (lambda i: fr.fold_in(k, i), lambda i: fr.fold_in(batch, i)[0]),
            "split(fold_in(k, i), 3)": (lambda i: fr.split(fr.fold_in(k, i), 3),
                                        lambda i: fr.split(fr.fold_in(batch, i), 3)[0])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.calls} calls, "
          f"median of {args.repeats}")
    print(f"{'operation':26s} {'plain key us/call':>18s} {'tensor hash us/call':>20s} {'ratio':>6s}")
    k = fr.key(0)
    for name, (plain, tensor) in cases(k).items():
        for i in range(args.calls):
            if not torch.equal(plain(i), tensor(i)):
                raise AssertionError(f"{name}: the two paths differ at call {i}")
        tp, tt = per_call_us(plain, args.calls, args.repeats), per_call_us(tensor, args.calls, args.repeats)
        print(f"{name:26s} {tp:18.1f} {tt:20.1f} {tt / tp:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
