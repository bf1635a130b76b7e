import json

import pytest
import torch

from fbnn import cli, likelihoods, methods, models, optim, torch_draws
from fbnn import random as fr
from fbnn.fit import fit, load_checkpoint

SIZES = [6, 5, 4, 3]


def _torch_linears(seed, sizes):
    """The nn.Linear stack a PyTorch script builds after torch.manual_seed(seed) (global generator)."""
    torch.manual_seed(seed)
    return [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]


def test_linear_params_are_torchs_default_init_bit_for_bit():
    with torch.random.fork_rng(devices=[]):
        layers = _torch_linears(42, SIZES)
        after = torch.rand(3)  # the draws that follow the init
    gen = torch_draws.generator(42)
    params = torch_draws.linear_params(SIZES, gen)
    for i, layer in enumerate(layers):
        assert torch.equal(params[f"fc{i}.weight"], layer.weight.detach())
        assert torch.equal(params[f"fc{i}.bias"], layer.bias.detach())
    assert torch.equal(torch.rand(3, generator=gen), after)
    assert torch_draws.n_words(SIZES) == sum(p.numel() for p in params.values())
    assert set(params) == set(models.mlp(SIZES).init(fr.key(0)))


def test_dataloader_order_replays_the_global_stream_of_a_torch_1_0_script():
    """The script: manual_seed, build the net, then per epoch one shuffling train loader (an
    int64 base seed, then randperm on the global generator) and one test loader (a base seed)."""
    n, epochs = 50, 3
    with torch.random.fork_rng(devices=[]):
        _torch_linears(7, SIZES)
        want = []
        for _ in range(epochs):
            torch.empty((), dtype=torch.int64).random_()
            want.append(torch.randperm(n))
            torch.empty((), dtype=torch.int64).random_()
    order = torch_draws.DataLoaderOrder(7, n, torch_draws.n_words(SIZES))
    for e in range(epochs):
        assert torch.equal(order(e), want[e])
    assert not torch.equal(order(0), torch_draws.DataLoaderOrder(7, n, torch_draws.n_words(SIZES), 0)(1))


def test_torch_draws_leave_the_global_generator_alone():
    before = torch.get_rng_state()
    torch_draws.linear_params(SIZES, torch_draws.generator(1))
    torch_draws.DataLoaderOrder(1, 20, 10)(2)
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_dataloader_order_settings_are_refused():
    with pytest.raises(ValueError, match="skip_words"):
        torch_draws.DataLoaderOrder(0, 10, -1)
    with pytest.raises(ValueError, match="epoch"):
        torch_draws.DataLoaderOrder(0, 10, 0)(-1)
    with pytest.raises(ValueError, match="words"):
        torch_draws.skip(torch_draws.generator(0), -2)


def _map(model):
    return methods.map(model, likelihoods.categorical(), optim.sgd(0.05, momentum=0.5), reduction="mean")


def test_fit_takes_its_batches_from_order(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 16, 3])
    method = _map(model)
    order = torch_draws.DataLoaderOrder(3, x.shape[0], 0)
    got = fit(method, method.init(fr.key(0), model.init(fr.key(1))), (x, y), fr.key(2), epochs=2,
              batch_size=64, progress=False, order=order).state
    state = method.init(fr.key(0), model.init(fr.key(1)))
    for e in range(2):
        perm = order(e)
        for lo in range(0, x.shape[0], 64):
            idx = perm[lo:lo + 64]
            state, _ = method.step(state, methods.Batch(x[idx], y[idx], idx), fr.key(0))
    for k in state.params:
        assert torch.equal(got.params[k], state.params[k])


def test_fit_with_order_resumes_exactly_and_refuses_bad_orders(toy_classification, tmp_path):
    x, y = toy_classification
    model = models.mlp([8, 16, 3])
    method = _map(model)
    order = torch_draws.DataLoaderOrder(3, x.shape[0], 0)

    def run(epochs, ckpt, resume=False):
        return fit(method, method.init(fr.key(0), model.init(fr.key(1))), (x, y), fr.key(2), epochs=epochs,
                   batch_size=64, progress=False, order=order, checkpoint=ckpt, resume=resume).state
    straight = run(3, tmp_path / "a.pt")
    run(1, tmp_path / "b.pt")
    resumed = run(3, tmp_path / "b.pt", resume=True)
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k])
    with pytest.raises(ValueError, match="different run"):  # the order is part of the run's settings
        fit(method, method.init(fr.key(0), model.init(fr.key(1))), (x, y), fr.key(2), epochs=4, batch_size=64,
            progress=False, checkpoint=tmp_path / "b.pt", resume=True)
    state = method.init(fr.key(0), model.init(fr.key(1)))
    with pytest.raises(ValueError, match="permutation of range"):
        fit(method, state, (x, y), fr.key(2), epochs=1, batch_size=64, progress=False,
            order=lambda e: torch.zeros(x.shape[0], dtype=torch.int64))
    ens = methods.ensemble(method, 2)
    with pytest.raises(ValueError, match="2 streams"):
        fit(ens, ens.init(fr.key(0), methods.init_members(model, fr.key(1), 2)), (x, y), fr.key(2), epochs=1,
            batch_size=64, progress=False, order=order)


def test_cli_torch_seed_is_fit_from_torchs_init_in_the_loaders_order(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--method", "map", "--dataset", "mnist", "--hidden", "8", "--epochs", "1", "--subset", "300",
            "--test-subset", "100", "--torch-seed", "42", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    cfg = ckpt["meta"]["config"]
    assert cfg["torch_seed"] == 42
    x, y, _, _, _ = cli.load_dataset("mnist")
    x, y = x[:300], y[:300]
    _, method = cli.build(cfg, 784, 300)
    order = torch_draws.DataLoaderOrder(42, 300, torch_draws.n_words([784, 8, 10]))
    assert ckpt["settings"]["order"] == repr(order)
    want = fit(method, method.init(fr.key(0), torch_draws.linear_params([784, 8, 10], torch_draws.generator(42))),
               (x, y), cli.run_keys(0)[1], epochs=1, batch_size=100, progress=False, order=order).state
    for k in want.params:
        assert torch.equal(ckpt["state"].params[k], want.params[k])
    assert json.loads((out / "metrics.json").read_text())["config"]["torch_seed"] == 42


def test_cli_torch_seed_needs_a_single_stream_classification_mlp(tmp_path, capsys):
    argv = ["train", "--dataset", "mnist", "--torch-seed", "1", "--epochs", "1", "--out", str(tmp_path / "x"),
            "--no-progress"]
    assert cli.main([*argv, "--method", "ensemble"]) == 2
    assert "--torch-seed" in capsys.readouterr().err
    assert cli.main([*argv[:1], "--method", "map", "--dataset", "toy-homo", *argv[3:]]) == 2
    assert "classification mlp" in capsys.readouterr().err


def test_torch_seed_42_replays_the_seed_notebooks_first_two_epochs(tmp_path):
    """The seed's MAP notebook (seed 42, B 100, SGD 1e-3 momentum 0.5, summed CE) prints a
    training cross-entropy of 0.234868 and 0.083005 for epochs 0 and 1. Replayed from its own
    draws fbnn lands within float noise of both: one float32 rounding of the init moves them by
    up to 9e-5 and 2.4e-4. fbnn's own keys give 0.2315-0.2346 and 0.0806-0.0824 over ten
    seeds, and a DataLoader that drew no base seeds would give 0.23450 and 0.08236."""
    from experiments.mnist import ROWS
    out = tmp_path / "map42"
    argv = ["train", *ROWS["map"], "--epochs", "2", "--dataset", "mnist", "--torch-seed", "42", "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 0
    history = load_checkpoint(out / "checkpoint.pt")["history"]
    train_ce = [h["loss"] / 100 for h in history]  # mean of the batch sums over 100 images
    assert abs(train_ce[0] - 0.234868) < 1.5e-4
    assert abs(train_ce[1] - 0.083005) < 4e-4
