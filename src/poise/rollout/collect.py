"""Collecting one step's rollouts: generate, reward, and (DAPO) dynamic sampling and overlong shaping.

Dynamic sampling (Yu et al. 2025, DAPO §3.2): groups whose G rewards are all equal carry no group-relative signal
and are dropped; further rounds of `prompts_per_step` new prompts are generated until `prompts_per_step` groups
with reward variance are kept or the round cap is hit. Surplus groups of the last round are dropped too. Every
generated sample, kept or not, is counted in the step's compute and in its reward metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from poise.rollout.hf_engine import RolloutBatch
from poise.rollout.sampler import Sampler, SamplingParams, sample_and_score


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment, added to the task reward.

      p(L) = 0                                  if L <= max_len - buffer
           = factor * ((max_len - buffer) - L) / buffer   if max_len - buffer < L <= max_len   (linear, 0 to -factor)
           = -factor                            if L > max_len
    Args:
        lengths: (B,) response lengths in tokens.
        max_len: the generation limit L_max.  buffer: L_cache (> 0).  factor: penalty at the limit.
    Returns:
        (B,) float penalties in [-factor, 0].
    Source: Yu et al. 2025 (DAPO), Eq. 13.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong buffer must be in (0, max_len={max_len}], got {buffer}")
    over = (lengths.float() - (max_len - buffer)) / buffer  # > 0 inside the buffer
    return -factor * over.clamp(0.0, 1.0)


def varied_groups(scores: Tensor, group_size: int) -> Tensor:
    """(P,) True for groups whose scorable (finite) scores are not all equal. scores: (B,) with B = P * G;
    NaN marks an unscorable row, which neither adds nor removes variance."""
    g = scores.view(-1, group_size)
    ok = torch.isfinite(g)
    hi = torch.where(ok, g, torch.full_like(g, -torch.inf)).amax(dim=1)
    lo = torch.where(ok, g, torch.full_like(g, torch.inf)).amin(dim=1)
    return (ok.sum(dim=1) >= 2) & (hi != lo)


def cat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Stack unscored batches of the same group size: prompts re-padded on the left, responses on the right."""
    if len(batches) == 1:
        return batches[0]
    L = max(b.prompt_ids.shape[1] for b in batches)
    T = max(b.response_ids.shape[1] for b in batches)

    def left(x, n, value):
        return torch.nn.functional.pad(x, (n - x.shape[1], 0), value=value)

    def right(x, n, value):
        return torch.nn.functional.pad(x, (0, n - x.shape[1]), value=value)

    return RolloutBatch(torch.cat([left(b.prompt_ids, L, pad_id) for b in batches]),
                        torch.cat([left(b.prompt_mask, L, False) for b in batches]),
                        torch.cat([right(b.response_ids, T, pad_id) for b in batches]),
                        torch.cat([right(b.response_mask, T, False) for b in batches]),
                        batches[0].group_size, ended=torch.cat([b.truncated.logical_not() for b in batches]),
                        sampler_logp=None if batches[0].sampler_logp is None else
                        torch.cat([right(b.sampler_logp, T, 0.0) for b in batches]))


CODE_COUNTERS = ("code_timeouts", "code_errors", "code_seconds", "no_code")  # code tasks' counters (tasks/code.py)


@dataclass
class Collected:
    """One step's training rollouts and everything generated on the way."""

    batch: RolloutBatch  # the groups trained on (B = P' * G rows, P' <= prompts_per_step)
    problems: list  # (P') problems of the kept groups
    scores: Tensor  # (B,) task reward 0/1 of the kept rows; NaN where unscorable
    rewards: Tensor  # (B,) scores + overlong penalty: what advantages are computed from
    all_scores: Tensor  # (N,) task reward of every sample generated this step, kept or dropped (NaN: unscorable)
    all_levels: list  # (N,) difficulty level of each generated sample
    rounds: int
    groups_generated: int
    groups_varied: int  # groups with reward variance among all generated
    generated_tokens: int  # response tokens generated, dropped samples included
    reward_seconds: float  # time spent decoding and verifying answers
    verifier: dict  # this step's verifier counts: timeouts, errors, rejected, unscorable (+ CODE_COUNTERS for code)
    dropped_uneven: int = 0  # several processes, dynamic sampling: kept groups dropped so every rank gets as many
    all_problems: list = field(default_factory=list)  # (N / G) this rank's problem of every group generated, in order


def global_keep(ok: Tensor, budget: int, dist, mini_batch: int) -> tuple[list[int], int, list[int]]:
    """Dynamic sampling over several processes: which of this rank's groups to keep so that all ranks together keep
    the first `budget` varied groups of the round in single-process order, as one process would.

    ok: (n,) this rank's varied flags (its share of the round's P = n * W prompts, in local order).
    Returns (local positions kept, groups kept over all ranks, their indices among the round's P prompts)."""
    P = len(ok) * dist.world
    varied = dist.gather_rows(ok.long(), dist.global_order(P, mini_batch)).bool()  # (P,) single-process order
    chosen = varied.nonzero().flatten()[:budget].tolist()
    mine = dist.local_prompts(P, mini_batch)
    where = {g: i for i, g in enumerate(mine)}
    local = [where[g] for g in chosen if g in where]
    return local, len(chosen), [mine[i] for i in local]


def rebalance(kept: list, dist, mini_batch: int) -> tuple[list, int]:
    """Dynamic sampling over several processes: the kept groups are uneven across ranks, so gather them all (in
    single-process order: round, then prompt) and give each rank its interleaved share of whole groups, as for a
    fixed batch (distributed.py). The total is cut to a multiple of W, so a short step drops at most W - 1 groups.

    kept: this rank's [(RolloutBatch, problems, scores, keys)], keys = (round, prompt index) per group.
    Returns (this rank's [(RolloutBatch on the CPU, problems, scores)] and the groups dropped to even the split)."""
    groups = []
    for batch, problems, scores, keys in kept:
        G = batch.group_size
        for j, (problem, key) in enumerate(zip(problems, keys)):
            rows = torch.arange(j * G, (j + 1) * G)
            groups.append((key, batch.rows(rows).to("cpu"), problem, scores[rows]))
    everything = sorted((g for part in dist.gather_objects(groups) for g in part), key=lambda g: g[0])
    K = len(everything) - len(everything) % dist.world
    mine = dist.local_prompts(K, min(mini_batch, K)) if K else []
    return [(everything[i][1], [everything[i][2]], everything[i][3]) for i in mine], len(everything) - K


def collect(sampler: Sampler, task, stream, cfg, generator, meter, dist=None) -> Collected:
    """Generate (through `sampler`, `poise.rollout.sampler`) and reward `cfg.rollout.prompts_per_step` groups, with
    dynamic sampling when enabled.

    `cfg` is the TrainConfig; `meter` (compute.ComputeMeter) receives prompts, samples, prompt and generated tokens.
    With several processes (`dist`, distributed.Dist) each rank generates its share of every round; dynamic
    sampling then decides which groups to keep over all ranks (`global_keep`) and re-splits them (`rebalance`).
    """
    r, G, P = cfg.rollout, cfg.rollout.group_size, cfg.rollout.prompts_per_step
    dynamic = cfg.algorithm.dynamic_sampling
    spread = dynamic and dist is not None and dist.world > 1  # keep decisions and the kept groups span ranks
    mb = min(cfg.optim.mini_batch_prompts, P)
    kept: list[tuple[RolloutBatch, list, Tensor, list]] = []
    all_scores, all_levels, all_problems = [], [], []
    rounds = n_kept = generated = varied = n_tokens = 0
    reward_seconds = 0.0
    before = dict(task.verifier.stats)
    code_before = dict(task.code_stats) if task.uses_code else None  # code tasks: the sandbox's counters
    params = SamplingParams(r.max_new_tokens, r.temperature, r.top_p)
    while rounds == 0 or (dynamic and n_kept < P and rounds < cfg.algorithm.max_sampling_rounds):
        rounds += 1
        problems = stream.take(P)  # with several processes: this rank's share of P (the loop hands a sharded stream)
        n = len(problems)
        out = sample_and_score(sampler, task, problems, G, params, generator)  # (n*G) rows
        batch = out.batch
        n_tokens += int(batch.response_mask.sum())
        prefilled = 0 if batch.extras.get("prefill_reused") else int(batch.prompt_mask[::G].sum())  # once a group
        meter.add(prompts=n, samples=n * G, prompt_tokens=prefilled, generated_tokens=int(batch.response_mask.sum()))
        scores = torch.tensor([math.nan if x is None else x for x in out.scores],
                              dtype=torch.float32)  # NaN: unscorable
        reward_seconds += out.score_seconds
        all_scores.append(scores)
        all_levels += [p.level for p in problems for _ in range(G)]
        all_problems += problems
        ok = varied_groups(scores, G) if G > 1 else torch.zeros(n, dtype=torch.bool)
        generated, varied = generated + n, varied + int(ok.sum())
        if spread:
            local, n_new, keys = global_keep(ok, P - n_kept, dist, mb)
            keep = torch.tensor(local, dtype=torch.long)
        else:
            keep = ok.nonzero().flatten()[: P - n_kept] if dynamic else torch.arange(n)
            n_new, keys = len(keep), keep.tolist()
        if len(keep):
            rows = (keep[:, None] * G + torch.arange(G)).flatten()
            kept.append((batch.rows(rows), [problems[i] for i in keep.tolist()], scores[rows],
                         [(rounds, k) for k in keys]))
        n_kept += n_new  # over all ranks: the loop condition is the same on every rank

    uneven = 0
    if spread:
        kept, uneven = rebalance(kept, dist, cfg.optim.mini_batch_prompts)
        kept = [(b.to(batch.prompt_ids.device), *rest) for b, *rest in kept]
    if kept:
        batch = cat_batches([k[0] for k in kept], sampler.tokenizer.pad_token_id)
        problems = [p for k in kept for p in k[1]]
        scores = torch.cat([k[2] for k in kept])
    else:  # dynamic sampling found no group with reward variance: nothing to train on this step
        batch = RolloutBatch(*(x[:0] for x in (batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                                  batch.response_mask)), G)
        problems, scores = [], torch.zeros(0)
    rewards = scores.clone()
    if cfg.reward.overlong_buffer > 0 and len(scores):
        rewards += overlong_penalty(batch.response_mask.sum(1).cpu(), r.max_new_tokens, cfg.reward.overlong_buffer,
                                    cfg.reward.overlong_penalty)
    counts = {k: task.verifier.stats[k] - before.get(k, 0) for k in ("timeouts", "errors", "rejected", "unscorable")}
    if code_before is not None:
        counts.update({k: task.code_stats.get(k, 0) - code_before.get(k, 0) for k in CODE_COUNTERS})
    return Collected(batch, problems, scores, rewards, torch.cat(all_scores), all_levels, rounds,
                     generated, varied, n_tokens, reward_seconds, counts, uneven, all_problems)
