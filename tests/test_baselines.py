"""The baselines in the same loop: presets, dynamic sampling, overlong shaping, the critic, compute and budgets."""

import math

import pytest
import torch
from safetensors.torch import load_file

from poise.algo.advantages import value_advantages
from poise.config.errors import ConfigError
from poise.config.loading import build_config
from poise.config.train_config import TrainConfig
from poise.train.compute import COUNTERS, ComputeMeter, budget_reached
from poise.train.critic import ValueModel, critic_update, explained_variance
from poise.algo.losses import value_loss
from poise.rollout.models import load_local
from poise.data.tasks import encode_prompts
from poise.rollout.hf_engine import RolloutBatch, generate, score
from poise.rollout.collect import cat_batches, collect, overlong_penalty, varied_groups
from poise.rollout.sampler import KVCacheSampler
from poise.data.tasks import get_task, register_task
from poise.io.tracking import read_metrics
from poise.train.loop import compute_advantages, train
from poise.train.state import PromptStream
from conftest import ParityTask, train_and_diff
from reward_functions import half_solvable_reward

# each preset at tiny sizes: enough prompts that a step has groups with reward variance
PRESET_SIZES = {
    "poise": {}, "rloo": {},
    "grpo": {"rollout.prompts_per_step": 4, "optim.mini_batch_prompts": 2},
    "dr_grpo": {"rollout.prompts_per_step": 4, "optim.mini_batch_prompts": 2},
    "dapo": {"rollout.prompts_per_step": 4, "optim.mini_batch_prompts": 2, "reward.overlong_buffer": 4},
    "ppo": {"rollout.prompts_per_step": 16, "optim.mini_batch_prompts": 8},
}


@pytest.mark.parametrize("preset", sorted(PRESET_SIZES))
def test_preset_two_steps_finite_and_every_parameter_trained(preset, micro_dir, tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, preset, **PRESET_SIZES[preset])
    assert cfg.algorithm.name == preset
    last, unchanged = train_and_diff(cfg, micro_dir)
    assert not unchanged, unchanged
    run = tmp_path / "run"
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and last["step"] == 2
    assert all(math.isfinite(r["loss/policy"]) for r in rows)
    for k in COUNTERS:
        assert f"compute/{k}" in rows[1] and f"compute/total_{k}" in rows[1], k
    assert rows[1]["compute/total_samples"] >= 2 * cfg.rollout.prompts_per_step * cfg.rollout.group_size
    if preset in ("grpo", "dr_grpo", "dapo", "rloo", "poise"):
        assert 0.0 <= rows[1]["reward/frac_zero_std_groups"] <= 1.0
    if preset == "grpo":
        assert rows[1]["compute/forward_tokens_reference"] > 0 and "kl/ref" in rows[1]
    if preset == "dapo":
        assert {"dynamic_sampling/rounds", "dynamic_sampling/kept_fraction", "reward/overlong_penalty"} <= set(rows[1])
    if preset == "ppo":
        assert math.isfinite(rows[1]["critic/value_loss"]) and "critic/explained_variance" in rows[1]
        assert rows[1]["compute/backward_tokens_critic"] == rows[1]["compute/backward_tokens_policy"] > 0
        critic = load_file(str(run / "critic" / "critic.safetensors"))
        initial = ValueModel(load_local(micro_dir)[0]).state_dict()
        same = [k for k, v in critic.items() if torch.equal(v, initial[k])]
        assert not same, same
    else:
        assert not (run / "critic").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Advantages through the loop's single switch
# ---------------------------------------------------------------------------------------------------------------------


def _cfg(**over):
    return build_config(TrainConfig, over)


def test_grpo_and_dr_grpo_give_exactly_zero_for_identical_rewards():
    rewards = torch.tensor([1.0] * 8 + [0.0] * 8 + [0.0, 1.0] * 4)
    for name in ("grpo", "dr_grpo"):
        adv, returns, used = compute_advantages(_cfg(**{"algorithm.advantage": name, "rollout.group_size": 8}),
                                                rewards)
        assert torch.equal(adv[:16], torch.zeros(16)) and returns is None and not used
        assert adv[16:].abs().min() > 0
    grpo = compute_advantages(_cfg(**{"algorithm.advantage": "grpo", "rollout.group_size": 8}), rewards)[0]
    dr = compute_advantages(_cfg(**{"algorithm.advantage": "dr_grpo", "rollout.group_size": 8}), rewards)[0]
    assert torch.allclose(dr[16:], rewards[16:] - 0.5)
    assert torch.allclose(grpo[16:], (rewards[16:] - 0.5) / (rewards[16:].std() + 1e-6), atol=1e-5)


def test_rloo_g2_is_the_closed_form_difference():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    adv = compute_advantages(_cfg(**{"algorithm.advantage": "rloo"}), r)[0]
    pairs = r.view(-1, 2)
    assert torch.equal(adv.view(-1, 2), torch.stack([pairs[:, 0] - pairs[:, 1], pairs[:, 1] - pairs[:, 0]], 1))


def test_value_advantages_gae_and_outcome():
    rewards = torch.tensor([1.0, 0.0])
    values = torch.tensor([[0.5, 0.7, 0.9], [0.2, 0.4, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = value_advantages(rewards, values, mask, "gae")
    assert torch.allclose(adv, torch.tensor([[0.5, 0.3, 0.1], [-0.2, -0.4, 0.0]]))
    assert torch.equal(ret, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    adv, ret = value_advantages(rewards, values, mask, "outcome")
    assert torch.allclose(adv, torch.tensor([0.5, -0.2])) and torch.equal(ret, rewards)
    with pytest.raises(ValueError, match="critic mode"):
        value_advantages(rewards, values, mask, "td")


def test_value_loss_clip_and_explained_variance():
    ret = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    old = torch.tensor([[0.0, 0.0]])
    v = torch.tensor([[0.5, 0.0]], requires_grad=True)
    # inside the clip range: plain 0.5 (V - R)^2, token mean
    assert torch.isclose(value_loss(v, old, ret, mask, 1.0), torch.tensor(0.5 * 0.25 / 2))
    # clipped: the clipped value 0.2 is further from R = 1, so max() picks it and the gradient is 0
    loss = value_loss(v, old, ret, mask, 0.2)
    assert torch.isclose(loss, torch.tensor(0.5 * 0.64 / 2))
    loss.backward()
    assert v.grad[0, 0] == 0
    assert explained_variance(ret, ret, mask) == 1.0
    assert abs(explained_variance(torch.full_like(ret, 0.5), ret, mask)) < 1e-12
    assert math.isnan(explained_variance(ret[:, :1], ret[:, :1], mask[:, :1]))


# ---------------------------------------------------------------------------------------------------------------------
# The critic
# ---------------------------------------------------------------------------------------------------------------------


def _batch(micro_dir, n_prompts=8, group_size=1, seed=0):
    model, tok = load_local(micro_dir)
    problems = get_task("chain_sum").problems("train", n_prompts, seed=seed)
    ids, mask = encode_prompts(tok, problems, group_size)
    g = torch.Generator().manual_seed(seed)
    resp, rmask = generate(model, ids, mask, 10, tok.eos_token_id, tok.pad_token_id, generator=g)
    return model, tok, RolloutBatch(ids, mask, resp, rmask, group_size)


@pytest.mark.parametrize("mode", ["gae", "outcome"])
def test_critic_value_loss_decreases_on_a_fixed_batch(micro_dir, mode):
    torch.manual_seed(0)
    model, _, batch = _batch(micro_dir)
    critic = ValueModel(model)
    assert sum(p.numel() for p in critic.body.parameters()) == sum(p.numel() for p in model.base_model.parameters())
    rewards = torch.tensor([1.0, 0.0] * 4)
    opt = torch.optim.AdamW(critic.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    outcome = mode == "outcome"
    losses = []
    for _ in range(20):
        with torch.no_grad():
            values = critic(batch)
        _, returns = value_advantages(rewards, values, batch.response_mask, mode)
        old = values[:, 0] if outcome else values
        losses.append(critic_update(critic, opt, sched, batch, old, returns, outcome, 8, 1, 0.2, 1.0)
                      ["critic/value_loss"])
    assert losses[0] == pytest.approx(0.25)  # zero-initialised head: V = 0, loss 0.5 * mean(r^2)
    assert losses[-1] < 0.4 * losses[0], losses


def test_critic_values_ignore_padding(micro_dir):
    model, tok, batch = _batch(micro_dir, n_prompts=2)
    critic = ValueModel(model)
    torch.nn.init.normal_(critic.head.weight)
    with torch.no_grad():
        full = critic(batch)
        alone = critic(batch.rows(torch.tensor([0])))
    n = int(batch.response_mask[0].sum())
    assert torch.allclose(full[0, :n], alone[0, :n], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Dynamic sampling and overlong shaping
# ---------------------------------------------------------------------------------------------------------------------


def test_overlong_penalty_table():
    lengths = torch.tensor([10, 48, 52, 56, 64, 70])
    assert torch.allclose(overlong_penalty(lengths, 64, 16), torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    assert torch.allclose(overlong_penalty(lengths, 64, 16, factor=0.5)[-2], torch.tensor(-0.5))
    with pytest.raises(ValueError, match="overlong buffer"):
        overlong_penalty(lengths, 64, 0)


class HalfSolvableTask(ParityTask):
    """Parity reward, except that two of its four chain_sum levels always score 0: their groups never vary."""

    name = "half_solvable_test"
    default_levels = ("t2d1", "t3d1", "t4d1", "t5d1")
    reward_fn = staticmethod(half_solvable_reward)


register_task("half_solvable_test", HalfSolvableTask)


def test_dynamic_sampling_keeps_only_varied_groups_and_counts_drops(micro_dir, tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, "dapo", **{"rollout.prompts_per_step": 6, "algorithm.max_sampling_rounds": 5,
                                        "reward.overlong_buffer": 4, "task.name": "half_solvable_test"})
    model, tok = load_local(micro_dir)
    task = get_task("half_solvable_test")
    stream = PromptStream(task.problems("train", 64, seed=0), 0)
    meter = ComputeMeter()
    col = collect(KVCacheSampler(model, tok), task, stream, cfg, torch.Generator().manual_seed(0), meter)
    G, P = 8, 6
    assert varied_groups(col.scores, G).all() and len(col.problems) <= P
    assert col.batch.prompt_ids.shape[0] == len(col.problems) * G == col.scores.shape[0]
    generated = col.rounds * P * G
    assert meter.step["samples"] == generated == len(col.all_scores) == len(col.all_levels)
    assert col.groups_generated == col.rounds * P and col.groups_varied >= len(col.problems)
    assert col.rounds >= 2 and len(col.problems) == P  # the first round lost groups; later rounds filled the batch
    assert {p.level for p in col.problems}.isdisjoint({"t2d1", "t3d1"})
    assert sum(lv in ("t2d1", "t3d1") for lv in col.all_levels) >= G  # dropped samples are still reported
    assert meter.step["generated_tokens"] == col.generated_tokens > col.batch.response_mask.sum()
    # the kept rows are the rows that were generated: their scores match a re-scoring of the decoded text
    texts = tok.batch_decode(col.batch.response_ids, skip_special_tokens=True)
    again = task.score_batch(texts, [p for p in col.problems for _ in range(G)])
    assert torch.equal(torch.tensor(again), col.scores)


def test_dynamic_sampling_gives_up_after_the_round_cap(micro_dir, tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, "dapo", **{"task.name": "chain_sum", "rollout.prompts_per_step": 2,
                                        "algorithm.max_sampling_rounds": 2, "reward.overlong_buffer": 4})
    model, tok = load_local(micro_dir)  # untrained: never right on chain_sum, so every group is all zeros
    task = get_task("chain_sum")
    meter = ComputeMeter()
    col = collect(KVCacheSampler(model, tok), task, PromptStream(task.problems("train", 16, seed=0), 0), cfg, None,
                  meter)
    assert col.rounds == 2 and len(col.problems) == 0 and col.batch.prompt_ids.shape[0] == 0
    assert meter.step["samples"] == 2 * 2 * 8 and col.groups_varied == 0
    # the loop survives a step with nothing to train on and still logs what it generated
    cfg.max_steps = 1
    train(cfg, progress=False)
    row = read_metrics(tmp_path / "run")[0]
    assert row["dynamic_sampling/kept_fraction"] == 0 and "loss/policy" not in row
    assert row["compute/samples"] == 32 and row["reward/frac_zero_std_groups"] == 1.0


def test_cat_batches_pads_and_scores_like_separate_batches(micro_dir):
    model, tok, a = _batch(micro_dir, n_prompts=3, group_size=2, seed=1)
    _, _, b = _batch(micro_dir, n_prompts=2, group_size=2, seed=7)
    both = score(model, cat_batches([a, b], tok.pad_token_id), None)
    score(model, a, None)
    score(model, b, None)
    for i, (part, off) in enumerate([(a, 0), (b, 6)]):
        for r in range(part.prompt_ids.shape[0]):
            n = int(part.response_mask[r].sum())
            assert torch.allclose(both.old_logp[off + r, :n], part.old_logp[r, :n], atol=1e-4), (i, r)
            assert not both.response_mask[off + r, n:].any()


# ---------------------------------------------------------------------------------------------------------------------
# Compute accounting and budgets
# ---------------------------------------------------------------------------------------------------------------------


def test_meter_totals_and_budget_names():
    m = ComputeMeter()
    m.add(samples=4, generated_tokens=10, forward_tokens_policy=30, forward_tokens_critic=30)
    out = m.end_step({"time/step_s": 1.5})
    m.add(samples=4, generated_tokens=12)
    out = m.end_step({"time/step_s": 1.0})
    assert out["compute/samples"] == 4 and out["compute/total_samples"] == 8 and out["time_total/step_s"] == 2.5
    totals = m.totals_for_budget()
    assert totals["forward_tokens"] == 60 and totals["generated_tokens"] == 22
    assert budget_reached({"samples": 9}, totals) is None
    assert budget_reached({"samples": 0, "generated_tokens": 22}, totals).startswith("generated_tokens")
    with pytest.raises(KeyError, match="unknown compute counter"):
        m.add(flops=1)


def test_budget_stops_at_the_right_step(tiny_run, tmp_path):
    free = tiny_run(tmp_path / "free", **{"max_steps": 4})
    train(free, progress=False)
    totals = [r["compute/total_generated_tokens"] for r in read_metrics(tmp_path / "free" / "run")]
    # a budget just above step 2's total is reached by step 3, not before
    capped = tiny_run(tmp_path / "capped", **{"max_steps": 4, "budget.generated_tokens": int(totals[1]) + 1})
    train(capped, progress=False)
    rows = read_metrics(tmp_path / "capped" / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    # samples are deterministic: 8 prompts x 2 per step, so a budget of 40 samples ends after step 3 (48 >= 40)
    by_samples = tiny_run(tmp_path / "s", **{"max_steps": 10, "budget.samples": 40})
    train(by_samples, progress=False)
    assert read_metrics(tmp_path / "s" / "run")[-1]["step"] == 3


def test_config_rules_for_the_baselines():
    assert build_config(TrainConfig, {"algorithm.advantage": "critic", "rollout.group_size": 1})
    bad = [({"algorithm.advantage": "grpo", "rollout.group_size": 1}, "rollout.group_size"),
           ({"algorithm.advantage": "critic", "rollout.group_size": 1, "algorithm.dynamic_sampling": True},
            "rollout.group_size"),
           ({"reward.overlong_buffer": 65}, "reward.overlong_buffer"),
           ({"critic.mode": "td"}, "critic.mode"),
           ({"algorithm.advantage": "ppo"}, "algorithm.advantage"),
           ({"budget.samples": -1}, "budget.samples"),
           ({"algorithm.max_sampling_rounds": 0}, "algorithm.max_sampling_rounds")]
    for over, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_config(TrainConfig, over)


def test_the_progress_bar_counts_towards_the_first_budget_set():
    from poise.train.compute import progress_budget

    assert progress_budget({}) is None and progress_budget({"samples": 0}) is None
    assert progress_budget({"generated_tokens": 300000}) == ("generated_tokens", 300000.0)
    assert progress_budget({"seconds": 60, "samples": 512}) == ("samples", 512.0)  # BUDGETS order
