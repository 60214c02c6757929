"""Micro-batches with gradient accumulation (`optim.micro_batch_tokens`, like verl's ppo_max_token_len_per_gpu): a
mini-batch's forward and backward run a micro-batch at a time, and the optimizer step is the one the whole mini-batch
would give.

The loss of a mini-batch is a mean over a normaliser N (`losses.aggregate`): valid tokens for token-mean, sequences
with at least one valid token for the seq-mean-* modes (seq-mean-token-sum-norm divides each sequence's sum by the
constant max_len as well, which is the same in every micro-batch). With micro-batch j holding n_j of them,
    loss = sum_j (n_j / N) loss_j,
so each micro-batch's loss is scaled by n_j / N before its backward and the gradients add up to the mini-batch's.
Under several processes each rank also carries `Dist.loss_weight` (n_rank / N_global * W) over its own N, as before.

Every rank splits its mini-batch into the same number of micro-batches (the most any rank needs), because FSDP needs
every rank to make the same forward and backward calls; the number depends only on row counts, widths and the
budget, and a part is whole groups whenever that many parts fit the groups, so the forwards have the same structure
on every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from poise.algo.losses import aggregate, kl_k3, ppo_clip_loss
from poise.parallel.distributed import Dist
from poise.rollout.hf_engine import RolloutBatch, response_logprobs, rows_per_micro_batch


def width(batch: RolloutBatch) -> int:
    """Positions one row of `batch` runs through a forward: prompt + response width, padding included."""
    return batch.prompt_ids.shape[1] + batch.response_ids.shape[1]


def micro_parts(n_rows: int, row_width: int, tokens: int, group_size: int, dist: Dist | None = None) -> list[Tensor]:
    """Row indices (into a mini-batch of `n_rows` rows, whole groups of `group_size`) of its micro-batches under a
    budget of `tokens` positions (`rows_per_micro_batch`); one part holding every row when `tokens` is 0 or the rows
    fit. The count is the largest any rank needs (`dist.max`); the rows are split into that many nearly equal runs of
    whole groups when there are at least as many groups, else of single rows."""
    if tokens <= 0 or n_rows == 0:
        return [torch.arange(n_rows)]
    per = rows_per_micro_batch(row_width, tokens, group_size)
    n = -(-n_rows // per)
    n = int(dist.max(n)) if dist is not None else n  # the same count on every rank
    if n <= 1:
        return [torch.arange(n_rows)]
    G = group_size if n_rows % group_size == 0 and n <= n_rows // group_size else 1
    units = torch.arange(n_rows // G).tensor_split(n)
    return [(u[:, None] * G + torch.arange(G)).flatten() for u in units if len(u)]


def loss_count(mask: Tensor, aggregation: str) -> float:
    """What `aggregate` averages over in rows `mask` (B, T): valid tokens for token-mean, else sequences with at least
    one valid token."""
    return float(mask.sum() if aggregation == "token-mean" else (mask.sum(1) > 0).sum())


def policy_backward(model, ref_model, mb: RolloutBatch, advantages: Tensor, mask: Tensor, parts: list[Tensor],
                    cfg, weight: float, dist: Dist, reused_logp: Tensor | None = None):
    """The PPO loss of one mini-batch `mb` (advantages (n,) or (n, T), loss mask (n, T)), forward and backward one
    micro-batch (`parts`) at a time, each loss scaled by `weight` (the rank's `Dist.loss_weight`) times its share of
    the mini-batch's normaliser. `reused_logp` (n, T): the scoring pass's forward of this mini-batch with its graph,
    used instead of a forward (one part only). Gradients accumulate in the parameters' .grad.

    Returns (loss, stats, finite): the mini-batch's loss (a float, the micro-batches' weighted sum: the whole
    mini-batch's loss up to rounding), its stats (clip_ratio, approx_kl: token means; kl/ref with a reference), and
    False when a micro-batch's loss was NaN/inf on any rank: then nothing after it ran backward, and the caller must
    drop the gradients."""
    lo, T = cfg.loss, cfg.rollout.temperature
    chunk = cfg.optim.logit_chunk_tokens
    total, tokens = loss_count(mask, lo.aggregation), float(mask.sum())
    one = len(parts) == 1
    loss_sum, stats = 0.0, {"clip_ratio": 0.0, "approx_kl": 0.0}
    if ref_model is not None:
        stats["kl/ref"] = 0.0
    for rows in parts:
        micro, m = (mb, mask) if one else (mb.rows(rows), mask[rows])
        if reused_logp is not None:
            assert one, "the scoring pass's graph is reused only when the mini-batch is one micro-batch"
            logp = reused_logp
        else:
            logp = response_logprobs(model, micro, T, chunk=chunk, entropy=False)[0]
        loss, st = ppo_clip_loss(logp, micro.old_logp, advantages if one else advantages[rows], m, lo.clip_low,
                                 lo.clip_high, lo.dual_clip or None, lo.aggregation, cfg.rollout.max_new_tokens)
        share = 1.0 if one else (loss_count(m, lo.aggregation) / total if total else 0.0)
        if ref_model is not None:
            with torch.no_grad():
                ref_logp = response_logprobs(ref_model, micro, T, chunk=chunk, entropy=False)[0]
            kl = aggregate(kl_k3(logp, ref_logp), m, lo.aggregation, cfg.rollout.max_new_tokens)
            loss = loss + lo.kl_coef * kl
            stats["kl/ref"] += kl.item() * share
        if dist.any(not torch.isfinite(loss)):
            return loss.item(), stats, False  # numerical guard: no backward for it, the step will be skipped
        (loss * (weight * share)).backward()  # weight 1.0 and share 1.0 (exact) for one process, one part
        tok = 1.0 if one else (float(m.sum()) / tokens if tokens else 0.0)
        stats["clip_ratio"] += float(st["clip_ratio"]) * tok
        stats["approx_kl"] += float(st["approx_kl"]) * tok
        loss_sum += loss.item() * share
    return loss_sum, stats, True
