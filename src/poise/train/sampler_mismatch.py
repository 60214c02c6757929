"""The vLLM correction: when another engine sampled the step's rollouts, its log-probs and the policy's differ a
little (kernels, precision), so the rollouts are slightly off-policy. `correct_for_sampler` logs the mismatch and
applies the importance-sampling correction of `rollout.tis_mode` (`poise.algo.correction`) to the advantages,
between the advantages and the update."""

from __future__ import annotations

import torch

from poise.algo.correction import importance_weights, log_ratios, weight_advantages
from poise.config.train_config import TrainConfig
from poise.parallel.distributed import Dist
from poise.rollout.hf_engine import RolloutBatch


def correct_for_sampler(batch: RolloutBatch, advantages: torch.Tensor, cfg: TrainConfig, dist: Dist):
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
