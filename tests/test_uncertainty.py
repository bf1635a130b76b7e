import json
import math

import pytest
import torch
import torch.nn.functional as F

from fbnn import cli, models, tree
from fbnn import random as fr
from fbnn import uncertainty as U
from fbnn.fit import load_checkpoint, save_checkpoint
from fbnn.methods.base import Samples


def _images(n=6, seed=0):
    """Normalised MNIST-like images ``(n, 784)`` from random [0, 1] pixels."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 784, generator=g)
    return (pixels - 0.1307) / 0.3081


def _posterior(n_draws=3, hidden=16, key=0):
    model = models.mlp([784, hidden, 10])
    params = tree.stack([model.init(fr.key(key + i)) for i in range(n_draws)])
    return U.Posterior(model, Samples(params, {}))


# --- rotations ------------------------------------------------------------------------------

def test_rotation_by_zero_is_identity():
    x = _images()
    assert torch.allclose(U.rotate(x, 0), x, atol=1e-5)


@pytest.mark.parametrize("angle,k", [(90, 1), (180, 2), (-90, -1)])
def test_rotation_by_right_angles_equals_rot90(angle, k):
    x = _images().reshape(-1, 1, 28, 28)
    assert torch.allclose(U.rotate(x, angle), torch.rot90(x, k, dims=(-2, -1)), atol=1e-5)


def test_rotation_fills_with_black_and_keeps_shape():
    x = _images(2)
    r = U.rotate(x, 45)
    assert r.shape == x.shape
    corners = r.reshape(2, 28, 28)[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.allclose(corners, torch.full_like(corners, U.BLACK), atol=1e-5)
    assert U.rotations(x, U.SEED_ANGLES).shape == (16, 2, 784)


# --- FGSM --------------------------------------------------------------------------------------

def _predictive_nll(post, x, y):
    out = U.outputs(post, x).double()
    log_pbar = torch.logsumexp(F.log_softmax(out, -1), 0) - math.log(out.shape[0])
    return -log_pbar.gather(1, y[:, None]).sum()


def test_fgsm_at_zero_is_identity():
    x = _images()
    g = torch.randn_like(x)
    assert torch.allclose(U.fgsm(x, g, 0.0, "pixel"), x, atol=1e-5)
    assert torch.equal(U.fgsm(x, g, 0.0, "normalised"), x)


def test_predictive_nll_grad_matches_autograd():
    post, x, y = _posterior(), _images(7), torch.arange(7) % 10
    xr = x.clone().requires_grad_(True)
    model, (params, _) = post.model, post.samples
    p = torch.stack([F.softmax(model.apply(tree.index(params, s), xr), -1) for s in range(3)]).mean(0)
    (-p.log().gather(1, y[:, None]).sum()).backward()
    assert torch.allclose(U.predictive_nll_grad(post, x, y, chunk=3), xr.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("space", U.FGSM_SPACES)
def test_fgsm_increases_the_loss_of_a_fixed_net(space):
    post, x, y = _posterior(), _images(20), torch.arange(20) % 10
    g = U.predictive_nll_grad(post, x, y)
    before = _predictive_nll(post, x, y)
    adv = U.fgsm_sweep(x, g, [0.01, 0.05], space)
    assert _predictive_nll(post, adv[0], y) > before
    assert _predictive_nll(post, adv[1], y) > _predictive_nll(post, adv[0], y)
    if space == "pixel":
        pixels = adv * 0.3081 + 0.1307
        assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_fgsm_rejects_an_unknown_space():
    with pytest.raises(ValueError, match="unknown space"):
        U.fgsm(_images(), _images(), 0.1, "logit")


# --- entropies, OOD scores, ECDF, calibration, weights ---------------------------------------------

def test_entropies_of_one_draw_have_zero_epistemic_part():
    out = torch.randn(1, 50, 10)
    ent = U.entropies(out)
    assert torch.equal(ent["epistemic"], torch.zeros(50, dtype=torch.float64))
    many = U.entropies(torch.randn(5, 50, 10))
    assert (many["epistemic"] > -1e-12).all() and (many["total"] <= math.log(10) + 1e-12).all()
    dirichlet = U.entropies(torch.randn(1, 50, 10), dirichlet=True)
    assert (dirichlet["epistemic"] > 0).all()


def test_auroc_of_identical_and_separated_scores():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, generator=g), torch.randn(4000, generator=g)
    assert U.ood_auroc(a, a) == 0.5
    assert abs(U.ood_auroc(a, b) - 0.5) < 0.03
    assert U.ood_auroc(a, b + 100) == 1.0
    assert U.ood_auroc(a + 100, b) == 0.0


def test_ecdf_and_complementary_ecdf():
    values = torch.tensor([2.0, 1.0, 3.0, 2.0])
    at = torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0, 4.0])
    expected = torch.tensor([0.0, 0.25, 0.25, 0.75, 1.0, 1.0], dtype=torch.float64)
    assert torch.equal(U.ecdf(values, at), expected)
    assert torch.equal(U.complementary_ecdf(values, at), 1 - expected)


def test_reliability_bins_count_every_example():
    probs = torch.softmax(torch.randn(200, 10), -1)
    y = torch.randint(0, 10, (200,))
    bins = U.reliability_bins(probs, y, 15)
    assert len(bins["count"]) == 15 and sum(bins["count"]) == 200


def test_weight_values_and_histogram():
    post = _posterior(n_draws=4, hidden=8)
    values = U.weight_values(post.samples.params, 2)
    assert values.numel() == 2 * (784 * 8 + 8 * 10)
    h = U.weight_histogram(values, bins=50, limit=0.5)
    width = 1.0 / 50
    assert sum(h["density"]) * width == pytest.approx(h["fraction_inside"])
    assert h["fraction_inside"] == pytest.approx(1.0)  # init weights lie in +-1/sqrt(784)


# --- the experiment script ------------------------------------------------------------------

def _train(out, *extra):
    argv = ["train", "--dataset", "mnist", "--hidden", "16", "--subset", "300", "--test-subset", "100",
            "--batch-size", "100", "--optimizer", "adam", "--lr", "1e-3", "--no-progress", "--out", str(out), *extra]
    assert cli.main(argv) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _train(root / "mnist" / "map", "--method", "map", "--epochs", "1")
    _train(root / "mnist" / "mc_dropout", "--method", "mc_dropout", "--dropout", "0.5", "--epochs", "1",
           "--eval-samples", "2")
    _train(root / "mnist" / "sgld", "--method", "sgld", "--lr", "1e-5", "--epochs", "2", "--collect-from", "0",
           "--thin", "1", "--keep", "2")
    return root


def test_quick_run_on_tiny_checkpoints(runs, tmp_path):
    from experiments import uncertainty
    out = tmp_path / "results"
    rc = uncertainty.main(["--quick", "--models", "map,mc_dropout,sgld,kfac_laplace", "--runs-dir", str(runs),
                           "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "uncertainty.json").read_text())
    assert set(res["models"]) == {"map", "mc_dropout", "sgld"}
    assert "kfac_laplace" in res["skipped"]
    m = res["models"]["map"]
    assert m["n_samples"] == 1 and m["acceptance"]["max_abs_mean_epistemic"] == 0.0
    assert res["models"]["mc_dropout"]["n_samples"] == 4 and res["models"]["sgld"]["n_samples"] == 2
    for name in ("map", "sgld"):
        r = res["models"][name]
        assert len(r["rotation"]["epistemic_mean"]) == 16 and len(r["fgsm"]["error"]) == 15
        assert 0.0 <= r["ood"]["kmnist"]["auroc_total"] <= 1.0
    assert res["models"]["map"]["ood"]["kmnist"]["auroc_epistemic"] == 0.5
    md = (out / "uncertainty.md").read_text()
    assert "KMNIST, total H" in md and "kfac_laplace" in md
    for fig in ("rotation_map", "rotation_all", "ood_ecdf_kmnist", "ood_ecdf_fashion-mnist", "fgsm_all",
                "reliability_all", "weights_all"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000


def test_unknown_model_name_is_named(capsys):
    from experiments import uncertainty
    assert uncertainty.main(["--quick", "--models", "map,bayes_magic"]) == 2
    err = capsys.readouterr().err
    assert "'bayes_magic'" in err and "mc_dropout" in err and "kfac_laplace" in err


def test_checkpoint_of_another_architecture_is_named(runs, tmp_path, capsys):
    from experiments import uncertainty
    ckpt = load_checkpoint(runs / "mnist" / "map" / "checkpoint.pt")
    ckpt["meta"]["config"]["hidden"] = [32]
    bad = tmp_path / "runs" / "mnist" / "map" / "checkpoint.pt"
    save_checkpoint(bad, ckpt)
    assert uncertainty.main(["--quick", "--models", "map", "--runs-dir", str(tmp_path / "runs"),
                             "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "does not fit" in err


def test_checkpoint_of_another_task_is_named(tmp_path, capsys):
    from experiments import uncertainty
    out = tmp_path / "runs" / "mnist" / "map"
    assert cli.main(["train", "--method", "map", "--dataset", "toy-hetero", "--hidden", "8", "--epochs", "1",
                     "--out", str(out), "--no-progress"]) == 0
    assert uncertainty.main(["--quick", "--models", "map", "--runs-dir", str(tmp_path / "runs"),
                             "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(out / "checkpoint.pt") in err and "toy-hetero" in err


def test_missing_data_directory_is_named(tmp_path, capsys):
    from experiments import uncertainty
    missing = tmp_path / "no_data_here"
    assert uncertainty.main(["--quick", "--models", "map", "--data-dir", str(missing),
                             "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_a_shortened_bbp_run_is_labelled_as_such(tmp_path):
    from experiments import bbp_mnist, uncertainty
    runs = tmp_path / "runs"
    assert bbp_mnist.main(["train", "bbp_gaussian", "--epochs", "1", "--subset", "200", "--test-subset", "100",
                           "--eval-samples", "2", "--no-record", "--no-progress",
                           "--runs-dir", str(runs / "bbp_mnist")]) == 0
    out = tmp_path / "results"
    assert uncertainty.main(["--quick", "--models", "bbp_gaussian", "--runs-dir", str(runs), "--out", str(out)]) == 0
    m = json.loads((out / "uncertainty.json").read_text())["models"]["bbp_gaussian"]
    assert m["shortened"] == "1/160 ep" and "trained 1 of the seed's 160 epochs" in m["note"]
    md = (out / "uncertainty.md").read_text()
    assert "| bbp_gaussian (1/160 ep) |" in md and "| bbp_gaussian |" not in md
