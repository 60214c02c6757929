"""probe.split_by task in the loop: on a mixture each task's rows feed and are predicted by its own probe, per-task
probe metrics are logged (by the shared probe too), each probe is saved and loaded, and the run resumes exactly."""

import json

import pytest
import torch

from poise.algo.probe_bank import ProbeBank
from poise.commands.cli import main
from poise.io.tracking import read_metrics
from poise.train.loop import train
from conftest import resumed_and_full

MIX = {"task.name": "parity_test+chain_sum", "task.levels": ["parity_test/t2d1", "chain_sum/t2d1"],
       "max_steps": 3, "probe.buffer_size": 128}
TASKS = ("parity_test", "chain_sum")


def _steps(rows):
    return [r for r in rows if r.get("step", 0) >= 1]


def test_each_task_has_its_own_probe_buffer_and_metrics(tiny_run, tmp_path, monkeypatch):
    added = []
    add = ProbeBank.add

    def recording(self, rows, index, step, min_fit_steps):
        added.append((step, index.clone()))
        return add(self, rows, index, step, min_fit_steps)

    monkeypatch.setattr(ProbeBank, "add", recording)
    cfg = tiny_run(tmp_path, **{**MIX, "probe.split_by": "task"})
    train(cfg, progress=False)
    assert len(added) == 3 and all(set(i.tolist()) <= {0, 1} for _, i in added)
    assert any(len(set(i.tolist())) == 2 for _, i in added)  # both tasks' rows arrive, each to its own probe
    rows = _steps(read_metrics(cfg.output_dir))
    for t in TASKS:
        assert {f"probe/{t}/pearson", f"probe/{t}/mae", f"probe/{t}/auroc"} <= set(rows[-1])
        saved = tmp_path / "run" / "policy" / "probes" / t
        assert json.loads((saved / "probe.json").read_text())["kind"] == "full"
    assert not (tmp_path / "run" / "policy" / "probe.json").exists()
    assert rows[-1]["probe/used"] == 1.0  # warm-up 1 step, both tasks from step 1


def test_the_shared_probe_logs_per_task_metrics_too(tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, **MIX)
    train(cfg, progress=False)
    last = _steps(read_metrics(cfg.output_dir))[-1]
    assert all(f"probe/{t}/pearson" in last for t in TASKS) and "probe/pearson" in last
    assert (tmp_path / "run" / "policy" / "probe.json").exists()


def test_a_split_run_resumes_exactly(tiny_run, tmp_path):
    over = {**MIX, "probe.split_by": "task", "max_steps": 4}
    full = resumed_and_full(tiny_run, tmp_path, **over)
    assert len(_steps(full)) == 4


def test_split_probes_load_per_task_and_give_baselines_from_the_first_step(tiny_run, tmp_path, monkeypatch):
    first = tiny_run(tmp_path / "a", **{**MIX, "probe.split_by": "task", "max_steps": 2})
    train(first, progress=False)
    policy = tmp_path / "a" / "run" / "policy"
    cfg = tiny_run(tmp_path / "b", **{**MIX, "probe.split_by": "task", "max_steps": 1, "probe.load": str(policy),
                                      "probe.warmup_steps": 5})
    train(cfg, progress=False)
    (row,) = _steps(read_metrics(cfg.output_dir))
    assert row["probe/used"] == 1.0  # loaded probes skip the warm-up
    with pytest.raises(FileNotFoundError, match=r"probes/chain_sum"):
        train(tiny_run(tmp_path / "c", **{**MIX, "probe.split_by": "task", "max_steps": 1,
                                          "probe.load": str(tmp_path / "nowhere")}), progress=False)


def test_a_task_warming_up_gets_rloo_while_a_ready_one_gets_the_probe():
    """compute_advantages with readiness per row: a group whose probe is not ready yet gets RLOO."""
    from poise.algo.advantages import poise_advantages, rloo_advantages
    from poise.config.train_config import TrainConfig

    cfg = TrainConfig()
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    pred = torch.tensor([0.3, 0.6, float("nan"), float("nan")])
    ready = torch.tensor([True, True, False, False])
    from poise.train.loop import compute_advantages

    adv, _, used = compute_advantages(cfg, r, pred, ready)
    assert torch.allclose(adv[:2], poise_advantages(r[:2].view(1, 2), pred[:2].view(1, 2)).flatten())
    assert torch.allclose(adv[2:], rloo_advantages(r[2:].view(1, 2)).flatten()) and used == 0.5


@pytest.mark.parametrize("argv, message", [
    (["--probe.split_by", "task"], "probe.split_by: task needs a mixture"),
    (["--probe.split_by", "task", "--config", "rloo", "--task.name", "chain_sum+countdown"],
     "probe.split_by: task needs a probe baseline"),
])
def test_a_split_without_a_mixture_or_a_probe_is_refused(argv, message, tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "run"), "--max-steps", "1", *argv]) == 2
    assert message in capsys.readouterr().err
