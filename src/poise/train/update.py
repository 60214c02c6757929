"""The policy update of one step: the PPO clipped surrogate over mini-batches of whole groups, with an optional k3 KL
penalty against a frozen reference, the numerical guard (a non-finite loss or gradient skips the optimizer step),
and, with several processes, loss weighting and gradient averaging (`poise.parallel.distributed`). The loop's phase
is `update_phase`, called after the step's advantages are fixed; `policy_update` is the update itself."""

from __future__ import annotations

import torch

from poise.config.train_config import TrainConfig
from poise.parallel.distributed import Dist
from poise.parallel.fsdp import clip_grad_norm_
from poise.rollout.hf_engine import RolloutBatch, minibatch_rows
from poise.rollout.logprobs import gradient_checkpointing
from poise.train.compute import n_tokens
from poise.train.metrics import mean_over_ranks
from poise.train.microbatch import loss_count, micro_parts, policy_backward, width


def local_minibatch_prompts(cfg: TrainConfig, n_local_prompts: int, dist: Dist) -> int:
    """This rank's prompts per mini-batch: its share of optim.mini_batch_prompts (all of them with one process)."""
    return min(cfg.optim.mini_batch_prompts, n_local_prompts * dist.world) // dist.world


def update_phase(state, scored, advantages: torch.Tensor) -> dict:
    """The loop's policy update (`policy_update`) on this rank's scored rows (`scoring.Scored`), reusing the scoring
    pass's forward of the first mini-batch when it kept one; its statistics averaged over ranks. Counts the policy's
    forward and backward tokens (and the reference's forward tokens with a KL penalty)."""
    cfg, batch = state.cfg, scored.batch
    stats = policy_update(state.model, state.ref_model, state.optimizer, state.scheduler, batch, advantages, cfg,
                          state.counters, state.dist, scored.take_update_forward())
    passes = cfg.optim.epochs * n_tokens(batch)
    state.meter.add(forward_tokens_policy=passes, backward_tokens_policy=passes,
                    forward_tokens_reference=passes if state.ref_model is not None else 0)
    return mean_over_ranks(stats, state.dist, keep=("optim/skipped_steps",))


def policy_update(model, ref_model, optimizer, scheduler, batch: RolloutBatch, advantages, cfg: TrainConfig,
                  counters: dict, dist: Dist | None = None, reused_logp: torch.Tensor | None = None) -> dict:
    """PPO clipped update over mini-batches of whole groups; one optimizer step per mini-batch.

    `reused_logp`: the first mini-batch's log-probs (n, T) with their graph, from the scoring pass
    (`poise.train.scoring.score_policy`); the first optimizer step then reuses that forward instead of running its own
    (its ratio is exactly 1).
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
                                                   dist, reused_logp)
                reused_logp = None  # the scoring pass's forward of the first mini-batch, graph kept, is used up
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
