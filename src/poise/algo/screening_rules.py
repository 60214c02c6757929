"""Choosing which prompts to generate for (`screen.mode`), as pure functions.

Probe screening: of m candidate prompts with predicted pass rates p (m,) from the prompt-only probe, keep n by
sampling without replacement with weights

    w_i = (4 p_i (1 - p_i))^power / 4 + epsilon        (power = 1: w_i = p_i (1 - p_i) + epsilon)

p (1 - p) is largest at p = 1/2, where a group of G rollouts is most likely to have unequal rewards
(P(unequal) = 1 - p^G - (1 - p)^G, also largest at 1/2), and a group with equal rewards gives a group baseline no
signal. power > 1 sharpens the preference (at power 4 a prompt predicted at p = 0.05 weighs 0.0003 + epsilon
against 1/4 + epsilon at p = 1/2) without moving the peak or the maximum 1/4. epsilon is the floor: since the first
term is at most 1/4 for any power, every candidate's chance to be the first one drawn is at least
epsilon / (m (1/4 + epsilon)), so no prompt is starved, however sure the probe is. Before the probe is fitted every
p is 1/2: a uniform choice.

History skipping (GRESO-style, arXiv 2506.02177): a prompt whose last `patience` groups all had equal rewards is
skipped, except with probability `explore`, when it is drawn; its count resets when a group of it has unequal
rewards.
"""

from __future__ import annotations

import torch
from torch import Tensor


def screening_weights(p: Tensor, epsilon: float, power: float = 1.0) -> Tensor:
    """(m,) float64 weights (4 p (1 - p))^power / 4 + epsilon of predicted pass rates p (m,) in [0, 1]; at power 1
    exactly p (1 - p) + epsilon."""
    p = p.detach().to(torch.float64).clamp(0.0, 1.0)
    u = p * (1.0 - p)
    return (u if power == 1 else (4.0 * u) ** power / 4.0) + epsilon


def choose(p: Tensor, n: int, epsilon: float, generator: torch.Generator, power: float = 1.0) -> Tensor:
    """Indices (n,) of the candidates kept, ascending (candidates keep their drawn order): n of the m = len(p)
    drawn without replacement with probabilities proportional to `screening_weights(p, epsilon, power)`. Needs
    epsilon > 0, power >= 1 and n <= m; the same `generator` state gives the same choice on every rank."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (the floor that keeps every candidate possible), got {epsilon}")
    if not power >= 1:
        raise ValueError(f"power must be >= 1 (below 1 flattens the preference for p = 1/2), got {power}")
    if not 0 < n <= len(p):
        raise ValueError(f"need 0 < n <= {len(p)} candidates, got n = {n}")
    w = screening_weights(p, epsilon, power)
    return torch.multinomial(w, n, replacement=False, generator=generator).sort().values


def equal_reward_groups(scores: Tensor, group_size: int) -> Tensor:
    """(P,) bool: whether each group of `group_size` consecutive rows of scores (P * G,) has all-equal rewards
    (unscorable NaN rows left out; a group with fewer than two scorable rows counts as equal)."""
    s = scores.detach().to(torch.float64).view(-1, group_size)
    ok = torch.isfinite(s)
    hi = torch.where(ok, s, torch.full_like(s, -torch.inf)).max(dim=1).values
    lo = torch.where(ok, s, torch.full_like(s, torch.inf)).min(dim=1).values
    return (ok.sum(dim=1) < 2) | (hi == lo)
