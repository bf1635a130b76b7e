"""fbnn.regression and the toy / UCI experiment scripts (SPEC §5)."""
import json
import math

import numpy as np
import pytest
import torch

from fbnn import metrics
from fbnn import random as fr
from fbnn import regression as reg
from fbnn.data import gp_posterior, standardize, toy_noise_std


def _dense_gp(x, y, xs, noise_var):
    """Textbook GP posterior by dense solves (float64)."""
    k = np.exp(-0.5 * np.subtract.outer(x, x) ** 2) + np.diag(noise_var)
    ks = np.exp(-0.5 * np.subtract.outer(x, xs) ** 2)
    mean = ks.T @ np.linalg.solve(k, y)
    var = 1.0 - np.einsum("ij,ij->j", ks, np.linalg.solve(k, ks))
    return mean, var


def test_gp_posterior_matches_dense_solve_with_hetero_noise_sign():
    rng = np.random.RandomState(0)
    x = np.sort(rng.uniform(-2, 2, 7))
    y = np.sin(2 * x)
    xs = np.linspace(-3, 3, 5)
    noise = toy_noise_std(x, "hetero") ** 2
    np.testing.assert_allclose(noise, 0.09 * (x + 2) ** 2)   # (x + 2), not the seed's (x - 2)
    post = gp_posterior(x, y, xs, noise)
    mean, var = _dense_gp(x, y, xs, noise)
    np.testing.assert_allclose(post.mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(post.var_f.numpy(), var, rtol=1e-4, atol=1e-6)


def test_gp_posterior_interpolates_noise_free_data():
    x = np.array([-1.5, -0.3, 0.4, 1.2])
    y = np.array([0.7, -1.1, 0.5, 2.0])
    post = gp_posterior(x, y, x, 1e-10)
    np.testing.assert_allclose(post.mean.numpy(), y, atol=1e-4)          # sign and scale right
    assert float(post.var_f.max()) < 1e-4


def test_standardisation_round_trips():
    rng = np.random.RandomState(1)
    x_tr, y_tr = rng.normal(3, 2, (40, 3)), rng.normal(10, 5, 40)
    x_te, y_te = rng.normal(3, 2, (9, 3)), rng.normal(10, 5, 9)
    s = standardize(x_tr, y_tr, x_te, y_te)
    np.testing.assert_allclose(s.x_train.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(0, correction=0).numpy(), 1, atol=1e-5)
    np.testing.assert_allclose(reg.destandardize(s.y_test.double(), s.y_mean, s.y_std).numpy(), y_te, rtol=1e-5)
    np.testing.assert_allclose(reg.destandardize(s.y_train.double(), s.y_mean, s.y_std).numpy(), y_tr, rtol=1e-5)


def test_mean_se_and_summarize():
    m, se = reg.mean_se([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert reg.mean_se([5.0]) == (5.0, 0.0)
    s = reg.summarize([-1.0, -2.0], [3.0, 5.0])
    assert s == {"test_ll_mean": -1.5, "test_ll_se": pytest.approx(0.5), "rmse_mean": 4.0,
                 "rmse_se": pytest.approx(1.0), "n_splits": 2}
    with pytest.raises(ValueError):
        reg.mean_se([])


def test_mixture_of_one_component_is_the_gaussian_test_loglik():
    mu, log_sigma = fr.normal(fr.key(0), (6,)), 0.3 * fr.normal(fr.key(1), (6,))
    y = fr.normal(fr.key(2), (6,))
    out = torch.stack([mu, log_sigma], -1)[None, None]                 # (G=1, C=1, m, 2)
    acc = reg.mixture_add(reg.mixture_init(1, 6), out, y[None])
    ll, rmse = reg.mixture_scores(acc, y[None], torch.ones(1, 6, dtype=torch.bool),
                                  torch.tensor([2.0], dtype=torch.float64))
    assert float(ll[0]) == pytest.approx(metrics.uci_test_loglik(mu, log_sigma.exp(), y, 2.0), rel=1e-6)
    assert float(rmse[0]) == pytest.approx(metrics.uci_rmse(mu, y, 2.0), rel=1e-6)


def test_mixture_pools_components_and_masks_padding():
    out = torch.tensor([[[[0.0, 0.0], [5.0, 0.0]], [[2.0, 0.0], [9.0, 0.0]]]])   # (1, C=2, m=2, 2)
    y = torch.tensor([[1.0, 123.0]])
    acc = reg.mixture_add(reg.mixture_init(1, 2), out, y)
    ll, rmse = reg.mixture_scores(acc, y, torch.tensor([[True, False]]), torch.tensor([1.0], dtype=torch.float64))
    expected = math.log(0.5 * 2 * math.exp(-0.5) / math.sqrt(2 * math.pi))
    assert float(ll[0]) == pytest.approx(expected)
    assert float(rmse[0]) == pytest.approx(0.0)


def test_select_by_validation_uses_validation_only():
    val = {(0, 10): torch.tensor([1.0, -5.0]), (0, 20): torch.tensor([0.0, 2.0])}
    test = {(0, 10): (torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])),
            (0, 20): (torch.tensor([9.0, -3.0]), torch.tensor([3.0, 4.0]))}
    out = reg.select_by_validation(val, test, [{"wd": 0.1}])
    assert out["test_ll"] == [-1.0, -3.0] and out["rmse"] == [1.0, 4.0]
    assert [c["epoch"] for c in out["choice"]] == [10, 20]


def test_validation_split_and_stream_orders():
    fit, val = reg.validation_split(10, 0.2, seed=3)
    assert len(val) == 2 and sorted(np.concatenate([fit, val]).tolist()) == list(range(10))
    order = reg.stream_orders(fr.key(0), torch.tensor([5, 3]), 5)
    assert sorted(order[0].tolist()) == list(range(5))
    assert set(order[1].tolist()) == {0, 1, 2} and order[1, 3] == order[1, 0]


def test_unknown_method_names_raise():
    with pytest.raises(ValueError, match="nope"):
        reg.method_config("nope")
    with pytest.raises(ValueError, match="nope"):
        reg.toy_bands("nope", torch.zeros(3, 1), torch.zeros(3), torch.zeros(2, 1), fr.key(0))


def test_uci_quick_run_writes_the_schema(tmp_path):
    from experiments import uci
    rc = uci.main(["--quick", "--datasets", "yacht", "--methods", "map", "--protocol", "standard20",
                   "--max-splits", "2", "--out", str(tmp_path)])
    assert rc == 0
    results = json.loads((tmp_path / "uci.json").read_text())
    entry = results["standard20"]["map"]["yacht"]
    for k in ("test_ll_mean", "test_ll_se", "rmse_mean", "rmse_se"):
        assert math.isfinite(entry[k])
    assert entry["n_splits"] == 2
    assert "yacht" in (tmp_path / "uci.md").read_text()
    (tmp_path / "uci.md").unlink()
    assert uci.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert "MC dropout 10x" in (tmp_path / "uci.md").read_text()


def test_uci_bad_inputs(tmp_path, capsys):
    from experiments import uci
    with pytest.raises(SystemExit):
        uci.main(["--datasets", "atlantis"])
    assert "atlantis" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        uci.main(["--methods", "magic"])
    assert "magic" in capsys.readouterr().err
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        uci.main(["--quick", "--data-dir", str(missing), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="uci"):
        uci.main(["--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path)])


def test_toy_quick_run_and_bad_method(tmp_path, capsys):
    from experiments import toy
    assert toy.main(["--quick", "--methods", "ensemble", "--kinds", "hetero", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "toy_ensemble.png").stat().st_size > 0
    assert (tmp_path / "figures" / "toy_gp.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        toy.main(["--methods", "wizard"])
    assert "wizard" in capsys.readouterr().err


def test_laplace_runs_share_one_training_run():
    assert reg.uci_method_runs(["ensemble_laplace"]) == [("ensemble", True)]
    assert reg.uci_method_runs(["map", "laplace"]) == [("map", True)]
    assert reg.uci_method_runs(["laplace", "ensemble", "bbp"]) == [("ensemble", True), ("bbp", False)]
    assert reg.uci_method_runs(["ensemble", "sgld"]) == [("ensemble", False), ("sgld", False)]


def test_mixture_of_laplaces_over_copies_of_one_net_is_that_nets_laplace():
    # K copies of one net: K times the components of one Gaussian predictive, so the mixture's
    # log-likelihood equals the single Laplace's up to Monte Carlo error (400 vs 200 draws);
    # two different nets give a different predictive.
    from fbnn import models
    rng = np.random.RandomState(0)
    x = rng.randn(60, 3)
    y = x @ np.array([1.0, -0.5, 0.2]) + 0.3 * rng.randn(60)
    split = standardize(x[:45], y[:45], x[45:], y[45:])
    model = models.mlp([3, 8, 1], head="hetero")
    nets = [model.init(fr.key(k)) for k in range(2)]
    one = {n: p[None] for n, p in nets[0].items()}
    copies = {n: torch.stack([p, p]) for n, p in nets[0].items()}
    two = {n: torch.stack([a, b]) for (n, a), b in zip(nets[0].items(), nets[1].values())}
    single = reg.laplace_scores(model, [one], [split], fr.key(1), n_samples=200)
    doubled = reg.laplace_scores(model, [copies], [split], fr.key(1), n_samples=200)
    mixed = reg.laplace_scores(model, [two], [split], fr.key(1), n_samples=200)
    assert len(doubled["prior_precision"][0]) == 2 and doubled["prior_precision"][0][0] == doubled["prior_precision"][0][1]
    assert doubled["test_ll"][0] == pytest.approx(single["test_ll"][0], abs=0.03)
    assert doubled["rmse"][0] == pytest.approx(single["rmse"][0], rel=0.02)
    assert abs(mixed["test_ll"][0] - single["test_ll"][0]) > 0.03


def test_uci_quick_ensemble_laplace(tmp_path):
    from experiments import uci
    assert uci.main(["--quick", "--datasets", "yacht", "--methods", "ensemble", "ensemble_laplace",
                     "--protocol", "standard20", "--max-splits", "2", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "uci.json").read_text())["standard20"]
    assert set(results) == {"ensemble", "ensemble_laplace"}
    entry = results["ensemble_laplace"]["yacht"]
    assert entry["n_splits"] == 2 and math.isfinite(entry["test_ll_mean"])
    assert "ensemble_laplace" in (tmp_path / "uci.md").read_text()
