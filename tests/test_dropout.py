"""Dropout off, one scoring mode (model.disable_dropout, poise.rollout.dropout): every kind of dropout zeroed, the
same old log-probs whatever mode the engine left the model in, a PPO ratio of exactly 1 before any change, and with
vLLM the scoring pass agreeing with the engine's log-probs."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from poise.config.loading import build_config
from poise.config.train_config import TrainConfig
from poise.parallel.distributed import Dist
from poise.rollout import vllm_engine
from poise.rollout.hf_engine import RolloutBatch


@pytest.fixture(scope="module")
def dropout_dir(micro_dir, tmp_path_factory):
    """The micro model with attention_dropout 0.1 (Qwen3 keeps it on each attention module, not in a Dropout)."""
    path = tmp_path_factory.mktemp("dropout")
    for f in micro_dir.iterdir():
        shutil.copy(f, path / f.name)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    return path


def test_disable_dropout_zeroes_modules_attributes_and_configs(dropout_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from poise.rollout.dropout import active_dropout, disable_dropout
    from poise.rollout.models import load_local

    qwen, _ = load_local(dropout_dir)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                      eos_token_id=0))
    assert "model.layers.0.self_attn.attention_dropout" in active_dropout(qwen)
    assert {"transformer.h.0.attn.attn_dropout.p", "config.resid_pdrop"} <= set(active_dropout(gpt2))
    for m in (qwen, gpt2):
        assert disable_dropout(m) and active_dropout(m) == [] and disable_dropout(m) == []
    assert qwen.config.attention_dropout == 0.0 and qwen.model.layers[1].self_attn.attention_dropout == 0.0
    assert gpt2.transformer.h[0].attn.attn_dropout.p == 0.0 and gpt2.config.attn_pdrop == 0.0


def _scored(dropout_dir, disable: bool, mode: str):
    """The dropout micro model loaded as `poise train` loads it and a random batch of 4 prompts x 2 scored by the
    step's scoring pass (mini-batches of 2 prompts: rows 0-3 the update's shared forward, rows 4-7 a no-grad one),
    with the model left in `mode` first, as the built-in sampler (eval) or an earlier update (train, before vLLM
    samples) leaves it -> (model, batch, cfg, reused_logp)."""
    from poise.rollout.models import load_model
    from poise.train.scoring import score_policy

    cfg = build_config(TrainConfig, {"model.name": str(dropout_dir), "model.disable_dropout": disable,
                                     "rollout.prompts_per_step": 4, "optim.mini_batch_prompts": 2})
    torch.manual_seed(0)
    model, _ = load_model(cfg.model)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 200, (4, 5), generator=g).repeat_interleave(2, dim=0)
    batch = RolloutBatch(prompts, torch.ones(8, 5, dtype=torch.bool), torch.randint(3, 200, (8, 6), generator=g),
                         torch.ones(8, 6, dtype=torch.bool), 2)
    model.train(mode == "train")
    torch.manual_seed(2)
    _, reused_logp = score_policy(model, batch, 4, cfg, Dist(), None)
    return model, batch, cfg, reused_logp


@pytest.mark.parametrize("disable", [True, False], ids=["dropout-off", "dropout-kept"])
def test_old_log_probs_are_the_same_whatever_mode_the_engine_left_the_model_in(dropout_dir, disable):
    """The built-in sampler leaves the policy in eval mode, an update (before vLLM's sampling) in train mode; the
    scoring pass gives the same old log-probs after either, with dropout off and with it kept."""
    after_eval, after_train = (_scored(dropout_dir, disable, mode)[1] for mode in ("eval", "train"))
    assert torch.equal(after_eval.old_logp, after_train.old_logp)
    assert torch.equal(after_eval.entropy, after_train.entropy)


@pytest.mark.parametrize("disable", [True, False], ids=["dropout-off", "dropout-kept"])
def test_the_ppo_ratio_before_any_change_is_exactly_one_only_without_dropout(dropout_dir, disable):
    """The update's own train-mode forwards (no shared forward passed in; lr 0, so the weights never move) against
    the scoring pass, whose rows 4-7 ran in eval mode: with dropout off every log-prob is the scoring pass's to the bit
    (approx KL 0, nothing clipped); with attention dropout 0.1 kept they are not, and scoring shares no forward."""
    from poise.train.update import policy_update

    model, batch, cfg, reused_logp = _scored(dropout_dir, disable, "train")
    assert (reused_logp is not None) == disable
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    out = policy_update(model, None, opt, sched, batch, torch.randn(8), cfg, {})
    if disable:
        assert out["kl/approx"] == 0.0 and out["clip_ratio"] == 0.0
    else:
        assert out["kl/approx"] > 1e-6


def test_a_run_on_a_dropout_model_starts_at_ratio_one_and_saves_dropout_off(dropout_dir, tiny_run, tmp_path):
    from poise.train.loop import train

    cfg = tiny_run(tmp_path, **{"model.name": str(dropout_dir), "max_steps": 1, "optim.mini_batch_prompts": 8})
    last = train(cfg, progress=False)
    assert last["kl/approx"] == 0.0 and last["clip_ratio"] == 0.0
    saved = json.loads((Path(cfg.output_dir) / "policy" / "config.json").read_text())
    assert saved["attention_dropout"] == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# With vLLM: the dropout model's old log-probs match the engine's at every step
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not vllm_engine.vllm_available(), reason="vllm not installed (the vllm extra)")
def test_a_vllm_run_on_a_dropout_model_scores_like_the_engine_at_every_step(tiny_run, tmp_path):
    """Before: with vLLM the scoring pass ran in train mode from step 2 on, so attention dropout 0.1 put whole nats
    between our old log-probs and the engine's. Now dropout is off and scoring is in eval mode: they agree. (The
    embedded default with attention_dropout 0.1: vLLM's CPU attention has no kernel for the micro model's head size.)"""
    from poise.rollout.models import DEFAULT_MODEL_DIR
    from poise.train.loop import train

    model_dir = tmp_path / "default_dropout"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    cfg = tiny_run(tmp_path, **{"model.name": str(model_dir), "rollout.engine": "vllm", "max_steps": 3,
                                "report_to": "none", "optim.lr": 1e-3})
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["step"]] == [1, 2, 3]
    for r in rows[-3:]:
        assert r["rollout/logprob_diff_max"] < 1e-3 and r["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)
