"""Importance weights for responses sampled by another engine than the policy (vLLM, often in bf16), in the four modes
of TRL's `vllm_importance_sampling_mode`: per sequence or per token, each truncated or masked at a cap C.

Shape vocabulary: B sequences, T response tokens; masks are (B, T), True on valid response tokens (EOS included).
With the per-token log ratio of the scoring pass (pi_old) over the engine's own log-probs (pi_sampler),

    d_bt = mask_bt * (old_logp_bt - sampler_logp_bt)                         (0 on padding)

    sequence_truncate   w_b  = min(exp(sum_t d_bt), C)                       (B,)   TRL, verl sequence-level TIS
    sequence_mask       w_b  = exp(sum_t d_bt) if it is <= C, else 0         (B,)   TRL
    token_truncate      w_bt = min(exp(d_bt), C)                             (B, T) TRL, verl token-level TIS
    token_mask          w_bt = exp(d_bt) if it is <= C, else 0               (B, T) TRL

(token weights are 1 on padding, where nothing is trained). The weights are detached constants. Each token's loss is
multiplied by its weight (TRL multiplies the per-token PPO loss; the KL penalty is not weighted). For the PPO clipped
surrogate a weight w >= 0 may equally multiply the advantage, max(-A r, -A clip(r)) w = max(-(wA) r, -(wA) clip(r)),
and so may the dual-clip bound, so `weight_advantages` turns (B,) advantages into (B, T) ones for the token modes.
A masked unit (w = 0) still counts in the loss's normaliser, as in TRL.

Why several modes: a per-token mismatch sums over a response's length, so sequence weights of long responses drift
far from 1 (small when pi_old is below the engine's on average, else capped), while token weights stay near 1
whatever the length; sequence weights are the unbiased correction of the whole response's probability.
Sources: TRL GRPOTrainer (`vllm_importance_sampling_correction`, `_mode`, `_cap`); Yao et al. 2025, "Your Efficient
RL Framework Secretly Brings You Off-Policy RL Training" (truncated importance sampling, verl).
"""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import Tensor

from poise.algo import TisMode

__all__ = ["TIS_MODES", "TisMode", "importance_weights", "log_ratios", "weight_advantages"]

TIS_MODES = get_args(TisMode)


def log_ratios(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """d = mask * (old_logp - sampler_logp): (B, T) each -> (B, T), exactly 0 on padding (whatever padding holds)."""
    return torch.where(mask.bool(), old_logp - sampler_logp, torch.zeros((), dtype=old_logp.dtype,
                                                                         device=old_logp.device)).detach()


def importance_weights(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float,
                       mode: str = "sequence_truncate") -> tuple[Tensor, Tensor]:
    """The weights of `mode` (module docstring) and where the ratio exceeded the cap.

    Args:
        old_logp: (B, T) the scoring pass's log-probs of the sampled tokens; sampler_logp: (B, T) the engine's own.
        mask: (B, T) valid response tokens; cap: C > 0; mode: one of TIS_MODES.
    Returns:
        (w, over): (B,) each for the sequence modes, (B, T) each for the token modes. `over` is True where the ratio
        was above C (so w was truncated to C, or masked to 0); False on padding. w is detached, never inf or nan.
    """
    if mode not in TIS_MODES:
        raise ValueError(f"unknown importance-sampling mode {mode!r}; expected one of {list(TIS_MODES)}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    d = log_ratios(old_logp, sampler_logp, mask)
    log_w = d.sum(dim=1) if mode.startswith("sequence") else d  # (B,) or (B, T)
    log_cap = math.log(cap)
    over = log_w > log_cap
    if mode.startswith("token"):
        over = over & mask.bool()
    if mode.endswith("truncate"):
        w = torch.exp(log_w.clamp(max=log_cap))
    else:
        w = torch.where(over, torch.zeros_like(log_w), torch.exp(log_w.clamp(max=log_cap)))
    return w, over


def weight_advantages(advantages: Tensor, w: Tensor) -> Tensor:
    """Advantages with the importance weights applied: A (B,) or (B, T) times w (B,) or (B, T) -> (B,) when both are
    per sequence, else (B, T) (a (B,) factor is broadcast over its row's tokens)."""
    w = w.to(advantages.device, advantages.dtype)
    if advantages.dim() == w.dim():
        return advantages * w
    return advantages[:, None] * w if advantages.dim() == 1 else advantages * w[:, None]
