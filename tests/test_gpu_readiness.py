"""Issue 44's checks that a real model on a GPU would otherwise fail silently: the importance-sampling correction
modes for another engine's samples, dropout off with one scoring mode whatever the engine, one length limit for both
engines, and a broken vLLM install named at start-up. (Checkpoint durability: tests/test_checkpoint_durability.py.)"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from poise.algo.correction import TIS_MODES, importance_weights, weight_advantages
from poise.algo.losses import aggregate, ppo_clip_loss
from poise.io.config import ConfigError, TrainConfig, build_config
from poise.parallel.distributed import Dist
from poise.rollout import vllm_engine
from poise.rollout.engine import RolloutBatch
from poise.train.update import engine_correction

# ---------------------------------------------------------------------------------------------------------------------
# Correction modes (rollout.tis_mode)
# ---------------------------------------------------------------------------------------------------------------------

E = math.exp
# d = old - sampler: row 0 [0.2, 0.3, pad], row 1 [-0.5, 0.6, -0.3]; sums 0.5 (e^0.5 > 1.5) and -0.2
OLD = torch.zeros(2, 3)
SAMPLER = torch.tensor([[-0.2, -0.3, float("nan")], [0.5, -0.6, 0.3]])
MASK = torch.tensor([[True, True, False], [True, True, True]])
CAP = 1.5
HAND = {  # (weights, over the cap), computed by hand from the numbers above
    "sequence_truncate": ([1.5, E(-0.2)], [True, False]),
    "sequence_mask": ([0.0, E(-0.2)], [True, False]),
    "token_truncate": ([[E(0.2), E(0.3), 1.0], [E(-0.5), 1.5, E(-0.3)]], [[False] * 3, [False, True, False]]),
    "token_mask": ([[E(0.2), E(0.3), 1.0], [E(-0.5), 0.0, E(-0.3)]], [[False] * 3, [False, True, False]]),
}


@pytest.mark.parametrize("mode", TIS_MODES)
def test_each_mode_gives_the_hand_computed_weights(mode):
    w, over = importance_weights(OLD, SAMPLER, MASK, CAP, mode)
    want_w, want_over = HAND[mode]
    assert torch.allclose(w, torch.tensor(want_w), atol=1e-6, rtol=0) and over.tolist() == want_over
    assert not w.requires_grad and torch.isfinite(w).all()  # the nan in the padding never reaches a weight


@pytest.mark.parametrize("mode", TIS_MODES)
def test_equal_log_probs_give_weight_one_and_huge_ratios_stay_finite(mode):
    logp = -torch.rand(4, 7) * 3
    mask = torch.rand(4, 7) > 0.3
    w, over = importance_weights(logp, logp.clone(), mask, 2.0, mode)
    assert torch.equal(w, torch.ones_like(w)) and not over.any()
    w, over = importance_weights(logp, logp - 1e4, mask, 2.0, mode)  # exp would overflow to inf
    assert torch.isfinite(w).all() and set(w[over].tolist()) <= {0.0, 2.0}


def test_weighting_the_advantages_is_weighting_each_tokens_ppo_loss_as_trl_does():
    """For w >= 0, max(-wA r, -wA clip(r)) (and the dual-clip bound) is w times the unweighted per-token loss, so
    A -> wA gives TRL's `per_token_loss * importance_sampling_ratio`: the same loss and gradient."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 5
    old = -torch.rand(B, T, generator=g) * 2
    logp = (old + 0.4 * torch.randn(B, T, generator=g)).requires_grad_(True)
    adv, mask = torch.randn(B, generator=g), torch.rand(B, T, generator=g) > 0.2
    for mode in TIS_MODES:
        w, _ = importance_weights(old, old - 0.3 * torch.randn(B, T, generator=g), mask, 1.2, mode)
        ours, _ = ppo_clip_loss(logp, old, weight_advantages(adv, w), mask, 0.2, 0.28, 3.0, "seq-mean-token-mean")
        r, a = torch.exp(logp - old), adv[:, None]
        per_token = torch.maximum(-a * r, -a * r.clamp(0.8, 1.28))
        per_token = torch.where(a < 0, torch.minimum(per_token, -a * 3.0), per_token)
        trl = aggregate(per_token * (w if w.dim() == 2 else w[:, None]), mask, "seq-mean-token-mean")
        g1, g2 = (torch.autograd.grad(x, logp)[0] for x in (ours, trl))
        assert ours.item() == pytest.approx(trl.item(), abs=1e-6) and torch.allclose(g1, g2, atol=1e-6), mode


def test_weight_advantages_broadcasts_sequence_and_token_factors():
    a1, a2 = torch.tensor([1.0, -2.0]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    ws, wt = torch.tensor([0.5, 2.0]), torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 1.0]])
    assert weight_advantages(a1, ws).tolist() == [0.5, -4.0]
    assert weight_advantages(a1, wt).tolist() == [[1.0, 0.0, 2.0], [-1.0, -2.0, -2.0]]
    assert weight_advantages(a2, ws).tolist() == [[0.5, 1.0, 1.5], [8.0, 10.0, 12.0]]
    assert weight_advantages(a2, wt).tolist() == [[1.0, 0.0, 6.0], [2.0, 5.0, 6.0]]


def _batch():
    batch = RolloutBatch(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool),
                         torch.ones(2, 3, dtype=torch.long), MASK.clone(), 2)
    batch.old_logp, batch.sampler_logp = OLD.clone(), SAMPLER.clone()
    return batch


@pytest.mark.parametrize("mode", TIS_MODES)
def test_engine_correction_applies_the_mode_and_logs_the_per_token_mismatch(mode):
    cfg = build_config(TrainConfig, {"rollout.tis_mode": mode, "rollout.tis_cap": CAP})
    adv, metrics = engine_correction(_batch(), torch.tensor([1.0, -1.0]), cfg, Dist())
    want_w, want_over = map(torch.tensor, HAND[mode])
    sign = torch.tensor([1.0, -1.0])
    assert torch.allclose(adv, want_w * (sign if want_w.dim() == 1 else sign[:, None]), atol=1e-6)
    units = want_w if want_w.dim() == 1 else want_w[MASK]
    over = want_over if want_w.dim() == 1 else want_over[MASK]
    assert metrics["rollout/tis_weight_mean"] == pytest.approx(float(units.mean()), abs=1e-6)
    assert metrics["rollout/tis_clipped_frac"] == pytest.approx(float(over.float().mean()))
    assert metrics["rollout/log_ratio_token_mean"] == pytest.approx(0.3 / 5, abs=1e-6)  # (0.5 - 0.2) / 5 tokens
    assert metrics["rollout/log_ratio_seq_abs_mean"] == pytest.approx(0.35, abs=1e-6)  # (0.5 + 0.2) / 2
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(1.9 / 5, abs=1e-6)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(0.6, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Dropout off, one scoring mode (model.disable_dropout)
# ---------------------------------------------------------------------------------------------------------------------


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
    samples) leaves it -> (model, batch, cfg, first_logp)."""
    from poise.rollout.models import load_model
    from poise.train.update import score_for_update

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
    _, first_logp = score_for_update(model, batch, 4, cfg, Dist(), None)
    return model, batch, cfg, first_logp


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

    model, batch, cfg, first_logp = _scored(dropout_dir, disable, "train")
    assert (first_logp is not None) == disable
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
# One length limit for both engines
# ---------------------------------------------------------------------------------------------------------------------


def test_a_prompt_plus_max_new_tokens_beyond_the_positions_is_refused_naming_both(micro_dir):
    from poise.data.tasks import encode_prompts, get_task
    from poise.rollout.limits import check_fits, model_positions
    from poise.rollout.models import load_local

    model, tok = load_local(micro_dir)
    problems = get_task("chain_sum").problems("train", 40, seed=0)
    longest = int(encode_prompts(tok, problems)[1].sum(1).max())
    assert model_positions(model) == 512
    assert check_fits(model, tok, problems, 512 - longest, "rollout.max_new_tokens") == longest
    with pytest.raises(ConfigError) as e:
        check_fits(model, tok, problems, 513 - longest, "rollout.max_new_tokens")
    msg = str(e.value)
    assert msg.startswith(f"rollout.max_new_tokens: the longest prompt ({longest} tokens) plus rollout.max_new_tokens "
                          f"({513 - longest}) is 513 tokens, beyond the model's 512 positions"), msg


def test_vllms_max_model_len_is_the_longest_prompt_plus_max_new_tokens(micro_dir, monkeypatch):
    """vLLM gets room for max_new_tokens after every training prompt (before: min(positions, 1024 + max_new), which
    the prompt cap made cut responses short of the built-in sampler's)."""
    from poise.data.tasks import encode_prompts, get_task
    from poise.rollout import vllm_engine
    from poise.rollout.models import load_local
    from poise.train.state import build_sampler

    seen = {}
    monkeypatch.setattr(vllm_engine, "resolve_engine", lambda engine, n: "vllm")
    monkeypatch.setattr(vllm_engine, "VLLMSampler", lambda model, tok, **kw: seen.update(kw) or "engine")
    model, tok = load_local(micro_dir)
    cfg = build_config(TrainConfig, {"rollout.engine": "vllm", "rollout.max_new_tokens": 40})
    longest = int(encode_prompts(tok, get_task("chain_sum").problems("train", 40, seed=0))[1].sum(1).max())
    assert build_sampler(cfg, Dist(), model, tok, longest) == "engine" and seen["max_model_len"] == longest + 40


def test_the_held_out_evaluation_checks_its_own_length(tiny_run, tmp_path):
    from poise.train.loop import train

    with pytest.raises(ConfigError, match=r"^eval.max_new_tokens: the longest prompt \(\d+ tokens\) plus "
                                          r"eval.max_new_tokens \(600\) is \d+ tokens, beyond the model's 512"):
        train(tiny_run(tmp_path, **{"eval.every": 1, "eval.max_new_tokens": 600}), progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# A broken vLLM install, named at start-up (fake broken packages first on the path, in a subprocess)
# ---------------------------------------------------------------------------------------------------------------------


def _fake_package(root: Path, name: str, error: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"raise {error}\n")
    return root


def _run_with(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_torchvision_that_cannot_load_is_named_before_any_model_loads(tmp_path, micro_dir):
    """The real failure of PyPI's torchvision beside the CPU torch, raised by a fake torchvision: `poise train` ends
    in one line naming it and the fix, instead of transformers' "Could not import module 'Qwen3ForCausalLM'"."""
    fake = _fake_package(tmp_path / "site", "torchvision", 'RuntimeError("operator torchvision::nms does not exist")')
    r = _run_with(fake, "-m", "poise.commands.cli", "train", "--model.name", str(micro_dir), "--max_steps", "1",
                  "--output_dir", str(tmp_path / "run"))
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[-1].startswith("poise train: error: torchvision (version unknown) is installed but cannot load "
                                "beside torch 2.13.0"), lines[-1]
    assert "RuntimeError: operator torchvision::nms does not exist" in lines[-1]
    assert "`pip uninstall -y torchvision torchaudio torchcodec`" in lines[-1] and "install_vllm.sh" in lines[-1]
    assert not (tmp_path / "run").exists()  # stopped before anything was written


def test_a_vllm_that_cannot_import_is_named_where_the_engine_is_chosen(tmp_path):
    fake = _fake_package(tmp_path / "site", "vllm", 'ImportError("libcudart.so.12: cannot open shared object file")')
    code = ("from poise.rollout.vllm_engine import resolve_engine\n"
            "assert resolve_engine('hf', 10**9) == 'hf'\n"  # the built-in sampler never imports vllm
            "assert resolve_engine('auto', 10**6) == 'hf'\n"
            "try:\n    resolve_engine('auto', 10**9)\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    r = _run_with(fake, "-c", code)
    out = r.stdout.strip()
    assert r.returncode == 0 and out.startswith("ConfigError rollout.engine: vllm "), r.stderr[-2000:] + out
    assert "cannot be imported (ImportError: libcudart.so.12" in out and "`bash scripts/install_vllm.sh`" in out


def test_nothing_is_imported_when_torchvision_is_absent():
    from poise.io.environment import install_problem

    code = ("import sys, importlib.util\nfrom poise.io.environment import install_problem\n"
            "assert importlib.util.find_spec('torchvision') is None\n"
            "assert install_problem() is None and 'torchvision' not in sys.modules and 'torch' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert install_problem() is None  # this environment (scripts/install_vllm.sh removes torchvision)


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
