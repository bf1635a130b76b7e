"""Replay one epoch of an ``fbnn train`` run from its checkpoint, step by step, to see where a
chain or an optimiser goes wrong (the steps ``fit`` would take, with the same keys and batches).

    python -m experiments.replay_epoch runs/mnist/sgld_seed2 --from-step 200 --to-step 224

The checkpoint holds the state after its last finished epoch, so the replayed epoch is the one
``--resume`` would run next. For each step in ``[from, to]`` it prints the potential ``fit``
records (``loss``), the norm of the step taken over all parameters, the largest weight, and the
minibatch's mean cross-entropy after the step. Prints only; writes nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fbnn import cli, tree
from fbnn.fit import epoch_batches, load_checkpoint
from fbnn.methods.base import Batch


def replay(run: Path, data_dir=None):
    """Yield ``(step, loss, step_norm, max_abs_weight, batch_ce_after, state)`` for each step of
    the epoch after the checkpoint in ``run`` (a single-stream run of ``fbnn train``)."""
    ckpt = load_checkpoint(run / "checkpoint.pt")
    cfg = ckpt["meta"]["config"]
    x, y, xt, yt, info = cli.load_dataset(cfg["dataset"], data_dir, cfg.get("split", 0))
    x, y, _, _ = cli._subsets(cfg, x, y, xt, yt)
    model, method = cli.build(cfg, x.shape[-1], x.shape[0], info.get("n_classes", 10))
    if method.streams is not None:
        raise ValueError(f"replay_epoch: {run} trains {method.streams} streams; only single-stream runs replay")
    state = ckpt["state"]
    order = cli.run_order(cfg, cli.mlp_sizes(cfg, x.shape[-1], info.get("n_classes", 10)), x.shape[0])
    for i, idx, step_key in epoch_batches(cli.run_keys(cfg["seed"])[1], ckpt["epoch"], x.shape[0], cfg["batch_size"],
                                          order=order):
        before = tree.clone(state.params)  # a step may update in place
        state, step_info = method.step(state, Batch(x[idx], y[idx], idx), step_key)
        norm = float(tree.norm(tree.astype(tree.sub(state.params, before), torch.float64)))
        biggest = max(float(v.abs().max()) for v in tree.leaves(state.params))
        with torch.no_grad():
            ce = float(torch.nn.functional.cross_entropy(model.apply(state.params, x[idx]), y[idx]))
        yield i, float(step_info["loss"]), norm, biggest, ce, state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="an fbnn train output directory (holds checkpoint.pt)")
    p.add_argument("--from-step", type=int, default=0)
    p.add_argument("--to-step", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the run's own count replays it bit for bit)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("step | loss | step norm | max |w| | batch CE after")
    for i, loss, norm, biggest, ce, _ in replay(Path(args.run), args.data_dir):
        if i >= args.from_step:
            print(f"{i} | {loss:.4g} | {norm:.4g} | {biggest:.4g} | {ce:.4g}", flush=True)
        if args.to_step is not None and i >= args.to_step:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
