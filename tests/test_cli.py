import json

import pytest
import torch

from fbnn import cli, methods, tree
from fbnn import random as fr


def _train(tmp_path, *extra, name="run"):
    out = tmp_path / name
    argv = ["train", "--method", "map", "--dataset", "toy-hetero", "--hidden", "16", "--optimizer", "adam",
            "--lr", "1e-2", "--epochs", "2", "--batch-size", "50", "--out", str(out), "--no-progress", *extra]
    return cli.main(argv), out


def test_train_then_evaluate_regression(tmp_path):
    rc, out = _train(tmp_path)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_loglik", "rmse", "n_samples", "command", "commit"} <= set(metrics)
    assert cli.main(["evaluate", str(out), "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["test_loglik"] == pytest.approx(metrics["test_loglik"], abs=1e-9)


def test_ensemble_and_resume(tmp_path):
    rc, out = _train(tmp_path, "--method", "ensemble", "--members", "3", "--resample", "bootstrap")
    assert rc == 0 and json.loads((out / "metrics.json").read_text())["n_samples"] == 3
    assert _train(tmp_path, "--method", "ensemble", "--members", "3")[0] == 2  # exists, no --resume
    rc, _ = _train(tmp_path, "--method", "ensemble", "--members", "3", "--resample", "bootstrap",
                   "--epochs", "3", "--resume")
    assert rc == 0
    assert _train(tmp_path, "--method", "ensemble", "--members", "4", "--resample", "bootstrap",
                  "--epochs", "4", "--resume")[0] == 2  # other settings


def test_mnist_classification_smoke(tmp_path):
    out = tmp_path / "mnist"
    rc = cli.main(["train", "--method", "mc_dropout", "--dataset", "mnist", "--hidden", "32", "--dropout", "0.5",
                   "--epochs", "1", "--batch-size", "500", "--eval-samples", "4", "--out", str(out),
                   "--eval-every", "1", "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["error_pct"] < 20 and m["n_samples"] == 4 and m["test_loglik_sum"] < 0
    history = torch.load(out / "checkpoint.pt", weights_only=False)["history"]
    assert 0 < history[-1]["dev_error_pct"] < 20


@pytest.mark.parametrize("argv", [
    ["train", "--method", "bayes_magic", "--dataset", "mnist", "--out", "x"],
    ["train", "--method", "map", "--dataset", "cifar11", "--out", "x"],
    ["train", "--method", "map", "--dataset", "mnist", "--lr", "-0.1", "--out", "x"],
    ["train", "--method", "map", "--dataset", "mnist", "--hidden", "12,a", "--out", "x"],
    ["train", "--method", "sghmc_sa", "--dataset", "mnist", "--resample-prior-every", "-3", "--out", "x"],
])
def test_bad_arguments_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err or "must be" in err


def test_missing_data_directory(tmp_path, capsys):
    rc = cli.main(["train", "--method", "map", "--dataset", "mnist", "--out", str(tmp_path / "r"),
                   "--data-dir", str(tmp_path / "nowhere"), "--no-progress"])
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_mc_dropout_without_dropout_is_refused(tmp_path, capsys):
    rc = cli.main(["train", "--method", "mc_dropout", "--dataset", "toy-homo", "--out", str(tmp_path / "r")])
    assert rc == 2 and "--dropout" in capsys.readouterr().err


def test_evaluate_refuses_another_architecture(tmp_path, capsys):
    rc, out = _train(tmp_path)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    ckpt["meta"]["config"]["hidden"] = [17]
    torch.save(ckpt, out / "checkpoint.pt")
    assert cli.main(["evaluate", str(out)]) == 2
    assert "does not fit the architecture" in capsys.readouterr().err


def test_help_on_every_subcommand(capsys):
    for sub in ([], ["train"], ["evaluate"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([*sub, "--help"])
        assert exc.value.code == 0
    assert "--resume" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["sgld", "psgld", "sghmc", "sghmc_sa"])
def test_samplers_collect_on_disk_and_evaluate_every_kept_sample(tmp_path, method):
    rc, out = _train(tmp_path, "--method", method, "--lr", "1e-4", "--epochs", "4", "--collect-from", "1",
                     "--thin", "1", "--keep", "2", "--adapt-epochs", "1", "--batch-size", "32")
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 2 and metrics["config"]["keep"] == 2
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["sample_00000002.pt", "sample_00000003.pt"]
    assert cli.main(["evaluate", str(out), "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["test_loglik"] == pytest.approx(metrics["test_loglik"], abs=1e-9)


def test_sampler_schedule_errors(tmp_path, capsys):
    assert _train(tmp_path, "--method", "sgld", "--epochs", "4", "--collect-from", "4")[0] == 2
    assert "leaves no epoch to collect" in capsys.readouterr().err
    assert _train(tmp_path, "--method", "sghmc_sa", "--epochs", "4", "--collect-from", "1",
                  "--adapt-epochs", "5")[0] == 2
    assert "burn-in" in capsys.readouterr().err


def test_subsets_train_and_evaluate_on_the_first_examples(tmp_path):
    rc, out = _train(tmp_path, "--subset", "60", "--test-subset", "40")
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["subset"] == 60 and metrics["config"]["test_subset"] == 40
    assert cli.main(["evaluate", str(out), "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["test_loglik"] == pytest.approx(metrics["test_loglik"], abs=1e-9)
    with pytest.raises(SystemExit):
        cli.main(["train", "--method", "map", "--dataset", "toy-homo", "--subset", "0", "--out", str(tmp_path)])


def test_val_holds_the_last_training_examples_out_and_evaluates_on_them(tmp_path, capsys):
    rc, out = _train(tmp_path, "--val", "50")
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["val"] == 50 and metrics["eval_set"].startswith("validation")
    x, y, _, _, info = cli.load_dataset("toy-hetero", None, None)
    ckpt = cli.load_checkpoint(out / "checkpoint.pt")
    model, method = cli.build(metrics["config"], x.shape[-1], x.shape[0] - 50, None)
    key = cli.run_keys(0)[2]
    on_val = cli.evaluate_run(method, ckpt["state"], x[-50:], y[-50:], key, 1, info, None)
    assert on_val["test_loglik"] == pytest.approx(metrics["test_loglik"], abs=1e-9)
    assert on_val["test_loglik"] != pytest.approx(  # not the test set
        cli.evaluate_run(method, ckpt["state"], *cli.load_dataset("toy-hetero", None, None)[2:4],
                         key, 1, info, None)["test_loglik"], abs=1e-6)
    assert _train(tmp_path, "--val", str(x.shape[0]), name="all")[0] == 2
    assert "holds out every one" in capsys.readouterr().err


def test_sghmc_sa_adaptation_order_reaches_the_sampler(tmp_path):
    common = ("--method", "sghmc_sa", "--lr", "1e-3", "--epochs", "3", "--collect-from", "2", "--thin", "1",
              "--keep", "1", "--adapt-epochs", "1", "--batch-size", "32")
    rc_seed, seed = _train(tmp_path, *common, name="seed")
    rc_pybnn, pybnn = _train(tmp_path, *common, "--adaptation", "pybnn", name="pybnn")
    assert rc_seed == rc_pybnn == 0
    m_seed = json.loads((seed / "metrics.json").read_text())
    m_pybnn = json.loads((pybnn / "metrics.json").read_text())
    assert m_seed["config"]["adaptation"] == "seed" and m_pybnn["config"]["adaptation"] == "pybnn"
    assert m_seed["test_loglik"] != m_pybnn["test_loglik"]
    assert "adaptation" not in json.loads((_train(tmp_path, name="map")[1] / "metrics.json").read_text())["config"]


def test_a_period_of_zero_means_never():
    ns = cli.parser().parse_args(["train", "--method", "sghmc_sa", "--dataset", "mnist", "--out", "x",
                                  "--resample-prior-every", "0", "--resample-momentum-every", "0"])
    assert ns.resample_prior_every is None and ns.resample_momentum_every is None
    ns = cli.parser().parse_args(["train", "--method", "sghmc_sa", "--dataset", "mnist", "--out", "x"])
    assert (ns.resample_prior_every, ns.resample_momentum_every) == (15, 50)


@pytest.mark.parametrize("method", ["sgld", "psgld", "sghmc"])
def test_temperature_scales_the_noise_of_one_cli_sampler_step(tmp_path, method):
    common = ("--method", method, "--lr", "1e-4", "--epochs", "2", "--collect-from", "1", "--thin", "1",
              "--keep", "1", "--batch-size", "32")
    rc_cold, cold = _train(tmp_path, *common, "--temperature", "0.25", name="cold")
    rc_warm, warm = _train(tmp_path, *common, name="warm")
    assert rc_cold == rc_warm == 0
    cfg = json.loads((cold / "metrics.json").read_text())["config"]
    assert cfg["temperature"] == 0.25
    assert "temperature" not in json.loads((warm / "metrics.json").read_text())["config"]
    x, y, *_ = cli.load_dataset("toy-hetero", None, None)
    x, y = x.double(), y.double()

    def one_step(temperature):  # the same state, batch and key: only the noise scale differs
        model, sampler = cli.build({**cfg, "temperature": temperature}, x.shape[-1], x.shape[0], None)
        params = tree.map(lambda t: t.double(), model.init(fr.key(2)))
        state = sampler.init(fr.key(1), params)
        batch = methods.base.Batch(x[:32], y[:32], torch.arange(32))
        return [t for t in tree.leaves(sampler.step(state, batch, fr.key(3))[0])
                if isinstance(t, torch.Tensor) and t.is_floating_point()]

    # every update is drift + sqrt(T) * noise: (T=0.25 minus T~0) is half of (T=1 minus T~0)
    hot, quarter, frozen = one_step(1.0), one_step(0.25), one_step(1e-12)
    assert any(not torch.equal(a, b) for a, b in zip(hot, frozen))
    for h, q, f in zip(hot, quarter, frozen):
        torch.testing.assert_close(q - f, 0.5 * (h - f), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("method", ["sgld", "psgld", "sghmc", "sghmc_sa"])
def test_likelihood_temperature_reaches_the_cli_sampler(tmp_path, method):
    rc, run = _train(tmp_path, "--method", method, "--likelihood-temperature", "0.5", "--lr", "1e-4",
                     "--epochs", "2", "--collect-from", "1", "--thin", "1", "--keep", "1", "--adapt-epochs", "1",
                     "--batch-size", "32")
    assert rc == 0
    cfg = json.loads((run / "metrics.json").read_text())["config"]
    assert cfg["likelihood_temperature"] == 0.5 and "temperature" not in cfg
    x, y, *_ = cli.load_dataset("toy-hetero", None, None)
    x, y = x.double(), y.double()

    def one_step(config):  # the same state, batch and key
        model, sampler = cli.build(config, x.shape[-1], x.shape[0], None)
        state = sampler.init(fr.key(1), tree.map(lambda t: t.double(), model.init(fr.key(2))))
        batch = methods.base.Batch(x[:32], y[:32], torch.arange(32))
        return tree.leaves(sampler.step(state, batch, fr.key(3))[0].params)

    default = {k: v for k, v in cfg.items() if k != "likelihood_temperature"}
    half, one, none = (one_step({**cfg, "likelihood_temperature": t}) for t in (0.5, 1.0, 1e12))
    assert all(torch.equal(a, b) for a, b in zip(one_step(default), one))
    assert any(not torch.equal(a, b) for a, b in zip(half, one))
    if method in ("sgld", "sghmc"):  # the first move is linear in N / T_lik: T_lik 0.5 adds one more N g_lik
        for h, o, f in zip(half, one, none):
            torch.testing.assert_close(h - o, o - f, rtol=1e-6, atol=1e-12)


def test_temperature_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _train(tmp_path, "--method", "sgld", "--temperature", "0")
    assert "must be a finite number > 0" in capsys.readouterr().err


def test_sghmc_sa_cli_passes_its_temperature_to_the_sampler(tmp_path):
    rc, run = _train(tmp_path, "--method", "sghmc_sa", "--temperature", "0.5", "--epochs", "2",
                     "--collect-from", "1", "--adapt-epochs", "1", "--batch-size", "32")
    assert rc == 0
    cfg = json.loads((run / "metrics.json").read_text())["config"]
    assert cfg["temperature"] == 0.5
    x, y, *_ = cli.load_dataset("toy-hetero", None, None)
    batch = methods.base.Batch(x[:32], y[:32], torch.arange(32))

    def one_step(config):
        model, sampler = cli.build(config, x.shape[-1], x.shape[0], None)
        state = sampler.step(sampler.init(fr.key(1), model.init(fr.key(2))), batch, fr.key(3))[0]
        return state.momentum

    default = {k: v for k, v in cfg.items() if k != "temperature"}
    assert tree.allclose(one_step(default), one_step({**cfg, "temperature": 1.0}), rtol=0, atol=0)
    assert not tree.allclose(one_step(default), one_step(cfg))
