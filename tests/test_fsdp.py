"""FSDP (poise/parallel/fsdp.py) on 2 CPU processes over gloo: the single-process update, a DDP run's numbers from the
shipped accelerate config, an exact resume, the PPO critic, and the errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poise.config.errors import ConfigError
from poise.parallel import fsdp
from poise.io.tracking import read_metrics
from poise.train.loop import train
from test_distributed import TESTS, _env, _free_port, _torchrun

ROOT = TESTS.parent
# reduce order differs; entropy/mean is read from the updated policy, whose weights agree to float rounding (1e-5)
FLOAT_NOISE = ("grad_norm", "optim/grad_var_proxy", "loss/policy", "kl/approx", "kl/ref", "entropy/mean")


def test_fsdp_is_asked_for_by_the_flag_or_by_accelerate_and_deepspeed_is_refused(monkeypatch):
    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(k, raising=False)
    assert not fsdp.requested(False) and fsdp.requested(True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for distributed_type: FSDP
    assert fsdp.requested(False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed .* not supported"):
        fsdp.requested(False)


def test_accelerate_settings_poise_does_not_apply_are_named(monkeypatch):
    for k in ("ACCELERATE_MIXED_PRECISION", "FSDP_OFFLOAD_PARAMS", "FSDP_ACTIVATION_CHECKPOINTING",
              "FSDP_SHARDING_STRATEGY", "FSDP_RESHARD_AFTER_FORWARD"):
        monkeypatch.delenv(k, raising=False)
    assert fsdp.unread_accelerate_settings() == []
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert fsdp.unread_accelerate_settings() == []
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "SHARD_GRAD_OP")
    assert fsdp.unread_accelerate_settings() == ["mixed_precision=bf16", "fsdp_offload_params=true",
                                                 "fsdp_sharding_strategy=SHARD_GRAD_OP"]


def test_fsdp_needs_several_processes_and_no_lora(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="^fsdp: sharding needs several processes"):
        train(tiny_run(tmp_path, fsdp=True), progress=False)
    with pytest.raises(ConfigError, match="^fsdp: not supported with LoRA"):
        train(tiny_run(tmp_path, fsdp=True, **{"model.lora_r": 4}), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.slow
def test_sharded_update_is_the_single_process_update(micro_dir, tmp_path):
    """One policy update with the model sharded over 2 ranks (sampling and scoring gathered) against one process on
    the whole batch: the same weights within float tolerance, the same probe, and each rank holding half."""
    from conftest import TINY_RUN

    values = {**TINY_RUN, "model.name": str(micro_dir), "output_dir": str(tmp_path / "unused"),
              "rollout.prompts_per_step": 8, "optim.mini_batch_prompts": 4, "optim.lr": 0.1}
    for n, out, extra in ((1, tmp_path / "one", ()), (2, tmp_path / "two", ("fsdp",))):
        out.mkdir()
        r = _torchrun(n, str(TESTS / "dist_child.py"), json.dumps(values), str(out), *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    one, two = load_file(str(tmp_path / "one/rank0.safetensors")), load_file(str(tmp_path / "two/rank0.safetensors"))
    assert set(one) == set(two)
    for k in one:
        if k.startswith(("probe.", "gathered.")):
            assert torch.equal(one[k], two[k]), k
        else:
            assert torch.allclose(one[k], two[k], atol=1e-6, rtol=1e-5), (k, (one[k] - two[k]).abs().max())
    before = load_file(str(micro_dir / "model.safetensors"))
    assert sum(not torch.equal(one[f"param.{k}"], v) for k, v in before.items()) > len(before) // 2  # it moved
    s1 = json.loads((tmp_path / "one/stats0.json").read_text())
    s2 = [json.loads((tmp_path / f"two/stats{r}.json").read_text()) for r in (0, 1)]
    assert s2[0]["grad_norm"] == s2[1]["grad_norm"] == pytest.approx(s1["grad_norm"], rel=1e-5)
    assert s2[0]["in_sync"] and s2[0]["local_numel"] + s2[1]["local_numel"] == s1["local_numel"]
    assert all(abs(s["local_numel"] - s1["local_numel"] / 2) < 0.05 * s1["local_numel"] for s in s2)


def _launch(args: list[str], config: str | None, run: Path, *more: str) -> subprocess.CompletedProcess:
    how = ["--config_file", config] if config else ["--multi_gpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2", "--main_process_port",
           _free_port(), "-m", "poise.commands.cli", *args, "--output-dir", str(run), *more]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _same_run(a: Path, b: Path, weights: tuple[str, ...], exact: bool) -> None:
    """Two runs' metrics (all but times; float-noise keys within tolerance unless `exact`) and final weights."""
    rows_a, rows_b = read_metrics(a), read_metrics(b)
    assert [m["step"] for m in rows_a] == [m["step"] for m in rows_b]
    for x, y in zip(rows_a, rows_b):
        for k, v in x.items():
            if k.startswith(("time/", "throughput/")) or k.endswith("_s"):
                continue
            if not exact and k in FLOAT_NOISE:
                assert v == pytest.approx(y[k], rel=1e-4, abs=1e-6), (x["step"], k)
            else:
                assert v == y[k], (x["step"], k, v, y[k])
    for f in weights:
        wa, wb = load_file(str(a / f)), load_file(str(b / f))
        assert set(wa) == set(wb), f
        for k in wa:
            assert (torch.equal if exact else lambda p, q: torch.allclose(p, q, atol=1e-5))(wa[k], wb[k]), (f, k)


@pytest.mark.slow
def test_shipped_fsdp_config_matches_ddp_and_resumes_exactly(micro_dir, tmp_path):
    """`accelerate launch --config_file examples/accelerate/fsdp.yaml poise train ...` (POISE with a KL reference):
    the same run as DDP up to float rounding, checkpoints in DDP's format, and a resume that is bit-identical."""
    config = str(ROOT / "examples/accelerate/fsdp.yaml")
    args = ["train", "--model.name", str(micro_dir), "--rollout.prompts_per_step", "8", "--optim.mini_batch_prompts",
            "4", "--rollout.max_new_tokens", "12", "--probe.k", "3", "--probe.min_fit_steps", "1",
            "--probe.warmup_steps", "1", "--probe.buffer_size", "64", "--probe.prompt_dim", "4",
            "--probe.trajectory_dim", "4", "--task.train_size", "64", "--reward.function",
            "reward_functions:trl_parity", "--checkpoint.every", "1", "--threads", "1", "--optim.lr", "1e-2",
            "--loss.kl_coef", "0.05"]
    r = _launch(args + ["--max-steps", "4"], config, tmp_path / "fsdp")
    assert "2 processes (FSDP)" in r.stdout
    _launch(args + ["--max-steps", "4"], None, tmp_path / "ddp")
    _launch(args + ["--max-steps", "2"], config, tmp_path / "resumed")
    _launch(args + ["--max-steps", "4"], config, tmp_path / "resumed", "--resume")
    _same_run(tmp_path / "fsdp", tmp_path / "ddp", ("policy/model.safetensors",), exact=False)
    _same_run(tmp_path / "fsdp", tmp_path / "resumed", ("policy/model.safetensors",), exact=True)
    assert all(m["dist/probe_in_sync"] == 1 for m in read_metrics(tmp_path / "fsdp"))
    ckpt = {k: tmp_path / k / "checkpoints/step-000004" for k in ("fsdp", "ddp")}
    assert sorted(p.name for p in ckpt["fsdp"].iterdir()) == sorted(p.name for p in ckpt["ddp"].iterdir())
    assert set(load_file(str(ckpt["fsdp"] / "policy.safetensors"))) == set(load_file(str(ckpt["ddp"] /
                                                                                         "policy.safetensors")))
    saved = (tmp_path / "fsdp/config.yaml").read_text()
    assert "fsdp: true" in saved  # turned on by the accelerate config, recorded so that resume checks it
    r = subprocess.run([sys.executable, "-m", "poise.commands.cli", *args, "--max-steps", "5", "--resume",
                        "--output-dir",
                        str(tmp_path / "fsdp")], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "fsdp: True -> False" in r.stderr  # one process without FSDP: refused


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ppo", "dynamic_sampling"])
def test_fsdp_ppo_critic_and_dynamic_sampling_match_ddp(micro_dir, tmp_path, preset):
    """PPO: the policy and its policy-sized critic both sharded. Dynamic sampling (one round, seed 1): steps that
    end short of 8 groups, some with an odd count cut to an even one. Each the same run as DDP up to float
    rounding."""
    args = ["train", "--model.name", str(micro_dir), "--rollout.prompts_per_step", "8",
            "--optim.mini_batch_prompts", "4", "--rollout.max_new_tokens", "12", "--task.train_size", "64",
            "--reward.function", "reward_functions:trl_parity", "--threads", "1", "--optim.lr", "1e-2",
            "--max-steps", "4"]
    args += ["--config", "ppo"] if preset == "ppo" else ["--seed", "1", "--algorithm.dynamic_sampling", "true",
                                                         "--algorithm.max_sampling_rounds", "1"]
    _launch([*args, "--fsdp", "true"], None, tmp_path / "fsdp")
    _launch(args, None, tmp_path / "ddp")
    _same_run(tmp_path / "fsdp", tmp_path / "ddp", ("policy/model.safetensors",) +
              (("critic/critic.safetensors",) if preset == "ppo" else ()), exact=False)
    if preset == "dynamic_sampling":
        trained = [m["dynamic_sampling/groups_trained"] for m in read_metrics(tmp_path / "fsdp")]
        assert min(trained) < 8  # short steps ran sharded
        assert {m["dynamic_sampling/dropped_uneven"] for m in read_metrics(tmp_path / "fsdp")} == {0, 1}
