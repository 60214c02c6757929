"""Losses: PPO clipped surrogate (clip-higher, dual-clip), loss aggregation, k3 KL, clipped value loss, and the
truncated importance-sampling weights that correct for a rollout engine whose log-probs differ from the policy's.

Shape vocabulary: B sequences, T response tokens. Masks are (B, T), 1/True on valid response tokens
(including the final EOS token), 0/False on padding. Masked positions are handled with torch.where,
never by multiplication, so garbage (inf / nan) in padded log-probs yields exactly zero gradient.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from poise.algo import Aggregation

__all__ = ["AGG_MODES", "Aggregation", "aggregate", "ppo_clip_loss", "kl_k3", "value_loss", "LOG_RATIO_CLAMP"]

AGG_MODES = get_args(Aggregation)

# veRL clamps the log importance ratio to [-20, 20] before exp; we do the same so that an extreme
# ratio cannot overflow to inf and turn a zero gradient (clipped branch) into nan (0 * inf).
LOG_RATIO_CLAMP = 20.0


def aggregate(values: Tensor, mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """Reduce a per-token loss matrix to a scalar.

    With m = mask, n_b = sum_t m[b,t], S = {b : n_b > 0}:
      "token-mean"              : sum_{b,t} m v / sum_{b,t} m                         (DAPO, Yu et al. 2025)
      "seq-mean-token-mean"     : 1/|S| sum_{b in S} (sum_t m v / n_b)                (GRPO, Shao et al. 2024)
      "seq-mean-token-sum"      : 1/|S| sum_{b in S} sum_t m v
      "seq-mean-token-sum-norm" : 1/|S| sum_{b in S} sum_t m v / max_len   (Dr. GRPO, Liu et al. 2025;
                                   max_len defaults to T)
    Sequences with no valid token contribute nothing (and are not counted in |S|); if nothing is
    valid the result is 0 (still attached to the graph), never nan.

    Args:
        values: (B, T) per-token values.
        mask: (B, T) bool or {0,1}.
        mode: one of AGG_MODES.
        max_len: normaliser for "seq-mean-token-sum-norm" (default T).
    Returns:
        scalar tensor.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {list(AGG_MODES)}")
    m = mask.bool()
    v = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if mode == "token-mean":
        return v.sum() / m.sum().clamp(min=1)
    n_tok = m.sum(dim=-1)  # (B,)
    seq_valid = n_tok > 0
    n_seq = seq_valid.sum().clamp(min=1)
    seq_sum = v.sum(dim=-1)  # (B,), exactly 0 for empty sequences
    if mode == "seq-mean-token-mean":
        per_seq = seq_sum / n_tok.clamp(min=1)
    elif mode == "seq-mean-token-sum":
        per_seq = seq_sum
    else:
        norm = values.shape[-1] if max_len is None else max_len
        if norm <= 0:
            raise ValueError(f"max_len must be positive, got {norm}")
        per_seq = seq_sum / norm
    return per_seq.sum() / n_seq


def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 10.0,
    agg: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with asymmetric clipping (clip-higher) and dual-clip.

      ratio   = exp(clamp(logp - old_logp, -20, 20))                  (valid tokens; 1 on padding)
      l1      = -A * ratio
      l2      = -A * clip(ratio, 1 - clip_low, 1 + clip_high)
      l       = max(l1, l2)
      if A < 0 and dual_clip = c:  l = min(l, -A * c)                (Ye et al. 2020, dual-clip PPO)
      loss    = aggregate(l, mask, agg, max_len)

    Stats (detached scalars, means over valid tokens):
      "clip_ratio":      fraction where the clipped term was chosen and differs (l2 > l1)
      "dual_clip_ratio": fraction with A < 0 where the dual-clip cap was active (max(l1,l2) > -A c)
      "approx_kl":       k3 estimator of KL(old || new): (ratio - 1) - log ratio (Schulman 2020)

    Args:
        logp: (B, T) log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: (B, T) log-probs under the behaviour policy (treated as constants).
        advantages: (B,) one advantage per sequence, broadcast over its tokens (or (B, T) per token).
        mask: (B, T) valid response tokens.
        clip_low, clip_high: epsilon_low, epsilon_high (DAPO clip-higher: 0.2, 0.28).
        dual_clip: c > 1, or None to disable.
        agg: aggregation mode, see `aggregate`.
        max_len: for "seq-mean-token-sum-norm".
    Returns:
        (scalar loss, stats dict).
    Source: Schulman et al. 2017 (PPO); Yu et al. 2025 (DAPO clip-higher); Ye et al. 2020 (dual-clip);
        POISE §5 defaults.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    m = mask.bool()
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)  # (B, 1)
    adv = adv.to(logp.dtype)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    log_ratio = torch.where(m, logp - old_logp.detach().to(logp.dtype), zero)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    l1 = -adv * ratio
    l2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(l1, l2)
    if dual_clip is not None:
        l3 = -adv * dual_clip
        per_token = torch.where(adv < 0, torch.minimum(clipped, l3), clipped)
        dual_active = (adv < 0) & (clipped > l3)
    else:
        per_token = clipped
        dual_active = torch.zeros_like(m)
    loss = aggregate(per_token, m, agg, max_len)

    with torch.no_grad():
        n = m.sum().clamp(min=1).to(logp.dtype)

        def frac(b: Tensor) -> Tensor:
            return (b & m).sum().to(logp.dtype) / n

        k3 = torch.where(m, (ratio - 1.0) - log_ratio, zero)
        stats = {
            "clip_ratio": frac(l2 > l1),
            "dual_clip_ratio": frac(dual_active.expand_as(m)),
            "approx_kl": k3.sum() / n,
        }
    return loss, stats


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 KL estimator between the policy and a reference policy (sampled from the policy).

      d  = ref_logp - logp
      k3 = exp(d) - d - 1     (>= 0; unbiased for KL(pi || pi_ref); Schulman 2020 "Approximating KL")

    Clamp d to [-20, 20] (as veRL does) to avoid overflow.

    Args:
        logp: (B, T) log-probs under the policy.
        ref_logp: (B, T) log-probs under the reference policy.
    Returns:
        (B, T); mask it with `aggregate`.
    """
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.2) -> Tensor:
    """PPO clipped value loss, token-mean over valid positions.

      v_clip = old + clamp(V - old, -clip, clip)
      l      = 0.5 * max((V - R)^2, (v_clip - R)^2)      (clip None or 0: l = 0.5 (V - R)^2)
      loss   = sum_{b,t} m l / sum_{b,t} m

    Args:
        values: (B, T) current critic values (requires grad).
        old_values: (B, T) values when the rollouts were scored (constants).
        returns: (B, T) targets.
        mask: (B, T) valid positions.
        clip: value clip range.
    Returns:
        scalar.
    Source: Schulman et al. 2017 (PPO, baselines implementation); verl `compute_value_loss`.
    """
    err = (values - returns) ** 2
    if clip:
        v_clip = old_values.detach() + (values - old_values.detach()).clamp(-clip, clip)
        err = torch.maximum(err, (v_clip - returns) ** 2)
    return aggregate(0.5 * err, mask, "token-mean")
