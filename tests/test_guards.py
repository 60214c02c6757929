"""Numerical guards and clear errors: unscorable rewards, NaN/inf losses and gradients, truncated responses,
model directories without a tokenizer, unreachable budgets."""

import math

import pytest
import torch

import poise.train.microbatch as update_mod  # where the update calls ppo_clip_loss
from poise.algo.advantages import grpo_advantages, mask_unscorable, poise_advantages, poise_targets, rloo_advantages
from poise.config.errors import ConfigError
from poise.rollout.models import load_local
from poise.rollout.collect import collect, varied_groups
from poise.rollout.sampler import KVCacheSampler
from poise.data.tasks import get_task, register_task
from poise.io.tracking import read_metrics
from poise.rollout.hf_engine import score
from poise.train.compute import ComputeMeter
from poise.train.loop import compute_advantages, train
from poise.train.state import PromptStream
from poise.train.update import policy_update
from conftest import ParityTask
from reward_functions import nan_sometimes_reward


class SometimesUnscorable(ParityTask):
    name = "unscorable_test"
    reward_fn = staticmethod(nan_sometimes_reward)


register_task("unscorable_test", SometimesUnscorable)


def _loop_masked_loo(x, valid):
    out, n = torch.zeros_like(x), torch.zeros_like(x)
    for p in range(x.shape[0]):
        for i in range(x.shape[1]):
            js = [j for j in range(x.shape[1]) if j != i and valid[p, j]]
            n[p, i] = len(js)
            out[p, i] = sum(x[p, j] for j in js) / len(js) if js else 0.0
    return out, n


def test_unscorable_rows_get_zero_advantage_and_never_enter_a_baseline():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (50, 4), generator=g).double()
    r[torch.rand(50, 4, generator=g) < 0.3] = math.nan
    r[0] = torch.tensor([math.inf, 1.0, 0.0, math.nan])
    pred = torch.rand(50, 4, generator=g).double()
    clean, valid = mask_unscorable(r)
    assert torch.isfinite(clean).all() and torch.equal(valid, torch.isfinite(r))
    loo, n = _loop_masked_loo(clean, valid)
    expect = torch.where(valid & (n > 0), clean - loo, torch.zeros_like(clean))
    assert torch.allclose(rloo_advantages(clean, valid), expect)
    assert torch.allclose(poise_advantages(clean, pred, valid),
                          torch.where(valid, clean - _loop_masked_loo(pred, torch.ones_like(valid))[0], 0.0))
    targets, has = poise_targets(clean, valid)
    assert torch.allclose(targets, loo) and torch.equal(has, n > 0)
    for scale in (True, False):
        a = grpo_advantages(clean, scale_by_std=scale, valid=valid)
        assert (a[~valid] == 0).all() and torch.isfinite(a).all()
        for p in range(50):  # the valid rows get exactly what the unmasked formula gives them alone
            v = valid[p]
            if v.sum() >= 1:
                alone = grpo_advantages(clean[p, v][None], scale_by_std=scale)[0]
                assert torch.allclose(a[p, v], alone, atol=1e-9)
    # an unscorable row's stored value never matters
    other = torch.where(valid, clean, torch.full_like(clean, 7.0))
    assert torch.equal(rloo_advantages(other, valid), rloo_advantages(clean, valid))
    # all valid: identical to the unmasked functions
    ones = torch.ones_like(valid)
    c2 = torch.nan_to_num(r, nan=0.0, posinf=1.0)
    assert torch.equal(rloo_advantages(c2, ones), rloo_advantages(c2))
    assert torch.allclose(grpo_advantages(c2, valid=ones), grpo_advantages(c2))


def test_varied_groups_ignores_unscorable_rows():
    s = torch.tensor([1.0, math.nan, 1.0, 1.0, 0.0, math.nan, math.nan, math.nan, 1.0, 0.0, math.nan, 0.0])
    assert varied_groups(s, 3).tolist() == [False, True, False, False]


def test_training_with_unscorable_rewards_counts_them_and_stays_finite(tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, **{"task.name": "unscorable_test", "max_steps": 3})
    last = train(cfg, progress=False)
    rows = read_metrics(cfg.output_dir)
    assert sum(r["reward/unscorable"] for r in rows) > 0
    assert all(math.isfinite(r["loss/policy"]) and math.isfinite(r["reward/mean"]) for r in rows)
    assert last["optim/skipped_total"] == 0


def test_compute_advantages_zeroes_unscorable_rows_for_every_method(tiny_run, tmp_path):
    r = torch.tensor([1.0, math.nan, 0.0, 1.0])
    for preset in ("rloo", "grpo", "dr_grpo", "poise"):
        cfg = tiny_run(tmp_path, preset, **{"rollout.group_size": 2})
        adv, _, _ = compute_advantages(cfg, r, torch.full((4,), 0.5), probe_ready=True)
        assert adv[1] == 0 and adv[0] == (0.5 if preset == "poise" else 0.0), preset  # no valid sibling: 0
        assert torch.isfinite(adv).all()
    cfg = tiny_run(tmp_path, "ppo")
    values = torch.full((4, 3), 0.25)
    adv, returns, _ = compute_advantages(cfg, r, values=values, mask=torch.ones(4, 3, dtype=torch.bool))
    assert (adv[1] == 0).all() and torch.equal(returns[1], values[1]) and adv[0, 0] == 0.75


def _poisoned(kind):
    """ppo_clip_loss whose loss (kind 'loss') or gradient (kind 'grad', via sqrt at 0) is non-finite."""
    real = update_mod.ppo_clip_loss

    def fake(logp, *args, **kwargs):
        loss, st = real(logp, *args, **kwargs)
        if kind == "loss":
            return loss * math.nan, st
        return loss + torch.sqrt(logp.sum() * 0.0), st  # value unchanged, gradient inf * 0 = nan
    return fake


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_non_finite_loss_or_gradient_skips_the_step_and_leaves_all_state_unchanged(kind, micro_dir, tiny_run,
                                                                                      tmp_path, monkeypatch):
    cfg = tiny_run(tmp_path, **{"optim.max_consecutive_skips": 100, "max_steps": 1})
    model, tok = load_local(micro_dir)
    task = get_task("parity_test")
    col = collect(KVCacheSampler(model, tok), task, PromptStream(task.problems("train", 16, seed=0), 0), cfg,
                  torch.Generator().manual_seed(0), ComputeMeter())
    score(model, col.batch, None)
    adv, _, _ = compute_advantages(cfg, col.rewards)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    monkeypatch.setattr(update_mod, "ppo_clip_loss", _poisoned(kind))
    counters = {}
    stats = policy_update(model, None, opt, sched, col.batch, adv, cfg, counters)
    assert stats["optim/skipped_steps"] == 2 == counters["skipped_total"] == counters["consecutive_skips"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.state_dict()["state"] == {} and sched.last_epoch == 0
    assert all(p.grad is None for p in model.parameters())
    cfg.optim.max_consecutive_skips = 3
    with pytest.raises(FloatingPointError,
                       match=r"4 optimizer steps in a row had a non-finite .*max_consecutive_skips"):
        policy_update(model, None, opt, sched, col.batch, adv, cfg, counters)
    monkeypatch.undo()
    policy_update(model, None, opt, sched, col.batch, adv, cfg, counters)  # a good step resets the streak
    assert counters["consecutive_skips"] == 0 and not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_run_that_keeps_producing_nan_stops_with_a_diagnostic(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(update_mod, "ppo_clip_loss", _poisoned("loss"))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train(tiny_run(tmp_path, **{"optim.max_consecutive_skips": 3, "max_steps": 5}), progress=False)


def test_truncated_responses_are_flagged_exactly_and_can_be_masked(micro_dir, tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, **{"rollout.max_new_tokens": 3, "loss.mask_truncated": True})
    model, tok = load_local(micro_dir)
    task = get_task("parity_test")
    col = collect(KVCacheSampler(model, tok), task, PromptStream(task.problems("train", 16, seed=0), 0), cfg,
                  torch.Generator().manual_seed(0), ComputeMeter())
    eos = (col.batch.response_ids == tok.eos_token_id).any(1)
    assert torch.equal(col.batch.truncated, ~eos) and col.batch.truncated.all()  # an untrained model never stops
    score(model, col.batch, None)
    adv = torch.ones(col.batch.response_ids.shape[0])
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    policy_update(model, None, opt, sched, col.batch, adv, cfg, {})
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every row masked: no update
    cfg.loss.mask_truncated = False
    policy_update(model, None, opt, sched, col.batch, adv, cfg, {})
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_model_directory_without_a_tokenizer_says_so(micro_dir, tmp_path):
    model, _ = load_local(micro_dir)
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match=r"model.name: .*bare has a model but no tokenizer"):
        load_local(tmp_path / "bare")


def test_a_layer_index_out_of_range_names_the_key(tiny_run, tmp_path):
    with pytest.raises(ValueError, match=r"probe.layer: 9 is not a fraction in \(0, 1\) or a layer index for 2"):
        train(tiny_run(tmp_path, **{"probe.layer": 9}), progress=False)


@pytest.mark.parametrize("over, match", [
    ({"budget.samples": 10}, r"budget.samples: cannot be met: one step already uses at least 16 samples"),
    ({"budget.prompts": 3}, r"budget.prompts: cannot be met"),
    ({"budget.generated_tokens": 10**9}, r"budget.generated_tokens: cannot be reached within max_steps = 2"),
    ({"budget.samples": 33}, r"budget.samples: cannot be reached within max_steps = 2 \(at most 32 samples\)"),
])
def test_a_budget_that_cannot_be_met_is_refused_at_start_up(tiny_run, tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        tiny_run(tmp_path, **over)


def test_every_training_prompt_too_long_is_an_error_not_a_truncation(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="task.max_prompt_tokens: every training prompt is longer than 5"):
        train(tiny_run(tmp_path, **{"task.max_prompt_tokens": 5}), progress=False)


def _jsonl(path, rows):
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_bad_data_file_stops_before_step_one_naming_file_line_and_field(tiny_run, tmp_path):
    from poise.data.tasks import DatasetError

    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(30)]
    rows[4]["answer"] = ""
    rows[9] = {"prompt": "What is 1 + 1?"}
    bad = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DatasetError, match=r"bad.jsonl: field 'answer' is empty in 1 of 30 rows \(line 5\)") as info:
        train(tiny_run(tmp_path, **{"task.name": "dataset", "task.path": str(bad)}), progress=False)
    assert "line 10" in str(info.value) and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_data_file_trains_and_long_prompts_are_dropped_and_counted(tiny_run, tmp_path, capsys):
    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(40)]
    rows += [{"prompt": "What is " + " + ".join(["1"] * 60) + "?", "answer": "60"} for _ in range(3)]
    rows[-1]["prompt"] += " Hurry."
    rows[-2]["prompt"] += " Please."
    data = _jsonl(tmp_path / "sums.jsonl", rows)
    cfg = tiny_run(tmp_path, **{"task.name": "dataset", "task.path": str(data), "task.max_prompt_tokens": 60,
                                "task.train_size": 43, "task.test_fraction": 0.01, "max_steps": 1})
    last = train(cfg, progress=False)
    assert last["step"] == 1 and math.isfinite(last["loss/policy"])
    assert "task.max_prompt_tokens: dropped 3 of" in capsys.readouterr().out


def test_empty_completions_score_zero_and_give_a_finite_loss():
    from poise.algo.losses import ppo_clip_loss

    task = get_task("chain_sum")
    p = task.problems("train", 1)[0]
    assert task.score_batch(["", "</think>", "<think></think>"], [p] * 3) == [0.0, 0.0, 0.0]
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)  # no valid token at all
    loss, _ = ppo_clip_loss(logp, logp.detach(), torch.ones(2), mask, 0.2, 0.28, 10.0, "token-mean", 3)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(2, 3))


def test_adam_variance_proxy_matches_the_bias_corrected_moments():
    from poise.train.metrics import adam_variance_proxy

    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.99), weight_decay=0.0)
    assert math.isnan(adam_variance_proxy(opt))
    grads = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.0, 0.5])]
    for g in grads:
        w.grad = g.clone()
        opt.step()
    m = 0.1 * (0.9 * grads[0] + grads[1])  # m_2 = 0.9 m_1 + 0.1 g_2, m_1 = 0.1 g_1
    v = 0.01 * (0.99 * grads[0] ** 2 + grads[1] ** 2)
    m_hat, v_hat = m / (1 - 0.9 ** 2), v / (1 - 0.99 ** 2)
    assert adam_variance_proxy(opt) == pytest.approx(float((v_hat - m_hat ** 2).sum()), rel=1e-6)
    assert adam_variance_proxy(opt) > 0  # the two gradients differ
