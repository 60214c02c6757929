"""Advantages for RLVR: RLOO, GRPO / Dr. GRPO, the POISE cross-rollout baseline, the prompt-state baseline of POISE
from one rollout per prompt, REINFORCE with a leave-one-out batch mean, and the critic's (PPO).

Shape vocabulary: B sequences, P prompts, G rollouts per prompt (B = P * G).
Rollouts of one prompt are contiguous in a flat batch: rows p*G .. p*G+G-1 belong to prompt p.
All functions are pure functions of tensors; none divides POISE/RLOO advantages by a standard deviation
(POISE spec §4: "Advantages are not divided by a standard deviation").
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "group_view",
    "mask_unscorable",
    "leave_one_out_mean",
    "rloo_advantages",
    "poise_advantages",
    "poise_targets",
    "prompt_baseline_advantages",
    "batch_loo_advantages",
    "grpo_advantages",
    "value_advantages",
]


def _check_group(x: Tensor, name: str, min_g: int = 1) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (P, G), got {tuple(x.shape)}")
    if x.shape[1] < min_g:
        raise ValueError(f"{name} needs group size G >= {min_g}, got G={x.shape[1]}")


def group_view(x: Tensor, group_size: int) -> Tensor:
    """Reshape a flat per-rollout tensor into groups.

    out[p, i] = x[p * G + i]   (rollouts of one prompt are contiguous).

    Args:
        x: (B,) per-rollout values.
        group_size: G >= 1.
    Returns:
        (P, G) view with P = B / G.
    Raises:
        ValueError if x is not 1-D, G < 1 or B % G != 0.
    """
    if x.dim() != 1:
        raise ValueError(f"group_view expects a 1-D tensor of shape (B,), got {tuple(x.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if x.shape[0] % group_size != 0:
        raise ValueError(
            f"batch size B={x.shape[0]} is not a multiple of group_size G={group_size}; "
            "rollouts of one prompt must be contiguous groups of G rows"
        )
    return x.view(-1, group_size)


def _off_diagonal(g: int, device, dtype) -> Tensor:
    return 1.0 - torch.eye(g, device=device, dtype=dtype)


def leave_one_out_mean(x: Tensor) -> Tensor:
    """Leave-one-out mean within each group.

    out[p, i] = 1/(G-1) * sum_{j != i} x[p, j]

    Computed as a masked (off-diagonal) mean, not as (sum - x_i)/(G-1), so no cancellation error.

    Args:
        x: (P, G) with G >= 2.
    Returns:
        (P, G).
    Raises:
        ValueError if G < 2.
    Source: RLOO (Kool et al. 2019; Ahmadian et al. 2024); POISE §4 (leave-one-out for G > 2).
    """
    _check_group(x, "x", min_g=2)
    g = x.shape[1]
    w = _off_diagonal(g, x.device, x.dtype)  # (G, G), w[i, j] = 1[j != i]
    return (x @ w.T) / (g - 1)


def mask_unscorable(rewards: Tensor) -> tuple[Tensor, Tensor]:
    """Split rewards into finite values and a validity mask.

    valid = isfinite(r);  r' = r where valid, 0 elsewhere (so no NaN/inf reaches any sum).

    Args:
        rewards: any shape; NaN/inf mark unscorable rows (a reward function's None, a NaN it returned).
    Returns:
        (r', valid) with rewards' shape; valid is bool.
    """
    valid = torch.isfinite(rewards)
    return torch.where(valid, rewards, torch.zeros_like(rewards)), valid


def _valid_sibling_mean(x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of x over each row's *valid* siblings: out[p, i] = sum_{j != i, valid j} x[p, j] / n[p, i],
    n[p, i] = #{j != i : valid j}; 0 where n = 0. Returns (mean, n), both (P, G)."""
    w = _off_diagonal(x.shape[1], x.device, x.dtype)
    v = valid.to(x.dtype)
    n = v @ w.T
    return torch.where(n > 0, ((x * v) @ w.T) / n.clamp(min=1), torch.zeros_like(x)), n


def rloo_advantages(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """REINFORCE leave-one-out advantages.

    A[p, i] = r[p, i] - 1/(G-1) * sum_{j != i} r[p, j] = 1/(G-1) * sum_{j != i} (r[p, i] - r[p, j])

    Computed from pairwise differences, so a constant group gives exactly 0. With G = 2: A_1 = r_1 - r_2.
    With `valid`, the mean runs over valid siblings only; an invalid row, or one with no valid sibling, gets 0.

    Args:
        rewards: (P, G) with G >= 2 (finite; see mask_unscorable).
        valid: optional (P, G) bool, False for unscorable rows.
    Returns:
        (P, G).
    Source: Ahmadian et al. 2024 (RLOO); POISE §3 warm-up.
    """
    _check_group(rewards, "rewards", min_g=2)
    g = rewards.shape[1]
    diff = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # (P, G, G): r_i - r_j, zero on the diagonal
    if valid is None:
        return diff.sum(dim=2) / (g - 1)
    v = valid.to(rewards.dtype)
    n = v.sum(dim=1, keepdim=True) - v  # valid siblings of each row
    adv = (diff * v.unsqueeze(1)).sum(dim=2) / n.clamp(min=1)
    return torch.where(valid & (n > 0), adv, torch.zeros_like(adv))


def poise_advantages(rewards: Tensor, predictions: Tensor, valid: Tensor | None = None) -> Tensor:
    """POISE cross-rollout advantages.

    A[p, i] = r[p, i] - 1/(G-1) * sum_{j != i} g(z[p, j])

    predictions[p, j] = g(z[p, j]) is the probe prediction from rollout j's own features; rollout i's
    baseline never uses its own prediction, which keeps the policy gradient unbiased (POISE §4).
    With G = 2: A_1 = r_1 - g(z_2), A_2 = r_2 - g(z_1). No std division.

    Args:
        rewards: (P, G), G >= 2.
        predictions: (P, G) probe predictions (same shape as rewards).
        valid: optional (P, G) bool; an unscorable row gets advantage 0. Its prediction (from its features, not
            its reward) still serves as its siblings' baseline.
    Returns:
        (P, G) in rewards' dtype.
    Source: POISE (arXiv 2605.07579) §4.
    """
    _check_group(rewards, "rewards", min_g=2)
    if predictions.shape != rewards.shape:
        raise ValueError(
            f"predictions shape {tuple(predictions.shape)} != rewards shape {tuple(rewards.shape)}"
        )
    baseline = leave_one_out_mean(predictions.to(rewards.dtype))
    adv = rewards - baseline
    return adv if valid is None else torch.where(valid, adv, torch.zeros_like(adv))


def poise_targets(rewards: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Probe training targets for POISE's crossed pairs.

    target[p, i] = 1/(G-1) * sum_{j != i} r[p, j]

    Row i's features z_i are paired with the other rollouts' rewards, so the regression target
    E[target_i | z_i] equals the prompt value V(x) (POISE §4). With G = 2: (z_1, r_2), (z_2, r_1).

    With `valid`, the mean runs over valid siblings; a row with none has no target.

    Args:
        rewards: (P, G), G >= 2.
        valid: optional (P, G) bool, False for unscorable rows.
    Returns:
        (targets, has_target): (P, G) each; rows with has_target False must not enter the probe's buffer.
    Source: POISE §4.
    """
    if valid is None:
        return leave_one_out_mean(rewards), torch.ones_like(rewards, dtype=torch.bool)
    _check_group(rewards, "rewards", min_g=2)
    targets, n = _valid_sibling_mean(rewards, valid)
    return targets, n > 0


def prompt_baseline_advantages(rewards: Tensor, baseline: Tensor, valid: Tensor | None = None) -> Tensor:
    """Advantages against a baseline computed from the prompt alone (POISE from one rollout per prompt).

    A[b] = r[b] - g(x_b)

    g(x_b) is a prompt-state probe's prediction, fitted on earlier steps only: it is a function of the prompt, known
    before the response is sampled, so E[(r - g(x)) grad log pi(y|x)] = grad J (the baseline term has expectation
    g(x) E[grad log pi(y|x)] = 0). Any G works, G = 1 included. No std division.

    Args:
        rewards: (B,) finite rewards (see mask_unscorable).
        baseline: (B,) g(x_b).
        valid: optional (B,) bool; an unscorable row gets 0.
    Returns:
        (B,) in rewards' dtype.
    """
    if rewards.dim() != 1 or baseline.shape != rewards.shape:
        raise ValueError(f"expected rewards and baseline of shape (B,), got {tuple(rewards.shape)} and "
                         f"{tuple(baseline.shape)}")
    adv = rewards - baseline.to(rewards.dtype)
    return adv if valid is None else torch.where(valid, adv, torch.zeros_like(adv))


def batch_loo_advantages(rewards: Tensor, valid: Tensor | None = None,
                         totals: tuple[float, int] | None = None) -> Tensor:
    """REINFORCE with a leave-one-out batch-mean baseline: every other row of the step's batch is a sibling.

    A[b] = r[b] - 1/(n-1) * sum_{c != b, valid c} r[c],   n = #valid rows of the batch

    The other rows' responses are sampled independently of row b's (other prompts, or the same prompt's other
    draws), so the baseline is independent of y_b given x_b and the gradient stays unbiased for any G, G = 1
    included. Computed in float64 as (S - r[b]) / (n - 1) with S the valid rows' sum. A batch of one valid row, and
    an invalid row, get 0.

    Args:
        rewards: (B,) finite rewards (see mask_unscorable).
        valid: optional (B,) bool, False for unscorable rows.
        totals: optional (S, n) over the whole batch when it is split over several processes (every rank's valid
            rows); default: this batch's own.
    Returns:
        (B,) in rewards' dtype.
    Source: Kool et al. 2019 (REINFORCE with a leave-one-out baseline), applied across the batch.
    """
    if rewards.dim() != 1:
        raise ValueError(f"expected rewards of shape (B,), got {tuple(rewards.shape)}")
    r = rewards.to(torch.float64)
    v = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    total, n = totals if totals is not None else (float(r[v].sum()), int(v.sum()))
    if n < 2:
        return torch.zeros_like(rewards)
    adv = (r - (total - r) / (n - 1)).to(rewards.dtype)
    return torch.where(v, adv, torch.zeros_like(adv))


def grpo_advantages(rewards: Tensor, scale_by_std: bool = True, eps: float = 1e-6,
                    valid: Tensor | None = None) -> Tensor:
    """GRPO group-normalised advantages.

    A[p, i] = (r[p, i] - mean_j r[p, j]) / (std_j r[p, j] + eps)   if scale_by_std
    A[p, i] =  r[p, i] - mean_j r[p, j]                           otherwise (Dr. GRPO)

    std is the *unbiased* sample std (correction = 1), following TRL's GRPOTrainer
    (`rewards.view(-1, G).std(dim=1)`). A group whose rewards are all equal gets exactly 0
    (forced, so float rounding of the mean cannot leak a tiny non-zero signal). With G = 1 the std is
    undefined; the advantage is 0.

    Args:
        rewards: (P, G).
        scale_by_std: divide by the group std (GRPO) or not (Dr. GRPO, Liu et al. 2025).
        eps: added to the std.
        valid: optional (P, G) bool; the mean and std run over valid rows, invalid rows get 0.
    Returns:
        (P, G).
    Source: Shao et al. 2024 (DeepSeekMath, GRPO); TRL GRPOTrainer.
    """
    _check_group(rewards, "rewards", min_g=1)
    if valid is not None:
        return _masked_grpo(rewards, valid, scale_by_std, eps)
    mean = rewards.mean(dim=1, keepdim=True)
    centered = rewards - mean
    constant = (rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True))
    centered = torch.where(constant, torch.zeros_like(centered), centered)
    if not scale_by_std or rewards.shape[1] < 2:
        return centered
    std = rewards.std(dim=1, keepdim=True, correction=1)
    return centered / (std + eps)


def _masked_grpo(rewards: Tensor, valid: Tensor, scale_by_std: bool, eps: float) -> Tensor:
    """grpo_advantages over the valid rows of each group (same formulas with sums restricted to valid j)."""
    v = valid.to(rewards.dtype)
    n = v.sum(dim=1, keepdim=True)
    mean = (rewards * v).sum(dim=1, keepdim=True) / n.clamp(min=1)
    big = torch.finfo(rewards.dtype).max
    hi = torch.where(valid, rewards, torch.full_like(rewards, -big)).amax(dim=1, keepdim=True)
    lo = torch.where(valid, rewards, torch.full_like(rewards, big)).amin(dim=1, keepdim=True)
    centered = torch.where(valid & (hi != lo), rewards - mean, torch.zeros_like(rewards))
    if not scale_by_std:
        return centered
    var = (((rewards - mean) ** 2) * v).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
    return centered / (var.sqrt() + eps)


def value_advantages(rewards: Tensor, values: Tensor, mask: Tensor, mode: str = "gae") -> tuple[Tensor, Tensor]:
    """Advantages and value targets from a learned critic, for an outcome reward paid at the last token.

    values[b, t] = V(s_t), the critic's value of the state *before* response token t (t = 0 is the prompt x).
    The only reward is r_b at the end, so with gamma = lambda = 1 every return is r_b and GAE telescopes:
      "gae":     A[b, t] = sum_{l >= t} delta_l = r_b - V(s_t)   (delta_t = V(s_{t+1}) - V(s_t), last: r_b - V(s_t))
                 returns[b, t] = r_b                              -> (B, T), 0 on padding
      "outcome": A[b] = r_b - V(x_b) = r_b - values[b, 0]          -> (B,)
                 returns[b] = r_b                                 -> (B,)

    Advantages are not whitened (none of the group methods here are either).

    Args:
        rewards: (B,) outcome rewards.
        values: (B, T) critic values (treated as constants).
        mask: (B, T) valid response tokens.
        mode: "gae" (token-level GAE, gamma = lambda = 1) or "outcome" (sequence level).
    Returns:
        (advantages, returns): (B, T) each for "gae", (B,) each for "outcome".
    Source: Schulman et al. 2016 (GAE); Ouyang et al. 2022 / verl PPO with a policy-sized critic.
    """
    if rewards.dim() != 1 or values.shape != mask.shape or values.shape[0] != rewards.shape[0]:
        raise ValueError(f"expected rewards (B,), values and mask (B, T); got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}")
    v = values.detach().to(rewards.dtype)
    if mode == "outcome":
        return rewards - v[:, 0], rewards.clone()
    if mode != "gae":
        raise ValueError(f"unknown critic mode {mode!r}; expected 'gae' or 'outcome'")
    m = mask.bool()
    returns = torch.where(m, rewards[:, None].expand_as(v), torch.zeros_like(v))
    return torch.where(m, returns - v, torch.zeros_like(v)), returns
