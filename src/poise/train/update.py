"""The policy update of one step: the PPO clipped surrogate over mini-batches of whole groups, with an optional k3 KL
penalty against a frozen reference, the numerical guard (a non-finite loss or gradient skips the optimizer step),
and, with several processes, loss weighting and gradient averaging (`poise.parallel.distributed`). Called by
`poise.train.loop.train` after the step's advantages are fixed."""

from __future__ import annotations

import torch

from poise.io.config import TrainConfig
from poise.parallel.distributed import Dist
from poise.parallel.fsdp import clip_grad_norm_
from poise.algo.correction import importance_weights, log_ratios, weight_advantages
from poise.rollout.dropout import active_dropout
from poise.rollout.engine import RolloutBatch, minibatch_rows, score, score_with_graph
from poise.rollout.logprobs import gradient_checkpointing
from poise.train.microbatch import loss_count, micro_parts, policy_backward, width


def local_minibatch_prompts(cfg: TrainConfig, n_local_prompts: int, dist: Dist) -> int:
    """This rank's prompts per mini-batch: its share of optim.mini_batch_prompts (all of them with one process)."""
    return min(cfg.optim.mini_batch_prompts, n_local_prompts * dist.world) // dist.world


def score_for_update(model, batch: RolloutBatch, n_local: int, cfg: TrainConfig, dist: Dist, layer: int | None):
    """The step's scoring pass (old log-probs, entropies, the probe layer's hidden states) in eval mode, whichever
    engine sampled (`poise.rollout.dropout`) -> (first mini-batch's rows, their log-probs with the graph kept, or None).

    Without dropout (model.disable_dropout, the default) the first mini-batch's forward is the update's own, in train
    mode, which then computes the same function (its PPO ratio is exactly 1); the other rows get no-grad forwards of
    the same size, so scoring never holds more activations than the update. With dropout kept (`active_dropout`) every
    row is scored in eval mode without a graph, and the update makes its own forward for each mini-batch (None).
    The same (None) when optim.micro_batch_tokens splits the first mini-batch in several micro-batches: keeping the
    graphs of all of them would hold the whole mini-batch's activations. Scoring then runs micro-batches of that
    budget, and optim.logit_chunk_tokens computes its log-probs and entropies in chunks."""
    first = minibatch_rows(n_local, local_minibatch_prompts(cfg, n_local, dist), cfg.rollout.group_size)[0]
    o, T = cfg.optim, cfg.rollout.temperature
    whole = len(micro_parts(len(first), width(batch), o.micro_batch_tokens, cfg.rollout.group_size, dist)) == 1
    budget = {"micro_batch_tokens": o.micro_batch_tokens, "chunk": o.logit_chunk_tokens}
    model.eval()
    if active_dropout(model) or not whole:
        score(model, batch, layer, T, micro_batch=len(first), **budget)
        return first, None
    score(model, batch, layer, T, micro_batch=len(first), skip=first, **budget)
    with gradient_checkpointing(model, cfg.model.gradient_checkpointing):
        return first, score_with_graph(model, batch, first, layer, T, o.logit_chunk_tokens)


def engine_correction(batch: RolloutBatch, advantages: torch.Tensor, cfg: TrainConfig, dist: Dist):
    """When another engine sampled the batch (vLLM: `batch.sampler_logp`), the log-prob mismatch and the truncated
    or masked importance-sampling correction of `rollout.tis_mode` -> (advantages, metrics).

    With d = log pi_old - log pi_sampler on the response tokens: rollout/logprob_diff_mean and _max: |d| per token
    (mean, max over every rank); rollout/log_ratio_token_mean: d per token (signed: the drift that sums over a
    response's length); rollout/log_ratio_seq_abs_mean: |sum_t d| per response. With rollout.tis_cap > 0, the weights
    of `poise.algo.correction.importance_weights` multiply the advantages (`weight_advantages`: the token modes make
    them (B, T)); rollout/tis_weight_mean and rollout/tis_clipped_frac are the weights' mean and the fraction above the
    cap (truncated, or masked to 0), over responses in the sequence modes and over valid tokens in the token modes.
    rollout.tis_cap 0 logs the mismatch and leaves the advantages alone. Without a sampler's log-probs (the built-in
    sampler is the policy) nothing changes and nothing is logged."""
    if batch.sampler_logp is None:
        return advantages, {}
    mask = batch.response_mask
    d = log_ratios(batch.old_logp, batch.sampler_logp, mask)  # (B, T), 0 on padding
    n, rows = float(mask.sum()), float(len(d))
    metrics = {"rollout/logprob_diff_mean": dist.sum(float(d.abs().sum())) / max(1.0, dist.sum(n)),
               "rollout/logprob_diff_max": dist.max(float(d.abs().max()) if n else 0.0),
               "rollout/log_ratio_token_mean": dist.sum(float(d.sum())) / max(1.0, dist.sum(n)),
               "rollout/log_ratio_seq_abs_mean": dist.sum(float(d.sum(1).abs().sum())) / max(1.0, dist.sum(rows))}
    cap, mode = cfg.rollout.tis_cap, cfg.rollout.tis_mode
    if cap > 0:
        w, over = importance_weights(batch.old_logp, batch.sampler_logp, mask, cap, mode)
        units = mask if w.dim() == 2 else torch.ones_like(w, dtype=torch.bool)  # valid tokens, or responses
        count = dist.sum(float(units.sum()))
        metrics["rollout/tis_weight_mean"] = dist.sum(float(w[units].sum())) / max(1.0, count)
        metrics["rollout/tis_clipped_frac"] = dist.sum(float(over[units].sum())) / max(1.0, count)
        advantages = weight_advantages(advantages, w)
    return advantages, metrics


def policy_update(model, ref_model, optimizer, scheduler, batch: RolloutBatch, advantages, cfg: TrainConfig,
                  counters: dict, dist: Dist | None = None, first_logp: torch.Tensor | None = None) -> dict:
    """PPO clipped update over mini-batches of whole groups; one optimizer step per mini-batch.

    `first_logp`: the first mini-batch's log-probs (n, T) with their graph, from `rollout.score_with_graph`; the
    first optimizer step then reuses that forward instead of running its own (its ratio is exactly 1).
    optim.micro_batch_tokens: each mini-batch's forward and backward run in micro-batches whose gradients add up to
    the mini-batch's (`microbatch.policy_backward`); model.gradient_checkpointing: checkpointed layers for the update.

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
    with gradient_checkpointing(model, cfg.model.gradient_checkpointing):  # off again for sampling (KV cache)
        for _ in range(cfg.optim.epochs):
            for rows in minibatch_rows(P, mb_prompts, G):
                mb = batch.rows(rows)
                mask = mb.response_mask & ~mb.truncated[:, None] if lo.mask_truncated else mb.response_mask
                parts = micro_parts(len(rows), width(mb), cfg.optim.micro_batch_tokens, G, dist)
                optimizer.zero_grad(set_to_none=True)
                weight = dist.loss_weight(loss_count(mask, lo.aggregation))  # 1.0 (exact) for one process
                loss, st, finite = policy_backward(model, ref_model, mb, advantages[rows], mask, parts, cfg, weight,
                                                   dist, first_logp)
                first_logp = None  # the scoring pass's forward of the first mini-batch, graph kept, is used up
                if "kl/ref" in st:
                    stats["kl/ref"].append(st["kl/ref"])
                if not finite:  # numerical guard: the step is skipped and nothing changes
                    skip(f"loss ({loss})")
                    continue
                dist.average_grads(model.parameters())
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
                gnorm = clip_grad_norm_(model.parameters(), clip)  # over all shards under FSDP
                if not torch.isfinite(gnorm):  # a NaN/inf gradient: drop it, leave weights and Adam moments alone
                    skip(f"gradient norm ({gnorm.item()})")
                    continue
                optimizer.step()
                scheduler.step()
                counters["consecutive_skips"] = 0
                stats["loss/policy"].append(loss)
                stats["clip_ratio"].append(st["clip_ratio"])
                stats["kl/approx"].append(st["approx_kl"])
                stats["grad_norm"].append(gnorm.item())
    out = {k: sum(v) / len(v) if v else float("nan") for k, v in stats.items()}
    out["optim/skipped_steps"] = skipped
    return out
