"""`ProbeBank` (probe.split_by): rows go to their task's probe and buffer, each key fits and warms up on its own, a
key without rows keeps its probe, and the state round-trips (older single-probe checkpoints included)."""

import pytest
import torch

from poise.algo.buffer import FeatureBuffer
from poise.algo.probe import PromptProbe, RidgeProbe
from poise.algo.probe_bank import ProbeBank
from poise.config.train_config import ProbeConfig

CFG = ProbeConfig(prompt_dim=3, trajectory_dim=3, buffer_size=512, buffer_steps=0)


def _rows(n: int, value: float, seed: int) -> dict:
    """n rows whose target depends on the prompt features' first column (slope `value`)."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randn(n, 6, generator=g)
    return {"prompt": prompt, "trajectory": torch.randn(n, 5, generator=g), "entropy": torch.randn(n, 2, generator=g),
            "targets": (0.5 + value * prompt[:, 0]).clamp(0, 1)}


def test_rows_go_to_their_tasks_probe_and_a_task_without_rows_keeps_its_own():
    bank = ProbeBank(["a", "b"], "full", CFG)
    idx = bank.index(["a"] * 40 + ["b"] * 40)
    assert idx.tolist() == [0] * 40 + [1] * 40
    ra, rb = _rows(40, 0.3, 0), _rows(40, -0.3, 1)
    bank.add({k: torch.cat([ra[k], rb[k]]) for k in ra}, idx, step=1, min_fit_steps=1)
    assert len(bank.buffers["a"]) == len(bank.buffers["b"]) == 40 and bank.rows == 80
    # each probe learned its own task's sign: a shared probe would average them away
    pa = bank.predict(_rows(200, 0.3, 2), torch.zeros(200, dtype=torch.long))
    pb = bank.predict(_rows(200, 0.3, 2), torch.ones(200, dtype=torch.long))
    x = _rows(200, 0.3, 2)["prompt"][:, 0]
    assert torch.corrcoef(torch.stack([pa, x]))[0, 1] > 0.5 and torch.corrcoef(torch.stack([pb, x]))[0, 1] < -0.5
    before = bank.probes["b"].state_dict()
    ra = _rows(30, 0.3, 3)
    bank.add(ra, torch.zeros(30, dtype=torch.long), step=2, min_fit_steps=1)  # step 2: rows of task a only
    after = bank.probes["b"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and len(bank.buffers["b"]) == 40
    assert len(bank.buffers["a"]) == 70
    with pytest.raises(ValueError, match=r"rows of \['c'\], which have no probe"):
        bank.index(["a", "c"])


def test_each_key_is_fitted_and_warms_up_from_its_own_first_rows():
    bank = ProbeBank(["a", "b"], "full", CFG)
    a = torch.zeros(20, dtype=torch.long)
    for step in (1, 2):
        bank.add(_rows(20, 0.3, step), a, step, min_fit_steps=2)
    assert bank.probes["a"].fitted and not bank.probes["b"].fitted  # fitted once it spans min_fit_steps steps
    bank.add(_rows(20, 0.3, 9), torch.ones(20, dtype=torch.long), step=3, min_fit_steps=1)
    idx = torch.tensor([0, 1])
    assert bank.first_step == {"a": 1, "b": 3}
    assert bank.ready(idx, step=4, warmup_steps=3).tolist() == [True, False]  # a: 4 - 1 >= 3; b: 4 - 3 < 3
    assert bank.ready(idx, step=6, warmup_steps=3).tolist() == [True, True]
    pred = bank.predict(_rows(2, 0.3, 4), idx)
    assert torch.isfinite(pred).all()
    empty = ProbeBank(["a", "b"], "full", CFG)
    assert torch.isnan(empty.predict(_rows(2, 0.3, 4), idx)).all() and not empty.any_fitted


def test_without_a_split_one_probe_takes_every_row_and_warms_up_after_warmup_steps():
    bank = ProbeBank(["all"], "full", CFG)
    assert not bank.split and bank.index(["x", "y"]).tolist() == [0, 0]
    bank.add(_rows(20, 0.3, 0), torch.zeros(20, dtype=torch.long), step=1, min_fit_steps=1)
    assert not bank.ready(torch.zeros(1, dtype=torch.long), step=16, warmup_steps=16).item()
    assert bank.ready(torch.zeros(1, dtype=torch.long), step=17, warmup_steps=16).item()  # step > warmup_steps


def test_a_prompt_bank_fits_prompt_probes_on_the_prompt_block():
    bank = ProbeBank(["all"], "prompt", CFG)
    rows = _rows(60, 0.3, 0)
    bank.add(rows, torch.zeros(60, dtype=torch.long), step=1, min_fit_steps=1)
    probe = bank.probes["all"]
    assert isinstance(probe, PromptProbe) and probe.fitted
    assert bank.buffers["all"].tensors()[1].shape == (60, 1)  # the trajectory block is one zero column
    other = _rows(60, 0.3, 0)
    other["trajectory"] = other["trajectory"] * 100  # the prompt probe does not read it
    idx = torch.zeros(60, dtype=torch.long)
    assert torch.equal(bank.predict(rows, idx), bank.predict(other, idx))
    assert torch.equal(bank.predict(rows, idx), probe.predict(rows["prompt"]))


@pytest.mark.parametrize("kind", ["full", "prompt"])
def test_state_round_trips_bit_identically(kind):
    bank = ProbeBank(["a", "b"], kind, CFG)
    bank.add({k: torch.cat([v, w]) for (k, v), w in zip(_rows(30, 0.3, 0).items(), _rows(30, 0.1, 1).values())},
             torch.tensor([0] * 30 + [1] * 30), step=1, min_fit_steps=1)
    bank.add(_rows(10, 0.3, 2), torch.zeros(10, dtype=torch.long), step=2, min_fit_steps=1)
    sd = bank.state_dict()
    back = ProbeBank(["a", "b"], kind, CFG)
    back.load_state_dict(sd)
    x, idx = _rows(50, 0.2, 5), torch.tensor([0, 1] * 25)
    assert torch.equal(bank.predict(x, idx), back.predict(x, idx)) and back.first_step == bank.first_step
    for k in ("a", "b"):
        s1, s2 = bank.buffers[k].state_dict(), back.buffers[k].state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[n], s2[n]) for n in s1)
    with pytest.raises(ValueError, match="this run's"):
        ProbeBank(["a"], kind, CFG).load_state_dict(sd)


def test_a_checkpoint_from_before_the_bank_loads_as_its_one_probe():
    rows = _rows(40, 0.3, 0)
    buf = FeatureBuffer(512)
    buf.add(rows["prompt"], rows["trajectory"], rows["entropy"], rows["targets"], step=1)
    probe = RidgeProbe(3, 3).fit_moments(buf.moments())
    bank = ProbeBank(["all"], "full", CFG)
    bank.load_state_dict({"probe": probe.state_dict(), "probe_meta": probe.metadata(), "buffer": buf.state_dict(),
                          "buffer_meta": buf.metadata()})
    idx = torch.zeros(40, dtype=torch.long)
    assert torch.equal(bank.predict(rows, idx), probe.predict(rows["prompt"], rows["trajectory"], rows["entropy"]))
    assert bank.first_step == {"all": 1} and len(bank.buffers["all"]) == 40


def test_a_probe_of_the_wrong_kind_is_refused_by_name(tmp_path):
    from poise.algo.probe import load_probe, save_probe

    rows = _rows(40, 0.3, 0)
    buf = FeatureBuffer(512)
    buf.add(rows["prompt"], rows["trajectory"], rows["entropy"], rows["targets"], step=1)
    save_probe(PromptProbe(3).fit_moments(buf.moments()), tmp_path / "p", {})
    assert isinstance(load_probe(tmp_path / "p"), PromptProbe)
    with pytest.raises(ValueError, match="holds a prompt probe .* this needs a full probe"):
        load_probe(tmp_path / "p", kind="full")
    with pytest.raises(ValueError, match="holds a prompt probe"):
        ProbeBank(["all"], "full", CFG).load(tmp_path / "p", {})
