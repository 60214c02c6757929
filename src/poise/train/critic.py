"""The PPO baseline's critic: a separate value model the size of the policy.

Architecture: a copy of the policy's decoder stack (`policy.base_model`: embeddings, all layers, final norm; the
LM head is dropped) with a scalar value head on the last hidden state, initialised from the policy's weights and
trained alongside it with its own AdamW and the clipped value loss (`losses.value_loss`). This is the
"policy-scale critic" POISE is measured against (POISE paper, PPO baseline).

values[b, t] = V(s_t) is read at the position that predicts response token t, so t = 0 is the last prompt token
(the prompt's value V(x)) — the same positions the policy's log-probs come from.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from poise.algo.losses import value_loss
from poise.parallel.fsdp import clip_grad_norm_
from poise.rollout.hf_engine import RolloutBatch, position_ids
from poise.rollout.logprobs import gradient_checkpointing
from poise.train.compute import n_tokens
from poise.train.metrics import mean_over_ranks
from poise.train.microbatch import micro_parts, width
from poise.train.update import local_minibatch_prompts


class ValueModel(nn.Module):
    """Policy-sized value model: `base_model` of a copy of the policy + Linear(H, 1) head (zero-initialised, so
    every value starts at 0 and the first advantages are the raw rewards)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.body = copy.deepcopy(policy.base_model)
        self.body.requires_grad_(True)
        self.head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head.to(next(self.body.parameters()).device)  # beside the body (float32: it reads float32 states)

    def forward(self, batch: RolloutBatch) -> Tensor:
        """(B, T) values at the positions that predict the response tokens."""
        ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
        L, T = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
        hidden = self.body(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids(mask),
                           use_cache=False).last_hidden_state
        return self.head(hidden[:, L - 1: L + T - 1].float()).squeeze(-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid positions (1: perfect, 0: no better than a constant, < 0: worse).

    Args: values, returns, mask: (B, T) (or (B,) each). Returns nan when the returns have no variance.
    """
    m = mask.bool()
    v, r = values.detach()[m].double(), returns.detach()[m].double()
    var_r = r.var(correction=0)
    if var_r == 0:
        return float("nan")
    return float(1.0 - (r - v).var(correction=0) / var_r)


def _value_loss(critic: ValueModel, mb: RolloutBatch, old: Tensor, ret: Tensor, outcome: bool, clip: float):
    """The clipped value loss of rows `mb` (old values and returns (n, T), or (n,) when `outcome`) -> (loss, the
    number of values it averages over)."""
    values = critic(mb)
    mask = mb.response_mask
    if outcome:
        values, mask = values[:, :1], torch.ones_like(mask[:, :1])
    loss = value_loss(values, old.reshape(values.shape), ret.reshape(values.shape), mask, clip or None)
    return loss, float(mask.sum())


def critic_update(critic: ValueModel, optimizer, scheduler, batch: RolloutBatch, old_values: Tensor,
                  returns: Tensor, outcome: bool, mini_batch_rows: int, epochs: int, clip: float,
                  grad_clip: float, dist=None, micro_batch_tokens: int = 0, checkpointing: bool = False) -> dict:
    """Clipped value-loss steps over mini-batches of rows; one optimizer step per mini-batch.

    `old_values`, `returns`: (B, T) token level, or (B,) sequence level when `outcome` (the value at t = 0 only).
    `dist` (`poise.parallel.distributed.Dist`, several processes): each rank's token-mean loss is weighted by its share
    of the mini-batch's tokens and gradients are averaged over ranks, which gives the single-process update.
    `micro_batch_tokens` > 0: each mini-batch's forward and backward run in micro-batches of rows of at most that many
    positions, each loss weighted by its share of the mini-batch's tokens (`poise.train.microbatch`), the same step.
    `checkpointing`: activation checkpointing of the critic's layers during the update (model.gradient_checkpointing).
    Returns mean `critic/value_loss`, `critic/grad_norm` and the explained variance of the old values (this rank's
    rows; the trainer recomputes it over all ranks).
    """
    B = batch.prompt_ids.shape[0]
    losses, norms = [], []
    critic.train()
    with gradient_checkpointing(critic.body, checkpointing):
        for _ in range(epochs):
            for s in range(0, B, mini_batch_rows):
                rows = torch.arange(s, min(s + mini_batch_rows, B))
                parts = micro_parts(len(rows), width(batch), micro_batch_tokens, 1, dist)
                n_local = len(rows) if outcome else float(batch.response_mask[rows].sum())  # what the loss averages
                weight = 1.0 if dist is None else dist.loss_weight(float(n_local))
                optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                for part in parts:
                    sub = rows if len(parts) == 1 else rows[part]
                    loss, n = _value_loss(critic, batch.rows(sub), old_values[sub], returns[sub], outcome, clip)
                    share = 1.0 if len(parts) == 1 else (n / n_local if n_local else 0.0)
                    (loss * (weight * share)).backward()  # x * 1.0 is exact: one process, one part is unchanged
                    loss_sum += loss.item() * share
                if dist is not None:
                    dist.average_grads(critic.parameters())
                clip_norm = grad_clip if grad_clip > 0 else float("inf")
                norms.append(clip_grad_norm_(critic.parameters(), clip_norm).item())
                optimizer.step()
                scheduler.step()
                losses.append(loss_sum)
    mask = torch.ones_like(returns, dtype=torch.bool) if outcome else batch.response_mask
    return {"critic/value_loss": sum(losses) / len(losses), "critic/grad_norm": sum(norms) / len(norms),
            "critic/explained_variance": explained_variance(old_values, returns, mask),
            "critic/value_mean": float(old_values[mask].mean())}


# ---------------------------------------------------------------------------------------------------------------------
# The loop's critic phase (PPO): the update after the policy's (the values come from the scoring pass, `scoring.py`)
# ---------------------------------------------------------------------------------------------------------------------


def critic_phase(state, scored, returns: Tensor) -> dict:
    """The critic's clipped value update on this step's rows (`critic_update`), from the values of the scoring pass
    (`scoring.Scored`) towards `returns`, and its metrics over every rank: explained variance is recomputed over all
    ranks' rows, not averaged. Counts the critic's forward and backward tokens."""
    cfg, dist, G, batch = state.cfg, state.dist, state.cfg.rollout.group_size, scored.batch
    outcome = cfg.critic.mode == "outcome"
    old = scored.values[:, 0] if outcome else scored.values
    metrics = mean_over_ranks(critic_update(
        state.critic, state.critic_optimizer, state.critic_scheduler, batch, old, returns, outcome,
        local_minibatch_prompts(cfg, scored.n_prompts, dist) * G, cfg.optim.epochs, cfg.critic.value_clip,
        cfg.optim.grad_clip, dist, cfg.optim.micro_batch_tokens, cfg.model.gradient_checkpointing), dist)
    if dist.world > 1:  # explained variance over every rank's rows, not a mean of per-rank ones
        m = torch.ones_like(returns, dtype=torch.bool) if outcome else batch.response_mask
        v, r = (torch.cat(dist.gather_objects(x[m].cpu())) for x in (old, returns))
        metrics["critic/explained_variance"] = explained_variance(v, r, torch.ones_like(v, dtype=torch.bool))
        metrics["critic/value_mean"] = float(v.mean())
    passes = cfg.optim.epochs * n_tokens(batch, shared_prompts=False)
    state.meter.add(forward_tokens_critic=passes, backward_tokens_critic=passes)
    return metrics
