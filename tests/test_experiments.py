import json
import math

import pytest

from experiments import mnist


def _row(method, err, ll, **kw):
    return {"method": method, "error_pct": err, "test_loglik_sum": ll, "n_samples": 1, "epochs": 10,
            "wall_s": 12.0, "command": "python -m experiments.mnist map", "commit": "abc1234", **kw}


def test_markdown_table_lists_rows_seed_numbers_notes_and_spread():
    results = {"map": _row("map", 1.56, -588.6, config={"seed": 0}),
               "map_seed1": _row("map", 1.50, -560.0, config={"seed": 1}),
               "map_seed0": _row("map", 1.57, -590.0, config={"seed": 0}),  # a rerun: counted once
               "ensemble_20": _row("ensemble", 1.40, -480.0, note="twenty members")}
    md = mnist.markdown_table(results)
    assert "| map | map | 1.56 | -588.60 | 1.58 | -572.90 |" in md
    assert "| ensemble_20 | ensemble | 1.40 | -480.00 | 1.53 | -496.54 |" in md  # seed row by method
    assert "- `ensemble_20`: twenty members" in md
    assert "| map | 2 | 1.53 ± 0.04 | -574.3 ± 20.2 |" in md


def test_record_writes_json_and_markdown(tmp_path):
    metrics = {"config": {"method": "map"}, "error_pct": 1.5, "test_loglik_sum": -500.0, "n_samples": 1,
               "epochs": 10, "train_wall_s": 100.0, "eval_s": 1.0, "commit": "abc1234", "nll_mean": 0.05,
               "brier": 0.02, "ece": 0.01, "mean_total_entropy": 0.1, "mean_epistemic_entropy": 0.0}
    mnist.record("map", metrics, "python -m experiments.mnist map", results_dir=tmp_path)
    saved = json.loads((tmp_path / "mnist.json").read_text())
    assert saved["map"]["wall_s"] == 101.0 and saved["map"]["commit"] == "abc1234"
    assert set(saved["map"]) >= {"method", "error_pct", "test_loglik_sum", "n_samples", "epochs", "wall_s",
                                 "command", "commit"}
    assert "| map | map | 1.50 | -500.00 |" in (tmp_path / "mnist.md").read_text()


def test_reproduce_quick_runs_every_stage_then_skips_them(tmp_path, capsys):
    # The whole pipeline in --quick mode (tiny subsets, same code paths), into tmp_path; a
    # second call finds every stage's inputs unchanged and runs nothing.
    from experiments import reproduce
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = ["--quick", "--runs-dir", str(runs), "--results-dir", str(results)]
    assert reproduce.main(argv) == 0
    log = json.loads((results / "reproduce.json").read_text())
    names = [s.name for s in reproduce.stages(True, runs, results)]
    assert sorted(log) == sorted(names)
    assert all(entry["quick"] and entry["wall_s"] > 0 for entry in log.values())
    saved = json.loads((results / "mnist.json").read_text())
    assert {"map", "mc_dropout", "ensemble", "sgld", "psgld", "sghmc_sa", "evidential", "kfac_laplace",
            "bbp_gaussian", "bbp_gmm", "bbp_laplace", "bbp_lrt"} <= set(saved)
    for name in ("uci.json", "uci.md", "pruning.md", "uncertainty.json", "uncertainty.md",
                 "figures/toy_gp.png", "figures/rotation_all.png"):
        assert (results / name).stat().st_size > 0, name
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("inputs unchanged, skipped") == len(names)


def test_reproduce_rejects_an_unknown_stage(tmp_path, capsys):
    from experiments import reproduce
    assert reproduce.main(["--quick", "--stages", "nope", "--results-dir", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


def test_own_settings_need_a_row_name(capsys):
    with pytest.raises(SystemExit):
        mnist.main(["sghmc_sa", "--quick", "--no-record", "--", "--lr", "3e-3"])
    assert "--row-name" in capsys.readouterr().err


def test_own_settings_override_the_seed_settings_and_are_recorded(tmp_path):
    argv = ["sghmc_sa", "--quick", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path),
            "--row-name", "sghmc_sa_fixed_prior", "--", "--lr", "3e-3", "--resample-prior-every", "0"]
    assert mnist.main(argv) == 0
    row = json.loads((tmp_path / "mnist.json").read_text())["sghmc_sa_fixed_prior"]
    assert row["own_settings"] == ["--lr", "3e-3", "--resample-prior-every", "0"]
    assert row["config"]["lr"] == 3e-3 and row["config"]["resample_prior_every"] is None
    assert row["config"]["resample_momentum_every"] == 50  # seed settings not overridden stay
    assert "-- --lr 3e-3" in row["command"]


def test_uci_table_runs_are_the_settings_behind_the_committed_table():
    # `python -m experiments.uci --table` must rerun every committed cell with the budget it had.
    from pathlib import Path
    from experiments import uci
    committed = json.loads((Path(uci.RESULTS) / "uci.json").read_text())
    scale = {(p, m): s for p, methods, s in uci.TABLE_RUNS for m in methods}
    assert len(scale) == sum(len(methods) for _, methods, _ in uci.TABLE_RUNS)  # no cell run twice
    cells = {(p, m, d): e for p, by_m in committed.items() for m, by_d in by_m.items() for d, e in by_d.items()}
    assert {(p, m) for p, m, _ in cells} == set(scale)
    for (p, m, d), e in cells.items():
        assert e.get("steps_scale", 1.0) == scale[p, m], (p, m, d)
        assert not e["quick"]


def test_stage_times_come_from_a_full_run_then_the_stages_own_records(tmp_path):
    from experiments import reproduce
    (tmp_path / "reproduce.json").write_text(json.dumps({
        "toy": {"wall_s": 42.0, "quick": False, "finished": "2026-12-01T00:00:00Z"},
        "mnist_map": {"wall_s": 1.0, "quick": True, "finished": "2026-12-01T00:00:00Z"}}))
    (tmp_path / "mnist.json").write_text(json.dumps({"map": _row("map", 1.5, -580.0)}))
    cell = {"wall_s_of_run": 10.0}
    (tmp_path / "uci.json").write_text(json.dumps({"standard20": {"map": {"wine": cell}, "ensemble": {"wine": cell},
                                                                  "sgld": {"wine": {"wall_s_of_run": 5.0}}}}))
    times = {name: (wall, src) for name, wall, src in reproduce.recorded_times(tmp_path)}
    assert times["toy"] == (42.0, "a full-mode run of this stage, 2026-12-01T00:00:00Z")
    assert times["mnist_map"][0] == 12.0 and "python -m experiments.mnist map" in times["mnist_map"][1]  # quick run ignored
    assert times["uci"][0] == 15.0  # map and ensemble came from one shared run
    assert times["mnist_sgld"] == (None, "not run") and times["uncertainty"][0] is None
    assert times["bbp_lrt"] == (None, "not run")  # no benchmark figures to estimate from
    md = reproduce.times_markdown(list(reproduce.recorded_times(tmp_path)))
    assert "| toy | 42 | 0.01 |" in md and "Measured: 69 s" in md


def test_bbp_stage_estimate_times_each_epoch_at_its_own_sample_count(tmp_path):
    from experiments import reproduce
    from experiments.benchmarks import bbp_step
    assert bbp_step.timed_samples("bbp_lrt") == [("bbp_lrt", 1), ("bbp_lrt S=3", 3)]
    assert bbp_step.timed_samples("bbp_gaussian") == [("bbp_gaussian", 3)]
    summary = {"bbp_lrt": {"epoch_s_cpu": 60.0}, "bbp_lrt S=3": {"epoch_s_cpu": 150.0},
               "bbp_gaussian": {"epoch_s_cpu": 100.0}}
    # bbp_lrt: S = 1 for epochs 0..60 (61 epochs), S = 3 for the other 79 of 140
    assert bbp_step.epoch_schedule_s("bbp_lrt", summary) == (61 * 60.0 + 79 * 150.0,
                                                             "61 epochs x 60 s (S=1) + 79 epochs x 150 s (S=3)")
    assert bbp_step.epoch_schedule_s("bbp_lrt", summary, epochs=30) == (1800.0, "30 epochs x 60 s (S=1)")
    assert bbp_step.epoch_schedule_s("bbp_gmm", summary) is None  # S = 3 and 5 not timed
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bbp_step.json").write_text(json.dumps({"summary": summary}))
    times = {name: (wall, src) for name, wall, src in reproduce.recorded_times(tmp_path)}
    assert times["bbp_lrt"][0] == 61 * 60.0 + 79 * 150.0 and times["bbp_lrt"][1].startswith("not run; estimate")
    assert times["bbp_gaussian"][0] == 160 * 100.0 and times["bbp_gmm"] == (None, "not run")


def test_pruning_stage_time_and_label_come_from_pruning_json(tmp_path):
    from experiments import bbp_mnist, reproduce
    rows = [{"fraction": 0.0, "error_pct": 3.0, "n_kept": 10}]
    for criterion, wall in (("snr", 100.0), ("kl", 150.0)):
        bbp_mnist.record_pruning(f"bbp_gaussian/{criterion}", {
            "row": "bbp_gaussian", "criterion": criterion, "rule": "percentile", "rows": rows,
            "epochs_trained": 30, "wall_s": wall, "command": "c", "commit": "x"}, tmp_path)
    times = {name: (wall, src) for name, wall, src in reproduce.recorded_times(tmp_path)}
    assert times["pruning_bbp_gaussian"][0] == 250.0 and "30 epochs" in times["pruning_bbp_gaussian"][1]
    assert times["pruning_bbp_laplace"] == (None, "not run (needs the BBP checkpoints)")
    md = (tmp_path / "pruning.md").read_text()
    assert "| bbp_gaussian (30/160 ep) | snr |" in md and "| bbp_gaussian (seed) | snr |" in md


def test_seed_logs_chain_scores_each_batch_before_its_step(tmp_path):
    """With a step too small to move the chain, the during-an-epoch minibatch figures (the
    seed's Jtr_pred) are the last sample's figures over the whole training subset."""
    from experiments import seed_logs
    from fbnn import cli
    runs = tmp_path / "runs"
    cli.main(["train", "--method", "sgld", "--dataset", "mnist", "--hidden", "32", "--lr", "1e-14",
              "--prior-sigma", "0.1", "--epochs", "2", "--subset", "300", "--test-subset", "100",
              "--collect-from", "0", "--thin", "1", "--keep", "2", "--batch-size", "64", "--out", str(runs / "tiny"),
              "--no-progress"])
    out = tmp_path / "results"
    argv = ["chain", "tiny", "--runs-dir", str(runs), "--results-dir", str(out)]
    assert seed_logs.main(argv) == 0
    r = json.loads((out / "seed_logs.json").read_text())["chain"]["tiny"]
    assert r["n_kept"] == 2 and r["method"] == "sgld" and r["n_test"] == 100
    # two samples the step cannot tell apart: averaging them gains nothing over either one
    assert abs(seed_logs.averaging_gain(r["test_ce_kept"], r["predictive"][1], r["n_test"])) < 1e-5
    assert abs(r["train_ce_during"] - r["train_ce_last_sample"]) < 1e-5
    assert abs(r["train_err_during"] - r["train_err_last_sample"]) < 1e-9
    assert r["test_by_window"] == [None] * len(seed_logs.WINDOWS)  # epochs 0 and 1 lie before every window
    assert "| tiny | 2 |" in (out / "seed_logs.md").read_text()
    first = (out / "seed_logs.json").read_text()
    assert seed_logs.main(argv) == 0
    assert json.loads(first)["chain"]["tiny"]["train_ce_during"] == r["train_ce_during"]


def test_seed_logs_map_reads_the_training_cross_entropy_per_image(tmp_path):
    """With a step too small to move the net, every epoch's training CE is the initial net's
    mean CE over the training subset, a partial last batch included (300 = 4 x 64 + 44)."""
    import torch
    from experiments import seed_logs
    from fbnn import cli, metrics
    from fbnn.fit import load_checkpoint
    runs, out = tmp_path / "runs", tmp_path / "results"
    common = ["--dataset", "mnist", "--hidden", "32", "--epochs", "2", "--subset", "300", "--test-subset", "100",
              "--batch-size", "64", "--no-progress"]
    cli.main(["train", "--method", "map", "--lr", "1e-14", "--out", str(runs / "tiny"), *common])
    assert seed_logs.main(["map", "tiny", "--runs-dir", str(runs), "--results-dir", str(out)]) == 0
    r = json.loads((out / "seed_logs.json").read_text())["map"]["tiny"]
    ckpt = load_checkpoint(runs / "tiny" / "checkpoint.pt")
    cfg = ckpt["meta"]["config"]
    x, y = cli._subsets(cfg, *cli.load_dataset("mnist")[:4])[:2]
    model, _ = cli.build(cfg, x.shape[-1], x.shape[0])
    with torch.no_grad():
        ce = -metrics.test_loglik_sum(torch.softmax(model.apply(ckpt["state"].params, x), -1), y) / 300
    assert r["train_ce_by_epoch"] == pytest.approx([ce, ce], rel=1e-5)
    own = json.loads((runs / "tiny" / "metrics.json").read_text())
    assert r["test"] == [own["test_loglik_sum"], own["error_pct"]]
    assert "| runs from fbnn's keys: min – max |" in (out / "seed_logs.md").read_text()
    cli.main(["train", "--method", "map", "--torch-seed", "42", "--eval-every", "1", "--out", str(runs / "t42"), *common])
    assert seed_logs.main(["map", "t42", "--runs-dir", str(runs), "--results-dir", str(out)]) == 0
    r42 = json.loads((out / "seed_logs.json").read_text())["map"]["t42"]
    assert r42["torch_seed"] == 42 and len(r42["dev_by_epoch"]) == 2 and "dev_by_epoch" not in r
    assert "| t42 (torch seed 42) |" in (out / "seed_logs.md").read_text()
    cli.main(["train", "--method", "sgld", "--lr", "1e-14", "--collect-from", "0", "--thin", "1", "--keep", "1",
              "--out", str(runs / "chain"), *common])
    with pytest.raises(ValueError, match="not a MAP run"):
        seed_logs.main(["map", "chain", "--runs-dir", str(runs), "--results-dir", str(out)])


def test_replay_epoch_takes_the_steps_resume_takes(tmp_path):
    """Replaying the epoch after a checkpoint ends on the parameters `--resume` reaches, bit for bit."""
    from experiments import replay_epoch
    from fbnn import cli, tree
    from fbnn.fit import load_checkpoint
    run = tmp_path / "tiny"
    train = ["train", "--method", "sgld", "--dataset", "mnist", "--hidden", "16", "--lr", "1e-4",
             "--prior-sigma", "0.1", "--subset", "300", "--test-subset", "100", "--collect-from", "0",
             "--thin", "1", "--keep", "2", "--batch-size", "64", "--out", str(run), "--no-progress"]
    cli.main([*train, "--epochs", "1"])
    steps = list(replay_epoch.replay(run))
    assert [s[0] for s in steps] == list(range(5))  # 300 images in batches of 64
    assert all(math.isfinite(v) for s in steps for v in s[1:5])
    cli.main([*train, "--epochs", "2", "--resume"])
    assert tree.equal(steps[-1][-1].params, load_checkpoint(run / "checkpoint.pt")["state"].params)


def test_seed_logs_windows_average_by_epoch():
    """Window means group samples by the epoch in their file name; the seed's window constants,
    weighted by the kept epochs in each window, give back its whole-run means."""
    from experiments import seed_logs
    got = seed_logs.window_means([20, 58, 60, 150, 198], [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)])
    assert got == [[2, 3], [5, 6], None, [8, 9]]
    counts = [len(range(a, b, 2)) for a, b in seed_logs.WINDOWS]
    for m, windows in seed_logs.SEED_CHAIN_WINDOWS.items():
        for i, name in enumerate(("test_ce_kept", "test_err_kept")):
            mean = sum(c * w[i] for c, w in zip(counts, windows)) / sum(counts)
            assert abs(mean - seed_logs.SEED_CHAIN[m][name]) < 2e-4 * max(1.0, seed_logs.SEED_CHAIN[m][name])


def test_seed_logs_markdown_lists_a_chain_the_seed_has_no_notebook_for():
    """sghmc_sa has no seed notebook: its chain gets its rows and no seed's row beside them."""
    from experiments import seed_logs
    r = {"method": "sghmc_sa", "n_kept": 3, "n_test": 100, "predictive": (2.0, -9.0), "test_ce_kept": 0.2,
         "test_err_kept": 4.0, "test_by_window": [[0.2, 4.0], None, None, None], "train_ce_during": 0.1,
         "train_err_during": 3.0, "train_ce_last_sample": 0.1, "train_err_last_sample": 3.0}
    md = seed_logs.markdown({"chain": {"sa": r, "s": {**r, "method": "sgld"}}})
    assert "| sa | 3 |" in md and "| sa | 0.2000 / 4.00 | – |" in md
    assert "seed's sgld notebook" in md and "seed's sghmc_sa" not in md


def test_seed_logs_kfac_reads_the_factors_of_a_kfac_run(tmp_path):
    from experiments import kfac_mnist, seed_logs
    run = tmp_path / "kfac"
    assert kfac_mnist.main(["--quick", "--runs-dir", str(run), "--rows", "kfac_laplace", "--no-record",
                            "--no-progress"]) == 0
    out = tmp_path / "results"
    assert seed_logs.main(["kfac", str(run), "--n-train", "500", "--results-dir", str(out)]) == 0
    r = json.loads((out / "seed_logs.json").read_text())["kfac"][str(run)]
    assert (r["map_epoch"], r["n_data"], r["n_train"]) == (0, 1000, 500)
    # the Laplace predictive spreads the MAP net's probabilities: less confident on training data
    assert r["laplace_train"][0] < r["map_train"][0] < 0
    # the seed's sampler written out on its own draws from the same predictive: 100 draws
    # agree to Monte Carlo error, 1000 draws to within 0.06 in every probability (0.023 seen)
    assert abs(r["laplace_test_seed_procedure"][0] - r["laplace_test"][0]) < 0.02 * abs(r["laplace_test"][0])
    from fbnn import likelihoods, models
    from fbnn import random as fr
    from fbnn.data.idx import load_mnist_like
    from fbnn.fit import load_checkpoint
    from fbnn.methods import laplace as fl
    from fbnn.predict import predict_probs
    xt = load_mnist_like("mnist", "test")[0][:200]
    params = load_checkpoint(run / "params_epoch0.pt")["params"]
    state = load_checkpoint(run / "kfac_ggn_epoch0_n1000.pt")["state"]
    la = fl.kfac_laplace(models.mlp([784, 100, 100, 10]), likelihoods.categorical(), damping="ritter",
                         prior_precision=1 / 0.15 ** 2, n_data=1000)
    ours = predict_probs(models.mlp([784, 100, 100, 10]), la.sample(state, fr.key(1), 1000), xt).mean(0)
    seeds = seed_logs.seed_procedure_probs(params, state, xt, fr.key(2), 1000, 1000)
    assert float((ours - seeds).abs().max()) < 0.06
    assert "seed's notebook" in (out / "seed_logs.md").read_text()
    # a tiny prior sigma damps the posterior onto the MAP net: both predictives give its numbers
    assert seed_logs.main(["kfac", str(run), "--n-train", "500", "--results-dir", str(out),
                           "--hessian-diag-sig", "1e-4"]) == 0
    tight = json.loads((out / "seed_logs.json").read_text())["kfac"][f"{run} (sig 0.0001)"]
    assert tight["hessian_diag_sig"] == 1e-4
    for which in ("laplace_test", "laplace_test_seed_procedure"):
        assert tight[which][0] == pytest.approx(r["map_test"][0], rel=1e-3)
    assert json.loads((out / "seed_logs.json").read_text())["kfac"][str(run)] == r  # the 0.15 row is kept
    with pytest.raises(SystemExit):
        seed_logs.main(["kfac", str(run), "--results-dir", str(out), "--hessian-diag-sig", "0"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="kfac_ggn_epoch"):
        seed_logs.kfac_stats(empty, *[None] * 5, n_train=1)


def _tiny_ensemble(out, seed, *extra):
    from fbnn import cli
    cli.main(["train", "--method", "ensemble", "--members", "2", "--resample", "bernoulli", "--fraction", "0.8",
              "--dataset", "mnist", "--hidden", "16", "--epochs", "1", "--subset", "300", "--test-subset", "100",
              "--batch-size", "64", "--seed", str(seed), "--out", str(out), "--no-progress", *extra])


def test_ensemble_pool_grows_run_by_run_and_starts_at_the_first_runs_evaluation(tmp_path):
    from experiments import ensemble_pool
    for seed in (0, 1, 2):
        _tiny_ensemble(tmp_path / f"e{seed}", seed)
    res = tmp_path / "results"
    runs = [str(tmp_path / f"e{s}") for s in (0, 1, 2)]
    assert ensemble_pool.main([*runs, "--results-dir", str(res), "--row-name", "ensemble_pooled"]) == 0
    report = json.loads((res / "ensemble_pool.json").read_text())
    curve = report["curve"]
    assert [(c["runs"], c["members"]) for c in curve] == [(1, 2), (2, 4), (3, 6)]
    own = json.loads((tmp_path / "e0" / "metrics.json").read_text())
    for k in ("error_pct", "test_loglik_sum", "ece", "mean_epistemic_entropy"):
        assert curve[0][k] == pytest.approx(own[k], rel=1e-9, abs=1e-12), k
    # each member of run e0 scored alone equals its own logits scored directly
    import torch
    from fbnn import cli, metrics
    alone = report["runs"][0]["member_alone"]
    assert alone["error_pct"]["min"] <= alone["error_pct"]["mean"] <= alone["error_pct"]["max"]
    run0 = ensemble_pool.load_runs([runs[0]])[0]
    x, _, xt, yt = cli._subsets(run0["cfg"], *cli.load_dataset("mnist")[:4])
    logits = ensemble_pool.member_logits(run0, xt, x.shape[-1], x.shape[0], 10)
    assert logits.shape == (2, 100, 10)
    ll0, ll1 = (metrics.test_loglik_sum(torch.softmax(lg, -1), yt) for lg in logits)
    assert alone["test_loglik_sum"]["mean"] == pytest.approx((ll0 + ll1) / 2, rel=1e-9)
    assert alone["test_loglik_sum"]["max"] == pytest.approx(max(ll0, ll1), rel=1e-9)
    row = json.loads((res / "mnist.json").read_text())["ensemble_pooled"]
    assert row["n_samples"] == 6 and row["config"]["seed"] == [0, 1, 2]
    assert row["test_loglik_sum"] == curve[-1]["test_loglik_sum"]
    assert ensemble_pool.main([*runs[::-1], "--results-dir", str(res), "--report", "reversed"]) == 0
    rev = json.loads((res / "reversed.json").read_text())["curve"][-1]
    assert rev["test_loglik_sum"] == pytest.approx(curve[-1]["test_loglik_sum"], rel=1e-6)  # float32 sums
    assert rev["error_pct"] == curve[-1]["error_pct"]
    assert rev["logit_average"]["test_loglik_sum"] == pytest.approx(
        curve[-1]["logit_average"]["test_loglik_sum"], rel=1e-6)


def test_ensemble_pool_pools_sgmcmc_chains_sample_by_sample(tmp_path):
    import torch
    from experiments import ensemble_pool
    from fbnn import cli, metrics
    for seed in (0, 1):
        cli.main(["train", "--method", "psgld", "--dataset", "mnist", "--hidden", "16", "--lr", "1e-4",
                  "--epochs", "3", "--collect-from", "0", "--thin", "1", "--keep", "2", "--subset", "300",
                  "--test-subset", "100", "--batch-size", "64", "--seed", str(seed), "--out",
                  str(tmp_path / f"c{seed}"), "--no-progress"])
    res = tmp_path / "results"
    runs = [str(tmp_path / f"c{s}") for s in (0, 1)]
    assert ensemble_pool.main([*runs, "--results-dir", str(res), "--report", "chains", "--row-name", "psgld_2"]) == 0
    report = json.loads((res / "chains.json").read_text())
    assert report["method"] == "psgld"
    assert [(c["runs"], c["members"]) for c in report["curve"]] == [(1, 2), (2, 4)]
    own = json.loads((tmp_path / "c0" / "metrics.json").read_text())
    for k in ("error_pct", "test_loglik_sum", "ece"):
        assert report["curve"][0][k] == pytest.approx(own[k], rel=1e-9, abs=1e-12), k
    run0 = ensemble_pool.load_runs([runs[0]])[0]
    x, _, xt, yt = cli._subsets(run0["cfg"], *cli.load_dataset("mnist")[:4])
    logits = ensemble_pool.member_logits(run0, xt, x.shape[-1], x.shape[0], 10)
    assert logits.shape == (2, 100, 10)  # the two kept samples, not the config's ensemble size
    kept = [metrics.test_loglik_sum(torch.softmax(lg, -1), yt) for lg in logits]
    assert report["runs"][0]["member_alone"]["test_loglik_sum"]["min"] == pytest.approx(min(kept), rel=1e-9)
    assert "| runs | samples |" in (res / "chains.md").read_text()
    row = json.loads((res / "mnist.json").read_text())["psgld_2"]
    assert row["n_samples"] == 4 and row["config"]["chains"] == 2 and row["config"]["seed"] == [0, 1]


def test_ensemble_pool_refuses_runs_it_cannot_pool(tmp_path):
    from experiments import ensemble_pool
    from fbnn import cli
    from fbnn.fit import load_checkpoint, save_checkpoint
    _tiny_ensemble(tmp_path / "a", 0)
    _tiny_ensemble(tmp_path / "lr", 1, "--lr", "1e-2")
    _tiny_ensemble(tmp_path / "sub", 2, "--batches", "subset")
    cli.main(["train", "--method", "map", "--dataset", "mnist", "--hidden", "16", "--epochs", "1", "--subset", "300",
              "--test-subset", "100", "--out", str(tmp_path / "map"), "--no-progress"])
    res = tmp_path / "results"
    cases = {("a", "a"): "given more than once", ("a", "lr"): "lr=0.01",
             ("a", "sub"): "batches=.*subset", ("a", "map"): "not an `fbnn train` ensemble or SG-MCMC run"}
    for names, message in cases.items():
        with pytest.raises(ValueError, match=message):
            ensemble_pool.main([str(tmp_path / n) for n in names] + ["--results-dir", str(res)])
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    save_checkpoint(tmp_path / "a" / "checkpoint.pt", {**ckpt, "epoch": 0})
    with pytest.raises(ValueError, match="unfinished, 0 of 1 epochs"):
        ensemble_pool.main([str(tmp_path / "a"), "--results-dir", str(res)])
    assert not res.exists()  # nothing half-written


def test_keys_benchmark_checks_both_paths_agree(capsys):
    from experiments.benchmarks import keys
    assert keys.main(["--calls", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in keys.cases(keys.fr.key(0)))


def test_map_sensitivity_jitters_one_init_and_reports_the_spread(tmp_path, monkeypatch):
    import torch

    from experiments import map_sensitivity as ms
    from fbnn import torch_draws
    params = torch_draws.linear_params([5, 4, 3], torch_draws.generator(42))
    assert ms.jittered(params, 1e-7, -1) is params
    a, b = ms.jittered(params, 1e-3, 0), ms.jittered(params, 1e-3, 0)
    assert all(torch.equal(a[k], b[k]) for k in params)  # the key's bits
    rel = torch.cat([((a[k] - params[k]) / params[k]).flatten() for k in params])
    assert 0.5e-3 < float(rel.std()) < 2e-3 and not torch.equal(a["fc0.weight"], ms.jittered(params, 1e-3, 1)["fc0.weight"])
    monkeypatch.setattr(ms, "ROWS", {"map": ["--method", "map", "--optimizer", "sgd", "--lr", "1e-3",
                                             "--momentum", "0.5", "--batch-size", "100", "--epochs", "2",
                                             "--hidden", "8", "--subset", "300", "--test-subset", "100"]})
    assert ms.main(["--replicates", "-1", "0", "1", "--eps", "1e-3", "--results-dir", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "map_sensitivity.json").read_text())
    reps = res["replicates"]
    assert reps["-1"]["eps"] == 0.0 and reps["0"]["eps"] == 1e-3 and len(reps["0"]["train_ce_by_epoch"]) == 2
    assert reps["0"]["test_loglik_sum"] != reps["1"]["test_loglik_sum"]
    assert res["summary"]["n"] == 2  # the unperturbed replay is not a replicate of the spread
    assert "Perturbed replicates: 2" in (tmp_path / "map_sensitivity.md").read_text()
    with pytest.raises(ValueError, match="another --results-dir"):
        ms.main(["--replicates", "2", "--eps", "1e-6", "--results-dir", str(tmp_path)])


def test_kfac_mnist_torch_seed_trains_the_map_phase_from_torchs_draws(tmp_path):
    from experiments import kfac_mnist
    from fbnn import torch_draws
    from fbnn.fit import load_checkpoint
    run = tmp_path / "kfac"
    assert kfac_mnist.main(["--quick", "--torch-seed", "42", "--map-only", "--runs-dir", str(run),
                            "--no-record", "--no-progress"]) == 0
    ckpt = load_checkpoint(run / "checkpoint.pt")
    sizes = [784, 100, 100, 10]
    assert ckpt["meta"]["config"]["torch_seed"] == 42
    assert ckpt["settings"]["order"] == repr(torch_draws.DataLoaderOrder(42, 1000, torch_draws.n_words(sizes)))
    with pytest.raises(ValueError, match="different run"):  # a run from fbnn's keys does not resume it
        kfac_mnist.main(["--quick", "--map-only", "--runs-dir", str(run), "--no-record", "--no-progress"])
    jit = tmp_path / "jitter"
    assert kfac_mnist.main(["--quick", "--torch-seed", "42", "--jitter", "0", "--jitter-eps", "1e-3", "--map-only",
                            "--runs-dir", str(jit), "--no-record", "--no-progress"]) == 0
    config = load_checkpoint(jit / "checkpoint.pt")["meta"]["config"]
    assert (config["torch_seed"], config["jitter"], config["jitter_eps"]) == (42, 0, 1e-3)
    a = load_checkpoint(run / "params_epoch0.pt")["params"]["fc0.weight"]
    b = load_checkpoint(jit / "params_epoch0.pt")["params"]["fc0.weight"]
    assert 0 < float((a - b).abs().max()) < 0.1


def test_val_grid_scores_each_value_on_held_out_training_images(tmp_path):
    from experiments import val_grid
    argv = ["map", "--option", "weight-decay", "--values", "0", "1", "--name", "wd", "--val", "200",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path),
            "--", "--hidden", "8", "--epochs", "1", "--subset", "500"]
    assert val_grid.main(argv) == 0
    report = json.loads((tmp_path / "wd.json").read_text())
    scores = {v: m["loglik_sum"] for v, m in report["values"].items()}
    assert set(scores) == {"0", "1"} and scores["0"] != scores["1"]
    assert report["best"] == max(scores, key=scores.get)
    assert all(m["eval_set"] == "validation: the last 200 training examples" for m in report["values"].values())
    assert val_grid.main(argv) == 0  # finished runs are evaluated again, not retrained
    again = json.loads((tmp_path / "wd.json").read_text())
    assert {v: m["loglik_sum"] for v, m in again["values"].items()} == scores
    assert "Best log likelihood" in (tmp_path / "wd.md").read_text()


def test_mnist_rows_refuse_validation_runs_in_the_test_table(tmp_path):
    with pytest.raises(SystemExit):
        mnist.main(["map", "--quick", "--row-name", "map_val", "--results-dir", str(tmp_path),
                    "--runs-dir", str(tmp_path), "--", "--val", "100"])
    assert not (tmp_path / "mnist.json").exists()


def test_prior_scales_reads_each_tensors_precision_and_weight_scale(tmp_path, capsys):
    """sghmc_sa's rows hold its Gibbs-drawn precisions; sgld's the fixed 1 / sigma^2; the RMS and
    the implied n / sum(theta^2) are those of the checkpoint's weights; a MAP run is refused."""
    from experiments import prior_scales
    from fbnn import cli, priors, tree
    from fbnn.fit import load_checkpoint
    common = ["--dataset", "toy-hetero", "--hidden", "16", "--lr", "1e-4", "--epochs", "2", "--batch-size", "50",
              "--collect-from", "1", "--thin", "1", "--keep", "1", "--adapt-epochs", "1", "--no-progress"]
    for method in ("sghmc_sa", "sgld"):
        assert cli.main(["train", "--method", method, "--resample-prior-every", "1", "--prior-sigma", "0.5",
                         "--out", str(tmp_path / method), *common]) == 0
    sa = load_checkpoint(tmp_path / "sghmc_sa" / "checkpoint.pt")
    rows = prior_scales.prior_scales(sa["state"], sa["meta"]["config"])
    named = list(zip(priors.leaf_names(sa["state"].params), tree.leaves(sa["state"].params)))
    assert [r["name"] for r in rows] == [n for n, _ in named] and len(rows) == 4
    for r, (_, theta), lam in zip(rows, named, tree.leaves(sa["state"].precision)):
        assert r["precision"] == float(lam) != 4.0  # redrawn every step, no longer 1 / 0.5^2
        assert r["n"] == theta.numel() and math.isclose(r["rms"], float(theta.double().pow(2).mean().sqrt()))
        implied = theta.numel() / float(theta.double().pow(2).sum())
        assert math.isclose(r["implied_over_precision"], implied / r["precision"])
    sg = load_checkpoint(tmp_path / "sgld" / "checkpoint.pt")
    assert {r["precision"] for r in prior_scales.prior_scales(sg["state"], sg["meta"]["config"])} == {4.0}
    report = tmp_path / "scales"
    assert prior_scales.main([str(tmp_path / "sghmc_sa"), str(tmp_path / "sgld"), "--report", str(report)]) == 0
    assert capsys.readouterr().out.count("| tensor | n | precision λ |") == 2
    saved = json.loads(report.with_suffix(".json").read_text())
    assert saved["runs"][str(tmp_path / "sghmc_sa")]["tensors"] == json.loads(json.dumps(rows))
    assert "(sgld)" in report.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="not an SG-MCMC run"):
        prior_scales.prior_scales(sg["state"], {**sg["meta"]["config"], "method": "map"})
