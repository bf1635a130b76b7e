import os

import pytest
import torch

import fbnn
from fbnn import likelihoods, methods, models, optim, tree
from fbnn import random as fr
from fbnn.fit import Collector, load_checkpoint, save_checkpoint


def _setup(dropout=0.2):
    model = models.mlp([8, 16, 3], dropout=dropout)
    m = methods.mc_dropout(model, likelihoods.categorical(), optim.sgd(0.01, momentum=0.9))
    return model, m, m.init(fr.key(0), model.init(fr.key(0)))


def test_same_key_same_bits_for_a_whole_fit(toy_classification):
    _, m, st = _setup()
    a = fbnn.fit(m, st, toy_classification, fr.key(7), epochs=2, batch_size=50, progress=False)
    b = fbnn.fit(m, st, toy_classification, fr.key(7), epochs=2, batch_size=50, progress=False)
    c = fbnn.fit(m, st, toy_classification, fr.key(8), epochs=2, batch_size=50, progress=False)
    assert tree.equal(a.state, b.state)
    assert not tree.equal(a.state.params, c.state.params)


def test_fit_leaves_torch_global_rng_alone(toy_classification):
    _, m, st = _setup()
    rng = torch.random.get_rng_state()
    fbnn.fit(m, st, toy_classification, fr.key(7), epochs=1, batch_size=50, progress=False)
    assert torch.equal(rng, torch.random.get_rng_state())
    torch.manual_seed(123)
    a = fbnn.fit(m, st, toy_classification, fr.key(7), epochs=1, batch_size=50, progress=False)
    torch.manual_seed(456)
    b = fbnn.fit(m, st, toy_classification, fr.key(7), epochs=1, batch_size=50, progress=False)
    assert tree.equal(a.state, b.state)


def test_resume_is_bit_identical(toy_classification, tmp_path):
    _, m, st = _setup()
    kw = dict(batch_size=50, progress=False)
    full = fbnn.fit(m, st, toy_classification, fr.key(3), epochs=4, **kw)
    ckpt = tmp_path / "run" / "ckpt.pt"
    fbnn.fit(m, st, toy_classification, fr.key(3), epochs=2, checkpoint=ckpt, **kw)  # "interrupted"
    assert load_checkpoint(ckpt)["epoch"] == 2
    resumed = fbnn.fit(m, st, toy_classification, fr.key(3), epochs=4, checkpoint=ckpt, resume=True, **kw)
    assert tree.equal(full.state, resumed.state)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    assert os.listdir(ckpt.parent) == ["ckpt.pt"]  # no temporary file left behind


def test_resume_refuses_a_different_run(toy_classification, tmp_path):
    _, m, st = _setup()
    ckpt = tmp_path / "ckpt.pt"
    fbnn.fit(m, st, toy_classification, fr.key(3), epochs=1, batch_size=50, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="different run"):
        fbnn.fit(m, st, toy_classification, fr.key(4), epochs=2, batch_size=50, checkpoint=ckpt,
                 resume=True, progress=False)


def test_interrupted_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)


def test_non_finite_loss_stops_naming_epoch_and_step(toy_classification):
    model = models.mlp([8, 16, 3])
    m = methods.map(model, likelihoods.categorical(), optim.sgd(1e6))
    st = m.init(fr.key(0), model.init(fr.key(0)))
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at epoch \d+, step \d+"):
        fbnn.fit(m, st, toy_classification, fr.key(0), epochs=5, batch_size=32, progress=False)


@pytest.mark.parametrize("x, y, match", [
    (torch.zeros(10, 7), torch.zeros(10, dtype=torch.long), "do not fit the model"),
    (torch.full((10, 8), float("nan")), torch.zeros(10, dtype=torch.long), "NaN or inf in 10 row"),
    (torch.zeros(10, 8), torch.full((10,), 3), r"labels must lie in \[0, 2\]"),
    (torch.zeros(10, 8), torch.zeros(9, dtype=torch.long), "10 rows but y has 9"),
])
def test_bad_data_is_named(x, y, match):
    _, m, st = _setup()
    with pytest.raises(ValueError, match=match):
        fbnn.fit(m, st, (x, y), fr.key(0), epochs=1, batch_size=4, progress=False)


def test_bad_run_settings(toy_classification):
    _, m, st = _setup()
    with pytest.raises(ValueError, match="batch_size"):
        fbnn.fit(m, st, toy_classification, fr.key(0), epochs=1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="burn_in"):
        fbnn.fit(m, st, toy_classification, fr.key(0), epochs=3, batch_size=32, progress=False,
                 collector=Collector(burn_in=3))


def test_collector_burn_in_thinning_and_fifo(toy_classification):
    _, m, st = _setup()
    col = Collector(burn_in=2, thin=3, capacity=2)
    res = fbnn.fit(m, st, toy_classification, fr.key(0), epochs=12, batch_size=128, progress=False,
                   collector=col)
    # kept after epochs 2, 5, 8, 11; the FIFO holds the last two
    assert [col.wants(e) for e in range(12)].count(True) == 4
    assert res.samples.params["fc0.weight"].shape == (2, 16, 8)
    assert tree.equal(tree.index(res.samples.params, 1), res.state.params)


def test_collector_survives_resume(toy_classification, tmp_path):
    _, m, st = _setup()
    kw = dict(batch_size=128, progress=False)
    full = fbnn.fit(m, st, toy_classification, fr.key(1), epochs=6, collector=Collector(thin=2), **kw)
    ckpt = tmp_path / "c.pt"
    fbnn.fit(m, st, toy_classification, fr.key(1), epochs=3, checkpoint=ckpt, collector=Collector(thin=2), **kw)
    res = fbnn.fit(m, st, toy_classification, fr.key(1), epochs=6, checkpoint=ckpt, resume=True,
                   collector=Collector(thin=2), **kw)
    assert tree.equal(full.samples, res.samples)


def test_collector_takes_one_draw_per_chain(toy_classification):
    model = models.mlp([8, 4, 3])
    chains = methods.ensemble(methods.sgld(model, likelihoods.categorical(), None, n_data=256, lr=1e-4), 3)
    st = chains.init(fr.key(0), methods.init_members(model, fr.key(1), 3))
    col = Collector(burn_in=1, thin=1, capacity=2, draws=3)
    res = fbnn.fit(chains, st, toy_classification, fr.key(2), epochs=4, batch_size=128, progress=False,
                   collector=col)
    assert res.samples.params["fc0.weight"].shape == (6, 4, 8)  # 2 collections x 3 chains
    assert tree.equal(tree.index(res.samples.params, slice(3, 6)), res.state.members.params)


def test_collector_on_disk_equals_in_memory_and_resumes(toy_classification, tmp_path):
    _, m, st = _setup()
    kw = dict(batch_size=128, progress=False)
    memory = fbnn.fit(m, st, toy_classification, fr.key(1), epochs=6, collector=Collector(thin=1, capacity=3), **kw)
    disk = tmp_path / "samples"
    ckpt = tmp_path / "c.pt"
    fbnn.fit(m, st, toy_classification, fr.key(1), epochs=4, checkpoint=ckpt,
             collector=Collector(thin=1, capacity=3, directory=disk), **kw)
    col = Collector(thin=1, capacity=3, directory=disk)
    res = fbnn.fit(m, st, toy_classification, fr.key(1), epochs=6, checkpoint=ckpt, resume=True,
                   collector=col, **kw)
    assert sorted(os.listdir(disk)) == ["sample_00000003.pt", "sample_00000004.pt", "sample_00000005.pt"]
    assert tree.equal(memory.samples, res.samples)
    assert [tree.leaves(c)[0].shape[0] for c in col.iter_samples()] == [1, 1, 1]
