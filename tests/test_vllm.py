"""The vLLM rollout engine (`rollout.engine vllm`, `poise.rollout.vllm_engine`) and the correction that comes with it.

The first tests need no vLLM: the truncated importance-sampling weights, the no-op when the engines agree, and the
engine choice. The rest run a real vLLM engine on the embedded default model on the CPU; `scripts/test.sh` installs
the `vllm` extra on x86-64 Linux and sets POISE_REQUIRE_VLLM=1 there, so in CI they fail rather than skip.
"""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from poise.algo.correction import importance_weights, log_ratios
from poise.config.errors import ConfigError
from poise.config.loading import build_config
from poise.config.train_config import TrainConfig
from poise.rollout import vllm_engine
from poise.rollout.hf_engine import RolloutBatch, score
from poise.train.sampler_mismatch import correct_for_sampler
from poise.train.update import policy_update
from poise.parallel.distributed import Dist

# ---------------------------------------------------------------------------------------------------------------------
# Without vLLM
# ---------------------------------------------------------------------------------------------------------------------


def test_tis_weights_are_exactly_one_when_the_engines_agree():
    logp = -torch.rand(6, 9) * 3
    mask = torch.rand(6, 9) > 0.3
    w, _ = importance_weights(logp, logp.clone(), mask, cap=2.0, mode="sequence_truncate")
    log_w = log_ratios(logp, logp.clone(), mask).sum(1)
    assert torch.equal(w, torch.ones(6)) and torch.equal(log_w, torch.zeros(6))


def test_tis_weights_sum_the_log_ratio_over_valid_tokens_then_truncate():
    old = torch.zeros(3, 4)
    sampler = torch.tensor([[-0.5, -0.5, float("inf"), float("nan")],  # padding after two tokens: ignored
                            [0.25, 0.25, 0.25, 0.25],
                            [-2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    w, _ = importance_weights(old, sampler, mask, cap=3.0, mode="sequence_truncate")
    log_w = log_ratios(old, sampler, mask).sum(1)
    assert log_w.tolist() == pytest.approx([1.0, -1.0, 2.0])
    assert w.tolist() == pytest.approx([math.e, math.exp(-1.0), 3.0])  # e^2 > 3: truncated at the cap


def _micro_batch(micro_dir, seed=0):
    from poise.rollout.models import load_local
    model, tok = load_local(micro_dir, torch.float32)
    g = torch.Generator().manual_seed(seed)
    B, L, T = 8, 5, 6
    batch = RolloutBatch(torch.randint(3, 200, (B, L), generator=g), torch.ones(B, L, dtype=torch.bool),
                         torch.randint(3, 200, (B, T), generator=g), torch.ones(B, T, dtype=torch.bool), 2)
    batch.response_mask[::3, -2:] = False
    score(model, batch, None)
    return model, batch


def test_correct_for_sampler_is_a_no_op_when_the_two_engines_agree(micro_dir):
    """With vLLM's log-probs equal to our scoring pass's, the corrected advantages and the policy update are exactly
    those of a run without the correction."""
    cfg = build_config(TrainConfig, {"optim.mini_batch_prompts": 4, "rollout.prompts_per_step": 4})
    model, batch = _micro_batch(micro_dir)
    adv = torch.randn(8)
    same, metrics = correct_for_sampler(batch, adv, cfg, Dist())
    assert same is adv and metrics == {}  # no sampler log-probs: nothing logged, nothing changed
    batch.sampler_logp = batch.old_logp.clone()
    corrected, metrics = correct_for_sampler(batch, adv, cfg, Dist())
    assert torch.equal(corrected, adv)
    assert metrics == {"rollout/logprob_diff_mean": 0.0, "rollout/logprob_diff_max": 0.0,
                       "rollout/log_ratio_token_mean": 0.0, "rollout/log_ratio_seq_abs_mean": 0.0,
                       "rollout/tis_weight_mean": 1.0, "rollout/tis_clipped_frac": 0.0}
    updated = []
    for a in (adv, corrected):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        policy_update(m, None, opt, sched, batch, a, cfg, {})
        updated.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(updated[0], updated[1]) and not torch.equal(updated[0], torch.cat(
        [p.detach().flatten() for p in model.parameters()]))


def test_correct_for_sampler_weights_each_response_and_logs_the_mismatch(micro_dir):
    cfg = build_config(TrainConfig, {"rollout.tis_cap": 1.5})
    _, batch = _micro_batch(micro_dir)
    batch.sampler_logp = batch.old_logp.clone()
    batch.sampler_logp[0, 0] -= 0.3  # row 0: w = e^0.3 = 1.35; row 1: e^{0.9} > 1.5, truncated; others agree
    batch.sampler_logp[1, :3] -= 0.3
    adv = torch.ones(8)
    corrected, m = correct_for_sampler(batch, adv, cfg, Dist())
    assert corrected[:2].tolist() == pytest.approx([math.exp(0.3), 1.5]) and torch.equal(corrected[2:], adv[2:])
    assert m["rollout/logprob_diff_max"] == pytest.approx(0.3) and m["rollout/tis_clipped_frac"] == 1 / 8
    off, m0 = correct_for_sampler(batch, adv, build_config(TrainConfig, {"rollout.tis_cap": 0.0}), Dist())
    assert torch.equal(off, adv) and set(m0) == {"rollout/logprob_diff_mean", "rollout/logprob_diff_max",
                                                 "rollout/log_ratio_token_mean", "rollout/log_ratio_seq_abs_mean"}


def test_auto_keeps_the_tiny_models_on_the_built_in_sampler(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "vllm_problem", lambda: None)  # as if it imported (tests/test_broken_installs.py)
    assert vllm_engine.resolve_engine("auto", 1_030_016) == "hf"  # the embedded default
    assert vllm_engine.resolve_engine("auto", 134_515_008) == "vllm"  # SmolLM2-135M
    assert vllm_engine.resolve_engine("hf", 134_515_008) == "hf"
    assert vllm_engine.resolve_engine("vllm", 1_030_016) == "vllm"
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    assert vllm_engine.resolve_engine("auto", 134_515_008) == "hf"
    with pytest.raises(ConfigError, match=r"^rollout.engine: 'vllm' needs vllm, which is not installed; install it"):
        vllm_engine.resolve_engine("vllm", 1_030_016)


# ---------------------------------------------------------------------------------------------------------------------
# With vLLM (the embedded default model, fp32, on the CPU)
# ---------------------------------------------------------------------------------------------------------------------

if os.environ.get("POISE_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (CI: a missing or broken vllm fails here instead of skipping)
needs_vllm = pytest.mark.skipif(not vllm_engine.vllm_available(), reason="vllm not installed (the vllm extra)")


@pytest.fixture(scope="module")
def engine():
    from poise.rollout.models import load_policy

    model, tok = load_policy("default")
    sampler = vllm_engine.VLLMSampler(model, tok, max_model_len=256, seed=0)
    yield model, tok, sampler
    sampler.close()


def _problems(n=8):
    from poise.data.tasks.dataset import build_task

    task = build_task(build_config(TrainConfig, {}).task)
    return task, task.problems("train", n, seed=0)


@needs_vllm
def test_sampled_tokens_scored_by_our_pass_match_vllms_log_probs(engine):
    from poise.rollout.sampler import SamplingParams

    model, tok, sampler = engine
    sampler.sync_weights(model)
    _, problems = _problems()
    batch = sampler.sample(problems, 2, SamplingParams(max_new_tokens=48, temperature=0.7),
                           torch.Generator().manual_seed(0))
    assert batch.response_ids.shape[0] == 16 and batch.sampler_logp.shape == batch.response_ids.shape
    assert torch.equal(batch.prompt_ids[0], batch.prompt_ids[1])  # G rows per prompt, prompt-major
    eos_at_end = [bool(r[m][-1].item() in sampler.stops) for r, m in zip(batch.response_ids, batch.response_mask)]
    assert eos_at_end == batch.ended.tolist() and batch.ended.any()
    score(model, batch, None, temperature=0.7)
    diff = (batch.old_logp - batch.sampler_logp).abs()[batch.response_mask]
    assert float(diff.max()) < 1e-4, float(diff.max())


def _vllm_logprobs_of(sampler, prompt_ids, completion_ids) -> torch.Tensor:
    """vLLM's log-probs of a fixed completion after a fixed prompt (prompt_logprobs of the concatenation)."""
    from vllm import SamplingParams as VSamplingParams

    ids = prompt_ids + completion_ids
    out = sampler.llm.generate([{"prompt_token_ids": ids}], VSamplingParams(max_tokens=1, prompt_logprobs=0),
                               use_tqdm=False)[0]
    lps = out.prompt_logprobs[len(prompt_ids):]
    return torch.tensor([lp[t].logprob for lp, t in zip(lps, completion_ids)])


@needs_vllm
def test_weight_push_makes_vllm_score_like_the_updated_policy(engine):
    """After an update and `load_policy`, vLLM's log-probs of a fixed completion are the updated policy's and no
    longer the old one's (the stale-weights failure TRL users met with sleep mode, trl#5312)."""
    from poise.rollout.hf_engine import response_logits, token_logprobs

    model, tok, sampler = engine
    _, problems = _problems(1)
    from poise.data.tasks import encode_prompts
    ids, _ = encode_prompts(tok, problems, 1)
    completion = tok(" 12 + 7 = 19 </think> 19", add_special_tokens=False)["input_ids"]
    batch = RolloutBatch(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([completion]),
                         torch.ones(1, len(completion), dtype=torch.bool), 1)

    def ours(m):
        with torch.no_grad():
            return token_logprobs(response_logits(m, batch), batch.response_ids)[0]

    sampler.sync_weights(model)
    before = ours(model)
    assert torch.allclose(_vllm_logprobs_of(sampler, ids[0].tolist(), completion), before, atol=1e-4)
    updated = copy.deepcopy(model)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(torch.randn_like(p) * 0.02, alpha=1.0)
    after = ours(updated)
    assert float((after - before).abs().max()) > 1e-2
    sampler.sync_weights(updated)
    pushed = _vllm_logprobs_of(sampler, ids[0].tolist(), completion)
    assert torch.allclose(pushed, after, atol=1e-4) and not torch.allclose(pushed, before, atol=1e-3)
    sampler.sync_weights(model)  # the module's engine back to the default weights


RUN = {"model.name": "default", "rollout.engine": "vllm", "max_steps": 3, "rollout.prompts_per_step": 8,
       "optim.mini_batch_prompts": 8, "rollout.max_new_tokens": 32, "probe.min_fit_steps": 1,
       "probe.warmup_steps": 1, "probe.buffer_size": 64, "checkpoint.every": 1, "report_to": "none"}


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@needs_vllm
@pytest.mark.slow
def test_probe_eval_samples_with_the_configs_vllm_engine(tmp_path):
    """`poise probe-eval --train-config poise --overrides [rollout.engine=vllm]`: the study samples with vLLM and
    fits and scores every probe."""
    from poise.commands.cli import main

    out = tmp_path / "v.json"
    assert main(["probe-eval", "--train-config", "poise", "--overrides", "[rollout.engine=vllm]", "--fit-prompts",
                 "16", "--eval-prompts", "8", "--samples", "2", "--threads", "1", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["engine"] == "VLLMSampler" and res["probe"]["n"] == res["probe_one_rollout"]["n"] == 8
    assert list(res["prompt_probe"]) == [str(res["probe_layer"])]


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["poise", "dapo"])
def test_three_step_runs_with_the_vllm_engine(preset, tmp_path):
    from poise.config.loading import load_yaml
    from poise.train.loop import train

    values = {**load_yaml(preset), **RUN, "output_dir": str(tmp_path / "run")}
    if preset == "dapo":
        values.update({"rollout.group_size": 4, "reward.overlong_buffer": 8})
    last = train(build_config(TrainConfig, values), progress=False)
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3] and last["step"] == 3
    for r in rows:
        assert r["rollout/logprob_diff_max"] < 1e-3 and r["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()


@needs_vllm
@pytest.mark.slow
def test_a_vllm_run_resumes_exactly(tmp_path):
    from poise.train.loop import train

    straight = tmp_path / "straight"
    train(build_config(TrainConfig, {**RUN, "output_dir": str(straight)}), progress=False)
    resumed = tmp_path / "resumed"
    train(build_config(TrainConfig, {**RUN, "max_steps": 2, "output_dir": str(resumed)}), progress=False)
    train(build_config(TrainConfig, {**RUN, "resume": True, "output_dir": str(resumed)}), progress=False)

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]

    assert strip(_rows(resumed)) == strip(_rows(straight))


# ---------------------------------------------------------------------------------------------------------------------
# Several processes, FSDP, and TRL's colocated engine (subprocesses: vLLM's external_launcher sets up torch.distributed)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
    """The embedded default model saved as a Hugging Face directory (what TRL's engine loads by name)."""
    from poise.rollout.models import load_policy

    path = tmp_path_factory.mktemp("default_model")
    model, tok = load_policy("default")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _run(cmd: list[str]) -> None:
    from test_distributed import _env

    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _launch(processes: int, *args: str) -> list[str]:
    from test_distributed import _free_port

    if processes == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--main_process_port", _free_port(), *args]


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_push_the_policy_into_an_engine_each(fsdp, tmp_path):
    """One colocated engine per rank (external_launcher), each seeded for its rank; every step the policy is pushed
    into both (under FSDP gathered first). The learning rate is large, so an engine left with the previous step's
    weights would be off by whole nats (12.8 when load_policy was made a no-op), not by float rounding."""
    run = tmp_path / "run"
    args = ["train", "--model.name", "default", "--rollout.engine", "vllm", "--max-steps", "3", "--output-dir",
            str(run), "--rollout.prompts_per_step", "8", "--optim.mini_batch_prompts", "4", "--optim.lr", "1e-2",
            "--optim.warmup_steps", "0", "--rollout.max_new_tokens", "32", "--probe.min_fit_steps", "1",
            "--probe.warmup_steps", "1", "--probe.buffer_size", "64", "--threads", "1", "--fsdp", str(fsdp).lower()]
    _run(_launch(2, "-m", "poise.commands.cli", *args))
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["rollout/logprob_diff_max"] < 1e-3 and r["compute/samples"] == 16 and r["dist/probe_in_sync"] == 1
    assert (run / "policy" / "model.safetensors").is_file()  # the final save ran before the engines shut down


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_poise_trainer_generates_with_trls_colocated_vllm(processes, default_dir, tmp_path):
    """POISETrainer with TRL's `use_vllm=True, vllm_mode="colocate"` (fp32 engine, learning rate 3e-2): TRL's own
    scoring of the sampled tokens matches the engine's log-probs every round, so TRL's weight sync reached the
    engine (on the CPU it does only with `keep_cpu_weights_live`), and the advantages are POISE's, from the features
    of our extra pass, identical on every rank."""
    pytest.importorskip("trl")
    from poise.algo.advantages import group_view, poise_advantages

    tests = Path(__file__).resolve().parent
    _run(_launch(processes, str(tests / "trl_dist_child.py"), str(default_dir), str(tmp_path), "vllm"))
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(processes)]
    for rank in ranks:
        assert rank["world"] == processes and rank["engine_dtype"] == "torch.float32"
        assert len(rank["logp_diff_max"]) == 3 and max(rank["logp_diff_max"]) < 1e-3
        assert len(rank["rounds"]) == 3 and any(r["used"] for r in rank["rounds"])
        for rnd in rank["rounds"]:
            assert len(rnd["advantages"]) == 4 * processes  # the whole batch, every rank's rows
            if rnd["used"]:
                rw, pred = torch.tensor(rnd["rewards"]), torch.tensor(rnd["predictions"])
                expected = poise_advantages(group_view(rw, 2), group_view(pred, 2)).flatten()
                assert torch.allclose(torch.tensor(rnd["advantages"]), expected, atol=1e-6)
    for other in ranks[1:]:
        assert other["weights"] == ranks[0]["weights"]
        assert [r["probe"] for r in other["rounds"]] == [r["probe"] for r in ranks[0]["rounds"]]


def test_bf16_sampling_on_a_cpu_without_native_bf16_is_warned_about(tmp_path):
    """The flags come from /proc/cpuinfo's first flags line; bfloat16 without avx512_bf16 or amx_bf16 gets a warning
    naming the option and the fix, and nothing is said with either flag, for float32, or when the flags are unknown."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    flags = vllm_engine.cpu_flags(str(info))
    assert flags == {"fpu", "sse2", "avx2", "fma"}
    assert vllm_engine.cpu_flags(str(tmp_path / "missing")) is None
    msg = vllm_engine.bf16_sampling_warning("bfloat16", flags)
    assert msg.startswith("rollout.engine_dtype: bfloat16 on a CPU without native bf16") and "float32" in msg
    assert vllm_engine.bf16_sampling_warning("bfloat16", flags | {"avx512_bf16"}) is None
    assert vllm_engine.bf16_sampling_warning("bfloat16", flags | {"amx_bf16"}) is None
    assert vllm_engine.bf16_sampling_warning("float32", flags) is None
    assert vllm_engine.bf16_sampling_warning("bfloat16", None) is None


@needs_vllm
@pytest.mark.slow
def test_a_bf16_engine_on_a_cpu_without_native_bf16_warns_when_it_is_created(monkeypatch):
    """The warning reaches the user: a bfloat16 engine built while the CPU's flags read AVX2 only warns once."""
    from poise.rollout.models import load_policy

    monkeypatch.setattr(vllm_engine, "cpu_flags", lambda: {"avx2", "fma"})
    model, tok = load_policy("default")
    with pytest.warns(UserWarning, match=r"^rollout.engine_dtype: bfloat16 on a CPU without native bf16"):
        sampler = vllm_engine.VLLMSampler(model, tok, max_model_len=128, dtype="bfloat16", seed=0)
    sampler.close()
