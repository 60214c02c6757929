"""Per-step metrics of the training loop, over the whole batch: with several processes, each function gathers the
per-row values of every rank first (`poise.parallel.distributed.Dist`), so the numbers are those a single process would
log for the same rollouts."""

from __future__ import annotations

import math

import torch

from poise.parallel.distributed import Dist
from poise.parallel.fsdp import local_sum
from poise.algo.probe import probe_metrics
from poise.algo.stats import auroc
from poise.rollout.hf_engine import RolloutBatch


def _cat(dist: Dist, x: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D tensor concatenated (sizes may differ)."""
    return x if dist.world == 1 else torch.cat(dist.gather_objects(x.detach().cpu()))


def sampling_metrics(cfg, rollouts, dist: Dist) -> dict:
    """Reward metrics over every sample generated this step (dropped ones included), per level, answer-checking
    counts, and the dynamic sampling and reward shaping statistics. `rollouts` is a `sampling.Collected`."""
    all_scores = _cat(dist, rollouts.all_scores)
    all_levels = [lv for part in dist.gather_objects(rollouts.all_levels) for lv in part]
    ok = torch.isfinite(all_scores)  # unscorable samples are counted, not averaged
    scores, levels = all_scores[ok], [lv for lv, k in zip(all_levels, ok.tolist()) if k]
    m = {"reward/mean": scores.mean().item() if len(scores) else float("nan"),
         "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
         "tokens/generated": int(dist.sum(rollouts.generated_tokens)),
         **{f"reward/{k}": (dist.sum(v) if isinstance(v, float) else int(dist.sum(v)))  # timeouts, errors, ...;
            for k, v in rollouts.verifier.items()}}  # code tasks: code_timeouts, code_errors, code_seconds, no_code
    for lv in sorted(set(levels)):  # reward by difficulty level, e.g. reward/level_t2d1
        m[f"reward/level_{lv}"] = scores[[i for i, x in enumerate(levels) if x == lv]].mean().item()
    tasks = sorted({lv.split("/")[0] for lv in levels}) if "+" in cfg.task.name else []  # a mixture: task/level
    for t in tasks:  # reward by task, e.g. reward/gsm8k/mean
        m[f"reward/{t}/mean"] = scores[[i for i, x in enumerate(levels) if x.split("/")[0] == t]].mean().item()
    groups, varied = dist.sum(rollouts.groups_generated), dist.sum(rollouts.groups_varied)
    if cfg.rollout.group_size > 1:
        m["reward/frac_zero_std_groups"] = 1.0 - varied / groups
    if cfg.algorithm.dynamic_sampling:  # rounds are decided jointly, so they are the same on every rank
        trained = int(dist.sum(len(rollouts.problems)))
        m["dynamic_sampling/rounds"] = rollouts.rounds
        m["dynamic_sampling/kept_fraction"] = trained / groups
        m["dynamic_sampling/groups_trained"] = trained
        if dist.world > 1:
            m["dynamic_sampling/dropped_uneven"] = rollouts.dropped_uneven  # identical on every rank
    if cfg.reward.overlong_buffer > 0 and len(rollouts.rewards):
        penalty = _cat(dist, (rollouts.rewards - rollouts.scores).nan_to_num(0.0))
        m["reward/overlong_penalty"] = penalty.mean().item()
        m["reward/overlong_fraction"] = (penalty < 0).float().mean().item()
    return m


def batch_metrics(batch: RolloutBatch, advantages: torch.Tensor, dist: Dist) -> dict:
    """Advantage, entropy and length statistics of the rows trained on."""
    mask = batch.response_mask
    adv = _cat(dist, advantages[mask] if advantages.dim() == 2 else advantages)  # token level: valid tokens
    entropy = _cat(dist, batch.entropy[mask])
    lengths, truncated = _cat(dist, mask.sum(1).float()), _cat(dist, batch.truncated.float())
    return {"advantage/mean": adv.mean().item(), "advantage/std": adv.std().item() if adv.numel() > 1 else 0.0,
            "entropy/mean": entropy.mean().item(), "completion/mean_length": lengths.mean().item(),
            "completion/truncated_fraction": truncated.mean().item()}


def probe_step_metrics(baseline: torch.Tensor, scores: torch.Tensor, dist: Dist, prefix: str = "probe/") -> dict:
    """`probe/mae`, `probe/pearson` and `probe/auroc` (the baseline ranking rows with score > 1/2 above the others)
    of the probe's baseline against the rewards (scorable rows); `prefix` names them (per task: probe/<task>/)."""
    b, s = _cat(dist, baseline), _cat(dist, scores)
    ok = torch.isfinite(s)
    return {f"{prefix}{k}": v for k, v in {**probe_metrics(b[ok], s[ok]),
                                           "auroc": auroc(b[ok], s[ok] > 0.5)}.items()}


def mean_over_ranks(stats: dict, dist: Dist, keep: tuple[str, ...] = ()) -> dict:
    """Average scalar statistics over ranks (each rank's value is a mean over an equal share of the batch);
    keys in `keep` are already identical on every rank and are left alone."""
    if dist.world == 1:
        return stats
    return {k: v if k in keep else dist.sum(v) / dist.world for k, v in stats.items()}


def adam_variance_proxy(optimizer: torch.optim.Optimizer, dist: Dist | None = None) -> float:
    """The gradient-variance proxy the POISE paper plots: sum over parameters of v_hat - m_hat^2.

      m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)    (Adam's bias-corrected moment estimates)

    v_hat estimates E[g^2] and m_hat^2 estimates E[g]^2 over recent steps, so their difference tracks the variance of
    the stochastic gradient. Returns nan before the first optimizer step. Source: POISE §6 (gradient variance).
    With `dist` sharded (FSDP) each rank holds a shard of the moments, so the sum runs over all ranks' shards (a
    collective every rank joins); otherwise the moments, and so the result, are identical on every rank.
    """
    total, seen = 0.0, False
    for group in optimizer.param_groups:
        b1, b2 = group["betas"]
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st or "exp_avg" not in st:
                continue
            t = float(st["step"])
            m_hat = st["exp_avg"] / (1 - b1 ** t)
            v_hat = st["exp_avg_sq"] / (1 - b2 ** t)
            total += local_sum(v_hat - m_hat ** 2)  # under FSDP, this rank's shard
            seen = True
    if dist is not None and dist.sharded:
        total = dist.sum(total)
    return total if seen else float("nan")


def sample_rows(tokenizer, rollouts, advantages: torch.Tensor, n: int) -> list[dict]:
    """The first `n` rows of this rank's batch as JSON-able dicts: question, gold answer, completion (decoded, special
    tokens dropped), reward (None when unscorable) and advantage (the mean over response tokens when token level)."""
    batch, G, out = rollouts.batch, rollouts.batch.group_size, []
    for i in range(min(n, batch.response_ids.shape[0])):
        problem, m = rollouts.problems[i // G], batch.response_mask[i]
        adv = advantages[i][m].mean() if advantages.dim() == 2 else advantages[i]
        reward = float(rollouts.rewards[i])
        out.append({"prompt": problem.question, "answer": problem.answer,
                    "completion": tokenizer.decode(batch.response_ids[i][m], skip_special_tokens=True),
                    "reward": None if math.isnan(reward) else reward, "advantage": float(adv)})
    return out
