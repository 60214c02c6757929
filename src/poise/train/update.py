"""The policy update of one step: the PPO clipped surrogate over mini-batches of whole groups, with an optional k3 KL
penalty against a frozen reference, the numerical guard (a non-finite loss or gradient skips the optimizer step),
and, with several processes, loss weighting and gradient averaging (`poise.parallel.distributed`). Called by
`poise.train.loop.train` after the step's advantages are fixed."""

from __future__ import annotations

import math

import torch

from poise.io.config import TrainConfig
from poise.parallel.distributed import Dist
from poise.parallel.fsdp import clip_grad_norm_
from poise.algo.losses import aggregate, kl_k3, ppo_clip_loss, truncated_is_weights
from poise.rollout.engine import RolloutBatch, minibatch_rows, response_logits, score, score_with_graph, token_logprobs


def local_minibatch_prompts(cfg: TrainConfig, n_local_prompts: int, dist: Dist) -> int:
    """This rank's prompts per mini-batch: its share of optim.mini_batch_prompts (all of them with one process)."""
    return min(cfg.optim.mini_batch_prompts, n_local_prompts * dist.world) // dist.world


def score_for_update(model, batch: RolloutBatch, n_local: int, cfg: TrainConfig, dist: Dist, layer: int | None):
    """The step's scoring pass (old log-probs, entropies, the probe layer's hidden states) -> (first mini-batch's
    rows, their log-probs with the graph kept). The first mini-batch's forward is the update's own (its PPO ratio is
    exactly 1); the other rows get no-grad forwards of the same size (eval mode), so scoring never holds more
    activations than the update."""
    first = minibatch_rows(n_local, local_minibatch_prompts(cfg, n_local, dist), cfg.rollout.group_size)[0]
    score(model, batch, layer, cfg.rollout.temperature, micro_batch=len(first), skip=first)
    return first, score_with_graph(model, batch, first, layer, cfg.rollout.temperature)


def engine_correction(batch: RolloutBatch, advantages: torch.Tensor, cfg: TrainConfig, dist: Dist):
    """When another engine sampled the batch (vLLM: `batch.sampler_logp`), the log-prob mismatch and the
    sequence-level truncated importance-sampling correction -> (advantages, metrics).

    rollout/logprob_diff_mean and _max: |log pi_old - log pi_sampler| over the response tokens (mean, max over every
    rank); rollout/tis_weight_mean and rollout/tis_clipped_frac: the weights w_i = min(exp(sum_t log ratio), cap) and
    the fraction that hit the cap (`truncated_is_weights`). Each response's advantage is multiplied by its w_i (token-
    level critic advantages (B, T) row by row); rollout.tis_cap 0 logs the mismatch and leaves the advantages alone.
    Without a sampler's log-probs (the built-in sampler is the policy) nothing changes and nothing is logged."""
    if batch.sampler_logp is None:
        return advantages, {}
    mask = batch.response_mask
    diff = torch.where(mask, (batch.old_logp - batch.sampler_logp).abs(), torch.zeros_like(batch.old_logp))
    n = float(mask.sum())
    metrics = {"rollout/logprob_diff_mean": dist.sum(float(diff.sum())) / max(1.0, dist.sum(n)),
               "rollout/logprob_diff_max": dist.max(float(diff.max()) if n else 0.0)}
    cap = cfg.rollout.tis_cap
    if cap > 0:
        w, log_w = truncated_is_weights(batch.old_logp, batch.sampler_logp, mask, cap)
        rows = float(len(w))
        metrics["rollout/tis_weight_mean"] = dist.sum(float(w.sum())) / max(1.0, dist.sum(rows))
        metrics["rollout/tis_clipped_frac"] = dist.sum(float((log_w > math.log(cap)).sum())) / max(1.0, dist.sum(rows))
        w = w.to(advantages.device, advantages.dtype)
        advantages = advantages * (w if advantages.dim() == 1 else w[:, None])
    return advantages, metrics


def policy_update(model, ref_model, optimizer, scheduler, batch: RolloutBatch, advantages, cfg: TrainConfig,
                  counters: dict, dist: Dist | None = None, first_logp: torch.Tensor | None = None) -> dict:
    """PPO clipped update over mini-batches of whole groups; one optimizer step per mini-batch.

    `first_logp`: the first mini-batch's log-probs (n, T) with their graph, from `rollout.score_with_graph`; the
    first optimizer step then reuses that forward instead of running its own (its ratio is exactly 1).

    Numerical guard: a mini-batch whose loss or gradient norm is NaN/inf is skipped with the weights, the optimizer
    moments and the learning-rate schedule untouched; `counters` keeps the run's skipped total and the current
    run of consecutive skips, and more than optim.max_consecutive_skips in a row stops training.
    Several processes (`dist`): each rank holds its share of every mini-batch (distributed.py), weights its loss by
    its share of what the loss averages over, and gradients are averaged before clipping; skips are decided jointly.
    """
    dist = dist or Dist()
    advantages = advantages.to(batch.response_ids.device)  # computed on the CPU (a critic's: on the model's device)
    G, lo = batch.group_size, cfg.loss
    P = batch.prompt_ids.shape[0] // G  # this rank's prompts
    mb_prompts = local_minibatch_prompts(cfg, P, dist)
    stats: dict[str, list[float]] = {"loss/policy": [], "clip_ratio": [], "kl/approx": [], "grad_norm": []}
    if lo.kl_coef > 0:
        stats["kl/ref"] = []
    skipped = 0

    def skip(what: str) -> None:
        nonlocal skipped
        optimizer.zero_grad(set_to_none=True)
        skipped += 1
        counters["skipped_total"] = counters.get("skipped_total", 0) + 1
        counters["consecutive_skips"] = counters.get("consecutive_skips", 0) + 1
        if counters["consecutive_skips"] > cfg.optim.max_consecutive_skips:
            raise FloatingPointError(
                f"{counters['consecutive_skips']} optimizer steps in a row had a non-finite {what} (NaN/inf); "
                f"stopping (optim.max_consecutive_skips = {cfg.optim.max_consecutive_skips}). Check the learning rate "
                f"(optim.lr = {cfg.optim.lr}), the model dtype ({cfg.model.dtype}) and the rewards "
                "(reward/unscorable in metrics.jsonl); the last checkpoint holds the state before the failure.")

    model.train()
    for _ in range(cfg.optim.epochs):
        for rows in minibatch_rows(P, mb_prompts, G):
            mb = batch.rows(rows)
            mask = mb.response_mask & ~mb.truncated[:, None] if lo.mask_truncated else mb.response_mask
            if first_logp is not None:  # the scoring pass's forward of this mini-batch, graph kept
                logp, first_logp = first_logp, None
            else:
                logp = token_logprobs(response_logits(model, mb, cfg.rollout.temperature), mb.response_ids)
            loss, st = ppo_clip_loss(logp, mb.old_logp, advantages[rows], mask, lo.clip_low,
                                     lo.clip_high, lo.dual_clip or None, lo.aggregation,
                                     cfg.rollout.max_new_tokens)
            if ref_model is not None:
                with torch.no_grad():
                    ref_logp = token_logprobs(response_logits(ref_model, mb, cfg.rollout.temperature),
                                              mb.response_ids)
                kl = aggregate(kl_k3(logp, ref_logp), mask, lo.aggregation, cfg.rollout.max_new_tokens)
                loss = loss + lo.kl_coef * kl
                stats["kl/ref"].append(kl.item())
            optimizer.zero_grad(set_to_none=True)
            if dist.any(not torch.isfinite(loss)):  # numerical guard: no backward, no step, nothing changes
                skip(f"loss ({loss.item()})")
                continue
            n_local = mask.sum() if lo.aggregation == "token-mean" else (mask.sum(1) > 0).sum()
            (loss * dist.loss_weight(float(n_local))).backward()  # weight 1.0 (exact) for one process
            dist.average_grads(model.parameters())
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            gnorm = clip_grad_norm_(model.parameters(), clip)  # over all shards under FSDP
            if not torch.isfinite(gnorm):  # a NaN/inf gradient: drop it, leave weights and Adam moments alone
                skip(f"gradient norm ({gnorm.item()})")
                continue
            optimizer.step()
            scheduler.step()
            counters["consecutive_skips"] = 0
            stats["loss/policy"].append(loss.item())
            stats["clip_ratio"].append(float(st["clip_ratio"]))
            stats["kl/approx"].append(float(st["approx_kl"]))
            stats["grad_norm"].append(gnorm.item())
    out = {k: sum(v) / len(v) if v else float("nan") for k, v in stats.items()}
    out["optim/skipped_steps"] = skipped
    return out
