"""Reproduce every result of the repository with one command.

    python -m experiments.reproduce --quick      # every stage on tiny data: minutes on 2 cores
    python -m experiments.reproduce              # the full runs (many hours on 2 cores)
    python -m experiments.reproduce --list       # the stages and whether each would run
    python -m experiments.reproduce --stages toy uci --force
    python -m experiments.reproduce --times      # the full mode's wall time per stage -> results/stage_times.md

Each stage is one experiment script run in a subprocess (``python -m experiments.<script>``).
The full mode writes ``results/*.md``, ``results/*.json`` and ``results/figures/*.png`` and keeps
checkpoints under ``runs/`` (training resumes from them); ``--quick`` runs the same code paths
on small subsets and few epochs and writes under ``runs/quick/`` (results in
``runs/quick/results``), leaving ``results/`` alone.

A stage is skipped when its inputs are unchanged since its last successful run: the
fingerprint covers the stage's command line, every ``.py`` file of ``fbnn/`` and
``experiments/``, and the size and modification time of the files the stage reads (datasets,
checkpoints of earlier stages). Fingerprints and each stage's wall time are kept in
``<results>/reproduce.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST_ROWS = ("map", "mc_dropout", "ensemble", "sgld", "psgld", "sghmc_sa")
BBP_ROWS = ("bbp_gaussian", "bbp_gmm", "bbp_laplace", "bbp_lrt")
PRUNED_ROWS = ("bbp_gaussian", "bbp_laplace")
SEED_LOG_CHAINS = ("sgld", "psgld")  # rows whose chains seed_logs_chain scores


@dataclass(frozen=True)
class Stage:
    """One experiment: ``python -m <module> <args>``; ``reads``: globs (relative to the
    repository) of the files it depends on besides code; ``writes``: files that must exist
    after it for it to count as done."""
    name: str
    module: str
    args: tuple
    reads: tuple = ()
    writes: tuple = field(default=())


def stages(quick: bool, runs: Path, results: Path) -> list[Stage]:
    """The pipeline in order, for the full or the quick mode."""
    r, o = str(runs), str(results)
    q = ("--quick",) if quick else ()
    mnist_data = ("DATA/mnist/*",)
    out = [Stage("toy", "experiments.toy", (*q, "--out", o)),
           Stage("uci", "experiments.uci", (*q, "--table", "--out", o), ("DATA/uci/**/*",), ("uci.json", "uci.md"))]
    for row in MNIST_ROWS:
        out.append(Stage(f"mnist_{row}", "experiments.mnist",
                         (row, *q, "--resume", "--runs-dir", f"{r}/mnist", "--results-dir", o),
                         mnist_data, ("mnist.json",)))
    out.append(Stage("evidential", "experiments.evidential_mnist",
                     (*q, "--runs-dir", f"{r}/mnist", "--results-dir", o, "--no-progress"),
                     mnist_data, ("mnist.json",)))
    out.append(Stage("kfac_laplace", "experiments.kfac_mnist",
                     (*q, "--runs-dir", f"{r}/kfac_mnist", "--results-dir", o, "--no-progress"),
                     mnist_data, ("mnist.json",)))
    small = ("--epochs", "1", "--subset", "1000", "--test-subset", "500", "--eval-samples", "5") if quick else ()
    for row in BBP_ROWS:
        out.append(Stage(row, "experiments.bbp_mnist",
                         ("train", row, *small, "--resume", "--no-progress", "--runs-dir", f"{r}/bbp_mnist",
                          "--results-dir", o), mnist_data, ("mnist.json",)))
    prune_small = ("--test-subset", "500", "--eval-samples", "5", "--fractions", "0", "0.5", "0.9") if quick else ()
    for row in PRUNED_ROWS:
        out.append(Stage(f"pruning_{row}", "experiments.bbp_mnist",
                         ("prune", row, *prune_small, "--runs-dir", f"{r}/bbp_mnist", "--results-dir", o),
                         (*mnist_data, f"{r}/bbp_mnist/{row}/checkpoint.pt"), ("pruning.json", "pruning.md")))
    out.append(Stage("seed_logs_chain", "experiments.seed_logs",
                     ("chain", *SEED_LOG_CHAINS, "--runs-dir", f"{r}/mnist", "--results-dir", o),
                     (*mnist_data, *(f"{r}/mnist/{row}/**/*.pt" for row in SEED_LOG_CHAINS)), ("seed_logs.json",)))
    out.append(Stage("seed_logs_kfac", "experiments.seed_logs",
                     ("kfac", f"{r}/kfac_mnist", "--n-train", "500" if quick else "60000", "--results-dir", o),
                     (*mnist_data, f"{r}/kfac_mnist/*.pt"), ("seed_logs.json",)))
    # the full mode evaluates on the subsets behind results/uncertainty.md (CPU time)
    sizes = () if quick else ("--n-samples", "30", "--subset", "500", "--ood-subset", "1000")
    out.append(Stage("uncertainty", "experiments.uncertainty", (*q, *sizes, "--runs-dir", r, "--out", o),
                     ("DATA/mnist/*", "DATA/fashion_mnist/*", "DATA/kmnist/*", f"{r}/**/checkpoint.pt",
                      f"{r}/kfac_mnist/*.pt"), ("uncertainty.json", "uncertainty.md")))
    return out


def data_root() -> Path:
    from fbnn.data import data_dir
    return Path(data_dir(None))


def _files(pattern: str) -> list[Path]:
    if pattern.startswith("DATA/"):
        base, pattern = data_root(), pattern[len("DATA/"):]
    else:
        base = ROOT if not Path(pattern).is_absolute() else Path("/")
        pattern = pattern.lstrip("/")
    return sorted(p for p in base.glob(pattern) if p.is_file())


def fingerprint(stage: Stage) -> str:
    """sha256 over the stage's command, the library and experiment code, and the size and
    modification time of every file it reads."""
    h = hashlib.sha256(json.dumps([stage.module, list(stage.args)]).encode())
    for code in sorted([*ROOT.glob("fbnn/**/*.py"), *ROOT.glob("experiments/**/*.py")]):
        h.update(str(code.relative_to(ROOT)).encode())
        h.update(code.read_bytes())
    for pattern in stage.reads:
        for f in _files(pattern):
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def load_log(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to rerun every stage") from err


def is_current(stage: Stage, log: dict, results: Path, fp: str) -> bool:
    entry = log.get(stage.name, {})
    return entry.get("fingerprint") == fp and all((results / w).exists() for w in stage.writes)


def run_stage(stage: Stage, env: dict) -> float:
    """Run one stage; returns its wall time, raises ``RuntimeError`` naming it on failure."""
    cmd = [sys.executable, "-m", stage.module, *stage.args]
    print(f"[reproduce] {stage.name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage.name!r} failed (exit {done.returncode}): {' '.join(cmd[1:])}")
    return wall


KFAC_COMMAND = "python -m experiments.kfac_mnist --no-progress"  # the stage's rows, in mnist.json


def recorded_times(results: Path) -> list[tuple[str, float | None, str]]:
    """``(stage, seconds, source)`` for every full-mode stage: the wall time of a full-mode run
    of the stage in ``reproduce.json`` when there is one, else what the stage's own outputs
    recorded when they were made (rows of ``mnist.json``, runs of ``uci.json``, models of
    ``uncertainty.json``), else an estimate from the BBP step benchmark, else ``None``."""
    from experiments.bbp_mnist import CONFIGS as BBP
    from experiments.benchmarks.bbp_step import epoch_schedule_s
    from experiments.mnist import load_results
    log, mnist = load_log(results / "reproduce.json"), load_results(results / "mnist.json")
    uci, unc = load_results(results / "uci.json"), load_results(results / "uncertainty.json")
    seed_logs = load_results(results / "seed_logs.json")
    pruned: dict[str, list] = {}  # row -> its timed pruning.json entries (one per criterion)
    for e in load_results(results / "pruning.json").values():
        if "wall_s" in e:
            pruned.setdefault(e["row"], []).append(e)
    step = load_results(results / "benchmarks" / "bbp_step.json").get("summary", {})
    out = []
    for stage in stages(False, Path("runs"), results):
        name, entry = stage.name, log.get(stage.name, {})
        if entry and not entry.get("quick"):
            out.append((name, entry["wall_s"], f"a full-mode run of this stage, {entry['finished']}"))
        elif name.startswith("mnist_") or (name in ("evidential", *BBP) and name in mnist):
            row = name.removeprefix("mnist_")
            r = mnist.get(row)
            out.append((name, r and r["wall_s"], f"mnist.json row `{row}`: `{r['command']}`" if r else "not run"))
        elif name == "kfac_laplace" and any(r["command"] == KFAC_COMMAND for r in mnist.values()):
            rows = [r for r in mnist.values() if r["command"] == KFAC_COMMAND]
            # one training and factor pass shared by its rows, then one evaluation per row
            wall = max(r["extra"]["train_wall_s"] for r in rows) + sum(r["extra"]["eval_s"] for r in rows)
            out.append((name, wall, f"mnist.json rows of `python -m experiments.kfac_mnist`: shared training "
                                    f"+ {len(rows)} evaluations"))
        elif name in BBP:
            est = epoch_schedule_s(name, step)
            out.append((name, est and est[0], f"not run; estimate: {est[1]} (CPU time per epoch from "
                                              f"benchmarks/bbp_step.json, 1 thread)" if est else "not run"))
        elif name == "uci" and uci:
            runs = {(p, d, e["wall_s_of_run"]) for p, by_m in uci.items() for by_d in by_m.values()
                    for d, e in by_d.items()}
            out.append((name, sum(w for _, _, w in runs), f"uci.json: {len(runs)} runs (protocol x dataset x "
                                                           f"training run), summed"))
        elif name.startswith("pruning_") and name.removeprefix("pruning_") in pruned:
            row = name.removeprefix("pruning_")
            es = pruned[row]
            trained = ", ".join(sorted({f"{e['epochs_trained']} epochs" for e in es}))
            out.append((name, sum(e["wall_s"] for e in es),
                        f"pruning.json: {len(es)} criteria of `{row}` ({' / '.join(e['criterion'] for e in es)}), "
                        f"summed; run on a checkpoint of {trained} (the work does not depend on training length)"))
        elif name.startswith("seed_logs_") and seed_logs.get(name.removeprefix("seed_logs_")):
            es = seed_logs[name.removeprefix("seed_logs_")]
            n = len(SEED_LOG_CHAINS) if name == "seed_logs_chain" else 1  # runs the stage scores
            out.append((name, sum(e["wall_s"] for e in es.values()) / len(es) * n,
                        f"seed_logs.json: mean time per run over its {len(es)} entries, x {n} runs"))
        elif name == "uncertainty" and unc:
            models = unc["models"]
            out.append((name, sum(m["wall_s"]["total"] for m in models.values()),
                        f"uncertainty.json: {len(models)} models, summed"))
        else:
            out.append((name, None, "not recorded" if not name.startswith("pruning_")
                        else "not run (needs the BBP checkpoints)"))
    return out


def times_markdown(rows: list[tuple[str, float | None, str]]) -> str:
    measured = [w for _, w, src in rows if w is not None and not src.startswith("not run")]
    estimated = [w for _, w, src in rows if w is not None and src.startswith("not run")]
    lines = ["# Wall time of each stage of `python -m experiments.reproduce` (full mode)", "",
             "Seconds on the 2-core development machine, mostly 1 torch thread beside other jobs, so "
             "the figures are upper bounds for an idle machine rather than speed measurements. Each row "
             "says where its figure comes from; most stages were run on their own (the command in the "
             "row), not through `reproduce`. Written by `python -m experiments.reproduce --times`.", "",
             "| stage | wall (s) | hours | source |", "|---|---|---|---|"]
    for name, wall, source in rows:
        w = f"{wall:.0f} | {wall / 3600:.2f}" if wall is not None else "– | –"
        lines.append(f"| {name} | {w} | {source} |")
    lines += ["", f"Measured: {sum(measured):.0f} s ({sum(measured) / 3600:.1f} h) over {len(measured)} stages; "
                  f"estimated for {len(estimated)} stages not run: {sum(estimated):.0f} s "
                  f"({sum(estimated) / 3600:.1f} h); {len(rows) - len(measured) - len(estimated)} without a figure."]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny subsets and epochs, same code paths")
    p.add_argument("--stages", nargs="+", default=None, help="run only these stages (see --list)")
    p.add_argument("--force", action="store_true", help="run stages even when their inputs are unchanged")
    p.add_argument("--list", action="store_true", help="list the stages and whether each is current")
    p.add_argument("--times", action="store_true",
                   help="write <results>/stage_times.md: the full mode's recorded wall time per stage")
    p.add_argument("--runs-dir", default=None, help="checkpoints (default runs/, or runs/quick with --quick)")
    p.add_argument("--results-dir", default=None,
                   help="results (default results/, or runs/quick/results with --quick)")
    p.add_argument("--data-dir", default=None, help="data root (default: $FBNN_DATA or ../shared/data)")
    return p


def _in_repo(path: str) -> Path:
    """``path`` (relative to the working directory) as the stages see it: relative to the
    repository root when inside it (so fingerprints do not depend on the clone's location)."""
    full = Path(path).resolve()
    try:
        return full.relative_to(ROOT)
    except ValueError:
        return full


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    runs = _in_repo(args.runs_dir or str(ROOT / ("runs/quick" if args.quick else "runs")))
    results = _in_repo(args.results_dir or str(ROOT / runs / "results" if args.quick else ROOT / "results"))
    if args.times:
        from fbnn.cli import write_text_atomic
        md = times_markdown(recorded_times(ROOT / results))
        write_text_atomic(ROOT / results / "stage_times.md", md)
        print(md, end="")
        return 0
    env = dict(os.environ)
    if args.data_dir:
        env["FBNN_DATA"] = str(Path(args.data_dir).resolve())
        os.environ["FBNN_DATA"] = env["FBNN_DATA"]
    data_root()  # a missing data directory stops here, before any stage runs
    pipeline = stages(args.quick, runs, results)
    names = [s.name for s in pipeline]
    if args.stages:
        unknown = sorted(set(args.stages) - set(names))
        if unknown:
            print(f"reproduce: unknown stage(s) {unknown}; choose from {names}", file=sys.stderr)
            return 2
        pipeline = [s for s in pipeline if s.name in args.stages]
    log_path = ROOT / results / "reproduce.json"  # ROOT / an absolute path is that path
    log = load_log(log_path)
    for stage in pipeline:
        fp = fingerprint(stage)
        current = is_current(stage, log, ROOT / results, fp)
        if args.list:
            print(f"{stage.name:22s} {'current' if current else 'would run'}  "
                  f"(last wall {log.get(stage.name, {}).get('wall_s', float('nan')):.0f} s)")
            continue
        if current and not args.force:
            print(f"[reproduce] {stage.name}: inputs unchanged, skipped", flush=True)
            continue
        wall = run_stage(stage, env)
        log[stage.name] = {"fingerprint": fingerprint(stage), "wall_s": wall, "quick": args.quick,
                           "command": f"python -m {stage.module} {' '.join(stage.args)}",
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        from fbnn.cli import write_json_atomic
        write_json_atomic(log_path, log)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        sys.exit(2)
