import pytest
import torch

import fbnn
from fbnn import likelihoods, methods, models, optim, priors, tree
from fbnn import random as fr
from fbnn.fit import epoch_keys, subset_epoch_batches
from fbnn.predict import predictive


def _map(model, lr=0.05, **kw):
    return methods.map(model, likelihoods.categorical(), optim.sgd(lr, momentum=0.9), **kw)


def test_map_learns_a_separable_problem(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 32, 3])
    m = _map(model, lr=0.01)
    res = fbnn.fit(m, m.init(fr.key(0), model.init(fr.key(0))), (x, y), fr.key(1), epochs=20,
                   batch_size=32, progress=False)
    probs = predictive(m, res.state, x, fr.key(2), 1).mean(0)
    assert (probs.argmax(-1) == y).float().mean() > 0.95
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_reductions_give_proportional_gradients(toy_classification):
    # sum, mean and dataset reductions all target the same posterior: with a prior, the
    # losses differ by the constant factors B and N/B, so the gradients do too.
    x, y = toy_classification
    model = models.mlp([8, 16, 3])
    params = model.init(fr.key(0))
    batch = methods.Batch(x[:32], y[:32])
    losses = {}
    for red in ("sum", "mean", "dataset"):
        m = methods.map(model, likelihoods.categorical(), optim.sgd(1.0), prior=priors.normal(1.0),
                        n_data=256, reduction=red)
        st = m.init(fr.key(0), params)
        new, info = m.step(st, batch, fr.key(1))
        losses[red] = (info["loss"], tree.sub(params, new.params))  # lr 1: the gradient
    (ls, gs), (lm, gm), (ld, gd) = losses["sum"], losses["mean"], losses["dataset"]
    assert torch.allclose(ls, 32 * lm, rtol=1e-5) and torch.allclose(ld, 8 * ls, rtol=1e-5)
    assert tree.allclose(gs, tree.scale(gm, 32), rtol=1e-4, atol=1e-6)
    assert tree.allclose(gd, tree.scale(gs, 8), rtol=1e-4, atol=1e-5)


def test_prior_needs_dataset_size():
    with pytest.raises(ValueError, match="n_data"):
        methods.map(models.mlp([2, 2]), likelihoods.categorical(), optim.sgd(0.1), prior=priors.normal(1.0))
    with pytest.raises(ValueError, match="unknown reduction"):
        methods.map(models.mlp([2, 2]), likelihoods.categorical(), optim.sgd(0.1), reduction="avg")


def test_mc_dropout_samples_are_keyed_masks(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 64, 3], dropout=0.5)
    m = methods.mc_dropout(model, likelihoods.categorical(), optim.sgd(0.01, momentum=0.9))
    st = fbnn.fit(m, m.init(fr.key(0), model.init(fr.key(0))), (x, y), fr.key(1), epochs=3,
                  batch_size=32, progress=False).state
    a = predictive(m, st, x, fr.key(5), 20)
    assert a.shape == (20, 256, 3)
    assert torch.equal(a, predictive(m, st, x, fr.key(5), 20))
    assert not torch.equal(a[0], a[1])  # different masks per draw
    samples = m.sample(st, fr.key(0), 20)
    assert samples.params["fc0.weight"].shape == (20, 64, 8)
    assert samples.params["fc0.weight"].stride(0) == 0  # views, no copies


@pytest.mark.parametrize("batches", ["shared", "independent"])
def test_ensemble_vmap_equals_a_loop_over_members(toy_classification, batches):
    x, y = toy_classification
    model = models.mlp([8, 16, 3])
    inner = _map(model, lr=0.01)
    n = 3
    ens = methods.ensemble(inner, n, resample="bernoulli", n_data=256, batches=batches)
    assert ens.streams == (n if batches == "independent" else None)
    params = methods.init_members(model, fr.key(0), n)
    st = ens.init(fr.key(1), params)
    if batches == "shared":
        idxs = [torch.arange(i, i + 32) for i in range(0, 96, 32)]
    else:  # member j sees its own examples: (n, B) indices
        idxs = [torch.stack([fr.permutation(fr.fold_in(fr.key(9), 10 * t + j), 256)[:32] for j in range(n)])
                for t in range(3)]
    batches_ = [methods.Batch(x[i], y[i], i) for i in idxs]
    step_keys = fr.split(fr.key(2), len(batches_))
    for b, k in zip(batches_, step_keys):
        st, info = ens.step(st, b, k)
    assert info["loss"].shape == (n,)
    # the same members trained one at a time with the same keys, weights and examples
    member_keys = fr.split(fr.split(fr.key(1), 2)[0], n)
    for j in range(n):
        s = inner.init(member_keys[j], tree.index(params, j))
        for b, k in zip(batches_, step_keys):
            i = b.idx if batches == "shared" else b.idx[j]
            s, _ = inner.step(s, methods.Batch(x[i], y[i], i, st.weights[j, i]), fr.split(k, n)[j])
        assert tree.allclose(s.params, tree.index(st.members.params, j), atol=1e-5, rtol=1e-5)


def test_fit_gives_ensemble_members_independent_shuffles(toy_classification):
    # batch sizes 1: a member's first step sees one example, and the members' examples differ
    x, y = toy_classification
    model = models.mlp([8, 4, 3])
    seen = []

    def spy_step(state, batch, key):
        seen.append(batch.idx.clone())
        return state, {"loss": torch.zeros(())}

    spy = methods.Method(lambda k, p: 0, spy_step, None, lambda s, x, y: None, model, False, "spy", 4)
    fbnn.fit(spy, 0, (x, y), fr.key(0), epochs=2, batch_size=64, progress=False)
    assert all(i.shape == (4, 64) for i in seen[:4]) and seen[-1].shape == (4, 64)
    epoch0 = torch.cat(seen[:4], dim=1)
    for j in range(4):  # each stream is a permutation of the data within an epoch
        assert torch.equal(epoch0[j].sort().values, torch.arange(256))
    assert not torch.equal(epoch0[0], epoch0[1])
    assert not torch.equal(epoch0, torch.cat(seen[4:], dim=1))


@pytest.mark.parametrize("resample", [None, "bernoulli"])
def test_a_one_member_ensemble_fits_as_its_member_on_its_own_stream(toy_classification, resample):
    # n = 1 still takes stacked (1, B) batches: fit must build them from one stream's shuffle
    x, y = toy_classification
    model = models.mlp([8, 16, 3])
    inner = _map(model, lr=0.01)
    ens = methods.ensemble(inner, 1, resample=resample, n_data=256)
    assert ens.streams == 1
    params = methods.init_members(model, fr.key(0), 1)
    state = ens.init(fr.key(1), params)
    res = fbnn.fit(ens, state, (x, y), fr.key(3), epochs=2, batch_size=100, progress=False)
    s = inner.init(fr.split(fr.split(fr.key(1), 2)[0], 1)[0], tree.index(params, 0))
    for epoch in range(2):
        shuffle_key, step_base = epoch_keys(fr.key(3), epoch)
        order = fr.permutation(fr.split(shuffle_key, 1)[0], 256)
        for i, lo in enumerate(range(0, 256, 100)):
            idx = order[lo:lo + 100]
            weight = None if resample is None else state.weights[0, idx]
            s, _ = inner.step(s, methods.Batch(x[idx], y[idx], idx, weight),
                              fr.split(fr.fold_in(step_base, i), 1)[0])
    assert tree.allclose(s.params, tree.index(res.state.members.params, 0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resample", ["bernoulli", "bootstrap"])
def test_subset_batches_train_each_member_on_its_own_examples_as_a_loop_does(toy_classification, resample):
    # the seed's SubsetRandomSampler: member j takes full batches of its own examples only; the
    # member whose examples run out first is padded at weight 0 and must not move (momentum!)
    x, y = toy_classification
    model = models.mlp([8, 16, 3])
    inner = methods.map(model, likelihoods.categorical(), optim.sgd(0.01, momentum=0.9))
    n, batch_size = 3, 10
    ens = methods.ensemble(inner, n, resample=resample, n_data=256, fraction=0.7, batches="subset")
    params = methods.init_members(model, fr.key(0), n)
    state = ens.init(fr.key(1), params)
    subsets = ens.subsets(state)
    assert [s.numel() for s in subsets] == state.weights.sum(1).long().tolist()
    steps = [-(-s.numel() // batch_size) for s in subsets]
    if resample == "bernoulli":  # subset sizes 169, 179, 180: member 0 is padded for a whole step
        assert len(set(steps)) > 1
    else:  # round(0.7 * 256) draws each, with repeats
        assert len(set(steps)) == 1 and any(sub.unique().numel() < sub.numel() for sub in subsets)
    result = fbnn.fit(ens, state, (x, y), fr.key(2), epochs=2, batch_size=batch_size, progress=False)
    for j in range(n):
        s = tree.index(state.members, j)
        for epoch in range(2):
            seen = []
            for _, idx, weight, step_key in subset_epoch_batches(fr.key(2), epoch, subsets, batch_size):
                assert idx.shape == weight.shape == (n, batch_size)
                rows = idx[j][weight[j] > 0]
                seen.append(rows)
                if rows.numel():
                    s, _ = inner.step(s, methods.Batch(x[rows], y[rows], rows), fr.split(step_key, n)[j])
            assert torch.equal(torch.cat(seen).sort().values, subsets[j].sort().values)
        assert tree.allclose(s.params, tree.index(result.state.members.params, j), atol=1e-5, rtol=1e-5)
        assert int(tree.index(result.state.members, j).count) == 2 * steps[j]


def test_subset_batches_need_a_resample_and_the_padding_mask(toy_classification):
    x, y = toy_classification
    inner = _map(models.mlp([8, 3]))
    with pytest.raises(ValueError, match="needs resample"):
        methods.ensemble(inner, 2, batches="subset")
    ens = methods.ensemble(inner, 2, resample="bernoulli", n_data=256, batches="subset")
    state = ens.init(fr.key(0), methods.init_members(models.mlp([8, 3]), fr.key(0), 2))
    idx = torch.stack([torch.arange(8), torch.arange(8, 16)])
    with pytest.raises(ValueError, match="padding mask"):
        ens.step(state, methods.Batch(x[idx], y[idx], idx), fr.key(1))


def test_ensemble_resampling_weights():
    model = models.mlp([2, 3, 2])
    params = methods.init_members(model, fr.key(0), 4)
    bern = methods.ensemble(_map(model), 4, resample="bernoulli", n_data=10_000, fraction=0.8)
    w = bern.init(fr.key(1), params).weights
    assert w.shape == (4, 10_000) and set(w.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(w.mean(1), torch.full((4,), 0.8), atol=0.02)
    assert not torch.equal(w[0], w[1])
    boot = methods.ensemble(_map(model), 4, resample="bootstrap", n_data=1000, fraction=1.0)
    w = boot.init(fr.key(1), params).weights
    assert torch.equal(w.sum(1), torch.full((4,), 1000.0))
    assert 0.6 < float((w[0] > 0).float().mean()) < 0.66  # 1 - 1/e of the points appear


def test_ensemble_bad_arguments():
    inner = _map(models.mlp([2, 2]))
    with pytest.raises(ValueError, match="unknown resample"):
        methods.ensemble(inner, 3, resample="jackknife")
    with pytest.raises(ValueError, match="n_data"):
        methods.ensemble(inner, 3, resample="bernoulli")
    with pytest.raises(ValueError, match="positive int"):
        methods.ensemble(inner, 0)
    ens = methods.ensemble(inner, 3)
    with pytest.raises(ValueError, match="leading axis of size 3"):
        ens.init(fr.key(0), methods.init_members(models.mlp([2, 2]), fr.key(0), 2))
    st = ens.init(fr.key(0), methods.init_members(models.mlp([2, 2]), fr.key(0), 3))
    with pytest.raises(ValueError, match="multiple"):
        ens.sample(st, fr.key(0), 4)


def test_ensemble_of_mc_dropout_nests(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 16, 3], dropout=0.3)
    inner = methods.mc_dropout(model, likelihoods.categorical(), optim.sgd(0.01))
    ens = methods.ensemble(inner, 2)
    st = ens.init(fr.key(0), methods.init_members(model, fr.key(1), 2))
    st = fbnn.fit(ens, st, (x, y), fr.key(2), epochs=1, batch_size=64, progress=False).state
    p = predictive(ens, st, x, fr.key(3), 6)
    assert p.shape == (6, 256, 3) and not torch.equal(p[0], p[1])


@pytest.mark.parametrize("wrap", ["map", "ensemble"])
def test_conv_net_with_batchnorm_trains(small_conv_bn_net, wrap):
    model = models.from_module(small_conv_bn_net, input_shape=(1, 6, 6))
    x = fr.normal(fr.key(9), (256, 36))
    y = (x.reshape(256, 6, 6)[:, :3].mean((1, 2)) > 0).long()
    m = methods.map(model, likelihoods.categorical(), optim.adam(1e-2))
    params = model.init(fr.key(0))
    if wrap == "ensemble":
        m = methods.ensemble(m, 2, resample="bootstrap", n_data=256)
        params = methods.init_members(model, fr.key(0), 2)
    res = fbnn.fit(m, m.init(fr.key(1), params), (x, y), fr.key(2), epochs=8, batch_size=32, progress=False)
    assert res.history[-1]["loss"] < 0.6 * res.history[0]["loss"]
    members = res.state.members if wrap == "ensemble" else res.state
    assert not torch.equal(members.model_state["1.running_mean"], torch.zeros_like(
        members.model_state["1.running_mean"]))  # BatchNorm statistics were tracked
    probs = predictive(m, res.state, x, fr.key(3), 2).mean(0)
    assert (probs.argmax(-1) == y).float().mean() > 0.85


def test_map_fit_equals_a_plain_torch_training_loop():
    # The seed's MAP loop in plain PyTorch (nn.Linear stack, summed cross-entropy,
    # torch.optim.SGD with momentum) on the same initial weights and batch order.
    x = fr.normal(fr.key(0), (300, 20))
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0.5).long()
    model = models.mlp([20, 32, 32, 3])
    params = model.init(fr.key(1))
    m = methods.map(model, likelihoods.categorical(), optim.sgd(1e-3, momentum=0.5))
    res = fbnn.fit(m, m.init(fr.key(2), params), (x, y), fr.key(3), epochs=3, batch_size=50, progress=False)

    with torch.random.fork_rng(devices=[]):
        net = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                  torch.nn.ReLU(), torch.nn.Linear(32, 3))
    with torch.no_grad():
        for i in range(3):
            net[2 * i].weight.copy_(params[f"fc{i}.weight"])
            net[2 * i].bias.copy_(params[f"fc{i}.bias"])
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.5)
    for epoch in range(3):
        order = fr.permutation(epoch_keys(fr.key(3), epoch)[0], 300)
        for lo in range(0, 300, 50):
            idx = order[lo:lo + 50]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx], reduction="sum").backward()
            opt.step()
    for i in range(3):
        assert torch.allclose(res.state.params[f"fc{i}.weight"], net[2 * i].weight, atol=1e-6)
        assert torch.allclose(res.state.params[f"fc{i}.bias"], net[2 * i].bias, atol=1e-6)
