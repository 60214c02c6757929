"""POISE from one rollout per prompt (`poise_single`: algorithm.advantage poise_prompt, G = 1) and its comparator
REINFORCE with a leave-one-out batch mean (`reinforce_loo`: batch_loo): the advantages the update gets, the prompt
probe fitted on earlier steps only with each row's own reward, the warm-up, exact resumption, the CLI and compare."""

import json

import pytest
import torch
import yaml

from poise.algo.advantages import batch_loo_advantages
from poise.algo.probe_bank import ProbeBank
from poise.commands.cli import main
from poise.io.tracking import read_metrics
from poise.rollout.collect import Collected
from poise.train.loop import train
from conftest import resumed_and_full


def _record(monkeypatch) -> list:
    """Log, in order: ('rewards', (B,)), ('predict', (B,)), ('add', step, targets), ('advantages', (B,))."""
    log = []
    init, predict, add = Collected.__init__, ProbeBank.predict, ProbeBank.add

    def collected(self, *a, **k):
        init(self, *a, **k)
        log.append(("rewards", self.rewards.clone()))

    def predicting(self, features, index):
        out = predict(self, features, index)
        log.append(("predict", out.clone()))
        return out

    def adding(self, rows, index, step, min_fit_steps):
        log.append(("add", step, rows["targets"].clone()))
        return add(self, rows, index, step, min_fit_steps)

    import poise.train.loop as loop

    update = loop.update_phase

    def updating(state, scored, advantages):
        log.append(("advantages", advantages.detach().clone()))
        return update(state, scored, advantages)

    monkeypatch.setattr(Collected, "__init__", collected)
    monkeypatch.setattr(ProbeBank, "predict", predicting)
    monkeypatch.setattr(ProbeBank, "add", adding)
    monkeypatch.setattr(loop, "update_phase", updating)
    return log


def _steps(log: list) -> list[dict]:
    """The log split into steps: {'rewards', 'predict' (or None), 'advantages', 'add'}."""
    steps = []
    for entry in log:
        if entry[0] == "rewards":
            steps.append({"predict": None})
        steps[-1][entry[0]] = entry[1:] if entry[0] == "add" else entry[1]
    return steps


def test_poise_single_uses_the_batch_mean_then_r_minus_the_prompt_probe_fitted_on_earlier_steps(
        tiny_run, tmp_path, monkeypatch):
    log = _record(monkeypatch)
    cfg = tiny_run(tmp_path, "poise_single", **{"max_steps": 3, "rollout.prompts_per_step": 16,
                                                "optim.mini_batch_prompts": 8, "probe.warmup_steps": 1})
    assert cfg.rollout.group_size == 1 and cfg.algorithm.advantage == "poise_prompt"
    train(cfg, progress=False)
    steps = _steps(log)
    assert len(steps) == 3
    for i, s in enumerate(steps, start=1):
        r = s["rewards"]
        assert r.shape == (16,) and s["add"][0] == i  # the step's rows join the buffer after its update
        assert torch.equal(s["add"][1], r)  # the prompt probe's target: the row's own reward
    assert steps[0]["predict"] is None  # nothing fitted before step 1: the leave-one-out batch mean
    assert torch.allclose(steps[0]["advantages"], batch_loo_advantages(steps[0]["rewards"]))
    for s in steps[1:]:  # fitted on steps before this one; warm-up (1 step) over: A = r - g(x)
        assert s["predict"] is not None and torch.isfinite(s["predict"]).all()
        assert torch.allclose(s["advantages"], s["rewards"] - s["predict"])
    rows = [r for r in read_metrics(cfg.output_dir) if r.get("step", 0) >= 1]
    assert [r.get("probe/used") for r in rows] == [None, 1.0, 1.0]  # logged once a probe predicts
    assert {"probe/pearson", "probe/mae", "probe/auroc"} <= set(rows[-1])
    assert "reward/frac_zero_std_groups" not in rows[-1]  # no groups with G = 1
    assert json.loads((tmp_path / "run" / "policy" / "probe.json").read_text())["kind"] == "prompt"


def test_reinforce_loo_uses_the_batch_leave_one_out_mean(tiny_run, tmp_path, monkeypatch):
    log = _record(monkeypatch)
    cfg = tiny_run(tmp_path, "reinforce_loo", **{"rollout.prompts_per_step": 16, "optim.mini_batch_prompts": 8})
    assert cfg.rollout.group_size == 1
    train(cfg, progress=False)
    steps = _steps(log)
    assert len(steps) == 2 and all("add" not in s for s in steps)  # no probe
    for s in steps:
        r = s["rewards"].double()
        assert torch.allclose(s["advantages"].double(), r - (r.sum() - r) / (len(r) - 1), atol=1e-6)
    assert not (tmp_path / "run" / "policy" / "probe.json").exists()


def test_a_single_rollout_run_resumes_exactly(tiny_run, tmp_path):
    over = {"rollout.prompts_per_step": 16, "optim.mini_batch_prompts": 8, "max_steps": 4}
    full = resumed_and_full(tiny_run, tmp_path, "poise_single", **over)
    assert len(full) == 4
    assert full[-1]["probe/used"] == 1.0


@pytest.mark.parametrize("preset", ["poise_single", "reinforce_loo"])
def test_the_single_rollout_presets_run_from_the_cli(preset, micro_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", preset, "--model.name", str(micro_dir), "--task.name", "parity_test",
                 "--max_steps", "1", "--rollout.prompts_per_step", "8", "--optim.mini_batch_prompts", "4",
                 "--rollout.max_new_tokens", "8", "--probe.buffer_size", "64", "--output_dir", str(out)]) == 0
    (row,) = [r for r in read_metrics(out) if r.get("step", 0) >= 1]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert row["step"] == 1 and 0.0 <= row["reward/mean"] <= 1.0
    assert saved["rollout"]["group_size"] == 1 and saved["algorithm"]["name"] == preset


def test_compare_builds_runs_of_the_single_rollout_presets(tmp_path):
    from poise.commands.compare import run_values
    from poise.config.command_configs import CompareConfig
    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig

    cfg = CompareConfig(methods=["poise_single", "reinforce_loo", "poise"], output_dir=str(tmp_path))
    for m in cfg.methods:
        run = build_config(TrainConfig, run_values(cfg, m, 0))
        assert run.rollout.prompts_per_step * run.rollout.group_size == 128  # the same samples a step
        assert (run.rollout.group_size == 1) == (m != "poise")


def test_help_documents_the_split_and_the_new_advantages(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--probe.split_by" in out and "poise_prompt" in out and "batch_loo" in out
