"""Per-rollout probe features for POISE (§2): prompt state, trajectory state, token-entropy statistics.

Shape vocabulary: B sequences, L prompt length, T response tokens, N any sequence length, H hidden
size, V vocabulary. Prompts are LEFT-padded (mask False on the left), responses RIGHT-padded.
All reductions are vectorised; masked positions are excluded with torch.where / gather, so garbage in
padded positions never leaks into a feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["last_k_mean", "reasoning_end", "entropy_stats", "rollout_features", "token_entropy",
           "entropy_from_log_probs"]


def last_k_mean(hidden: Tensor, mask: Tensor, k: int) -> Tensor:
    """Mean of the hidden states at the last k valid positions of each row.

      S_b = the last min(k, n_b) positions n with mask[b, n] True (n_b = number of valid positions)
      out[b] = 1/|S_b| * sum_{n in S_b} hidden[b, n]          (0 if n_b = 0)

    Only the (at most k) selected positions are gathered, so cost is O(B k H) beyond the mask scan.

    Args:
        hidden: (B, N, H), any float dtype.
        mask: (B, N) bool (or {0,1}).
        k: number of positions, >= 1.
    Returns:
        (B, H) float32.
    Source: POISE §2 (k = 10).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    b, n, h = hidden.shape
    if n == 0:
        return hidden.new_zeros((b, h), dtype=torch.float32)
    m = mask.bool()
    kk = min(k, n)
    pos = torch.arange(n, device=hidden.device).expand(b, n)
    key = torch.where(m, pos, torch.full_like(pos, -1))
    top, _ = key.topk(kk, dim=1)  # (B, kk): the kk largest valid positions, -1 where fewer valid
    valid = top >= 0
    idx = top.clamp(min=0).unsqueeze(-1).expand(b, kk, h)
    gathered = hidden.gather(1, idx).float()  # (B, kk, H)
    gathered = torch.where(valid.unsqueeze(-1), gathered, torch.zeros((), device=hidden.device))
    count = valid.sum(dim=1, keepdim=True).clamp(min=1).float()
    return gathered.sum(dim=1) / count


def reasoning_end(
    response_ids: Tensor, response_mask: Tensor, marker_id: int | Sequence[int] | None
) -> tuple[Tensor, Tensor]:
    """Index where the reasoning part of each response ends.

    With the marker as the token sequence s_0 .. s_{n-1} (n = 1 for a single-token marker such as </think>):
      hit[b, t]     = ids[b, t - n + 1 + j] == s_j and that position is valid, for every j < n
      has_marker[b] = exists t with hit[b, t]
      end[b] = max{t : hit[b, t]}  if has_marker[b]   (the LAST token of the LAST marker)
             = max{t valid}        otherwise
             = -1                  if the row has no valid token

    Args:
        response_ids: (B, T) token ids.
        response_mask: (B, T) valid response tokens.
        marker_id: token id of the end-of-reasoning marker, its token ids when it is several, or None.
    Returns:
        end (B,) long, has_marker (B,) bool.
    Source: POISE §2 (trajectory state / entropy spans).
    """
    b, t = response_ids.shape
    m = response_mask.bool()
    if t == 0:
        return (torch.full((b,), -1, dtype=torch.long, device=response_ids.device),
                torch.zeros(b, dtype=torch.bool, device=response_ids.device))
    pos = torch.arange(t, device=response_ids.device).expand(b, t)
    neg = torch.full_like(pos, -1)
    last_valid = torch.where(m, pos, neg).amax(dim=1)
    if marker_id is None:
        return last_valid, torch.zeros(b, dtype=torch.bool, device=response_ids.device)
    seq = torch.as_tensor([marker_id] if isinstance(marker_id, int) else list(marker_id), device=response_ids.device)
    n = len(seq)
    is_marker = torch.zeros_like(m)
    if 0 < n <= t:  # windows (B, T - n + 1, n): a hit at window s marks its last token, s + n - 1
        hit = (response_ids.unfold(1, n, 1) == seq).all(dim=-1) & m.unfold(1, n, 1).all(dim=-1)
        is_marker[:, n - 1:] = hit
    last_marker = torch.where(is_marker, pos, neg).amax(dim=1)
    has_marker = last_marker >= 0
    return torch.where(has_marker, last_marker, last_valid), has_marker


def _masked_mean(x: Tensor, m: Tensor) -> Tensor:
    """sum_t m x / max(sum_t m, 1) along the last dim; (B, T) -> (B,), 0 for empty rows."""
    s = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=-1)
    return s / m.sum(dim=-1).clamp(min=1).to(x.dtype)


def entropy_stats(entropy: Tensor, response_mask: Tensor, end: Tensor, has_marker: Tensor) -> Tensor:
    """Three token-entropy means per response.

      col 0: mean of H_t over all valid response tokens
      col 1: mean over the reasoning part  {t valid : t <= end[b]}
      col 2: mean over the answer part     {t valid : t > end[b]}   (0 when has_marker[b] is False)
    Empty spans give 0, never nan.

    Args:
        entropy: (B, T) per-token entropies.
        response_mask: (B, T).
        end: (B,) long, from `reasoning_end`.
        has_marker: (B,) bool, from `reasoning_end`.
    Returns:
        (B, 3) float32.
    Source: POISE §2 (entropy statistics of the reference implementation).
    """
    e = entropy.float()
    m = response_mask.bool()
    pos = torch.arange(e.shape[1], device=e.device).unsqueeze(0)
    end_ = end.unsqueeze(1)
    reasoning = m & (pos <= end_)
    answer = m & (pos > end_) & has_marker.bool().unsqueeze(1)
    return torch.stack([_masked_mean(e, m), _masked_mean(e, reasoning), _masked_mean(e, answer)], dim=1)


def rollout_features(
    prompt_hidden: Tensor,
    prompt_mask: Tensor,
    response_hidden: Tensor,
    response_mask: Tensor,
    response_ids: Tensor,
    entropy: Tensor,
    marker_id: int | Sequence[int] | None,
    k: int = 10,
) -> dict[str, Tensor]:
    """All probe features of a batch of rollouts.

      "prompt"     = last_k_mean(prompt_hidden, prompt_mask, k)                      (B, H)
      "trajectory" = last_k_mean(response_hidden, response_mask & (t <= end), k)     (B, H)
                     i.e. the last k response tokens up to and including the last marker; without a
                     marker, the last k valid response tokens
      "entropy"    = entropy_stats(entropy, response_mask, end, has_marker)          (B, 3)

    Args:
        prompt_hidden: (B, L, H) hidden states of one layer at prompt positions (left-padded).
        prompt_mask: (B, L).
        response_hidden: (B, T, H) same layer at response positions (right-padded).
        response_mask: (B, T).
        response_ids: (B, T).
        entropy: (B, T) per-token entropies of the policy's next-token distribution.
        marker_id: end-of-reasoning token id (e.g. </think>), its ids when it is several tokens, or None.
        k: number of positions averaged.
    Returns:
        dict of float32 tensors as above.
    Source: POISE §2.
    """
    end, has_marker = reasoning_end(response_ids, response_mask, marker_id)
    pos = torch.arange(response_mask.shape[1], device=response_mask.device).unsqueeze(0)
    traj_mask = response_mask.bool() & (pos <= end.unsqueeze(1))
    return {
        "prompt": last_k_mean(prompt_hidden, prompt_mask, k),
        "trajectory": last_k_mean(response_hidden, traj_mask, k),
        "entropy": entropy_stats(entropy, response_mask, end, has_marker),
    }


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution over the last dim.

      log p = log_softmax(logits) = logits - logsumexp(logits)
      H = -sum_v p_v log p_v          (terms with p_v = 0 contribute 0, so -inf logits are allowed)

    Computed in float32 (or float64 if the input is float64).

    Args:
        logits: (..., V).
    Returns:
        (...).
    Source: POISE §2 (token entropy H_t).
    """
    x = logits if logits.dtype == torch.float64 else logits.float()
    return entropy_from_log_probs(torch.log_softmax(x, dim=-1))


def entropy_from_log_probs(logp: Tensor) -> Tensor:
    """Entropy from log-probabilities, for callers that already hold the log-softmax.

      H = -sum_v exp(logp_v) logp_v        (terms with p_v = 0 contribute 0)

    Args:
        logp: (..., V) log-probabilities (a log_softmax over the last dim).
    Returns:
        (...), in logp's dtype. `token_entropy(x)` is `entropy_from_log_probs(log_softmax(x))`.
    """
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return -plogp.sum(dim=-1)
