"""The paper's recipes as presets (configs/paper/*.yaml): each holds the official settings, and each runs 2 steps on
the CPU with the model and sizes overridden to tiny ones, on its own Hub data (DAPO-Math-17k for training, MATH-500
and AIME 2024 for validation) read from the Hub stand-in, validation rows included."""

import json
import math
from pathlib import Path

import pytest

from hub_fixtures import offline_hub
from poise.commands.cli import main
from poise.config.loading import build_config, load_yaml
from poise.config.train_config import TrainConfig

PRESETS = ["paper/qwen3_4b_poise", "paper/qwen3_4b_dapo", "paper/r1_distill_1p5b_poise", "paper/r1_distill_1p5b_dapo"]
LIGHT = str(Path(__file__).parent / "reward_functions.py")
# What is made tiny: the model (and so the probe layer and its dimensions), the batch, the lengths, the pools, the
# validation's size; and the learning rate and reward, so that 2 steps visibly move a micro model that cannot do math.
TINY = {"rollout.engine": "hf", "rollout.engine_dtype": "auto", "rollout.max_new_tokens": 8, "task.train_size": 16,
        "task.max_prompt_tokens": 400, "probe.layer": 1, "probe.k": 3, "probe.prompt_dim": 4,
        "probe.trajectory_dim": 4, "probe.warmup_steps": 1, "probe.min_fit_steps": 1, "max_steps": 2,
        "eval.num_problems": 2, "eval.k": 2, "eval.max_new_tokens": 8, "eval.batch_size": 2, "report_to": "none",
        "reward.overlong_buffer": 0, "optim.lr": 1e-2, "optim.warmup_steps": 0, "checkpoint.every": 0,
        "reward.function": f"{LIGHT}:trl_parity", "threads": 1}


def tiny(preset: str) -> dict:
    group = load_yaml(preset)["rollout.group_size"]
    return {**TINY, "rollout.prompts_per_step": 4, "optim.mini_batch_prompts": 2, "probe.buffer_size": 16 * group}


def test_presets_hold_the_official_settings():
    poise = build_config(TrainConfig, load_yaml("paper/qwen3_4b_poise"))
    assert poise.model.name == "Qwen/Qwen3-4B" and poise.task.name == "dapo_math"
    assert (poise.rollout.prompts_per_step, poise.rollout.group_size, poise.optim.mini_batch_prompts) == (256, 2, 32)
    assert (poise.loss.clip_low, poise.loss.clip_high, poise.loss.dual_clip, poise.loss.kl_coef) == (0.2, 0.28, 10, 0)
    assert (poise.optim.lr, poise.optim.warmup_steps, poise.optim.weight_decay, poise.optim.grad_clip) == \
        (1e-6, 10, 0.01, 1.0)
    assert (poise.rollout.max_new_tokens, poise.task.max_prompt_tokens, poise.rollout.engine) == (8192, 4096, "vllm")
    assert (poise.probe.alpha, poise.probe.prompt_dim, poise.probe.trajectory_dim, poise.probe.buffer_size) == \
        (100, 32, 64, 4096)
    assert (poise.probe.warmup_steps, poise.probe.min_fit_steps, poise.max_steps) == (16, 8, 200)
    assert (poise.eval.every, poise.eval.temperature, poise.eval.top_p) == (40, 0.6, 0.95)
    assert poise.eval.tasks == ["math500", "aime24"]
    dapo = build_config(TrainConfig, load_yaml("paper/qwen3_4b_dapo"))
    assert dapo.algorithm.dynamic_sampling and dapo.algorithm.advantage == "grpo" and dapo.reward.overlong_buffer
    samples = lambda c: c.rollout.prompts_per_step * c.rollout.group_size  # noqa: E731
    assert samples(dapo) == samples(poise) and dapo.task == poise.task and dapo.eval == poise.eval
    small = build_config(TrainConfig, load_yaml("paper/r1_distill_1p5b_poise"))
    assert small.model.name == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    memory = ("micro_batch_tokens", "logit_chunk_tokens")  # the one thing sized to the model
    assert {k: v for k, v in vars(small.optim).items() if k not in memory} == \
        {k: v for k, v in vars(poise.optim).items() if k not in memory}
    assert poise.model.gradient_checkpointing and (poise.optim.micro_batch_tokens, small.optim.micro_batch_tokens) \
        == (8704, 34816)


def test_print_config_prints_the_resolved_preset(capsys):
    assert main(["train", "--config", "paper/qwen3_4b_dapo", "--print-config", "--max_steps", "7"]) == 0
    out = capsys.readouterr().out
    import yaml

    cfg = yaml.safe_load(out)
    assert cfg["max_steps"] == 7 and cfg["rollout"]["group_size"] == 8 and cfg["model"]["name"] == "Qwen/Qwen3-4B"


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_runs_two_steps_tiny(preset, micro_dir, hub_cache, monkeypatch, tmp_path):
    from conftest import train_and_diff

    offline_hub(monkeypatch, hub_cache, tmp_path / "datasets_cache")
    values = {**load_yaml(preset), **tiny(preset), "model.name": str(micro_dir), "output_dir": str(tmp_path / "r")}
    last, unchanged = train_and_diff(build_config(TrainConfig, values), micro_dir)
    assert last["step"] == 2 and math.isfinite(last["loss/policy"]), last
    assert unchanged == []
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/math500/avg@2" in r]
    assert [r["step"] for r in evals] == [0, 2] and all("eval/aime24/pass@2" in r for r in evals)
