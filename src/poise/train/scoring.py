"""The loop's scoring phase: one pass over this step's rollouts that gives everything the rest of the step reads.

`score(state, batch)` -> `Scored`: the old log-probs and entropies (B, T) of the sampled tokens, the probe features
(B, ·) from the probe layer's hidden states (POISE, or screen.mode probe), the critic's values (B, T) (PPO), and,
when it can, the first mini-batch's log-probs with their autograd graph, which the update uses as its own first
forward (`Scored.take_update_forward`). It counts the forward tokens it runs (policy and critic).

The policy's forward (`score_policy`) runs in eval mode whichever engine sampled (`poise.rollout.dropout`); the
forward passes themselves are `poise.rollout.hf_engine.score` and `score_with_graph`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from poise.algo.features import rollout_features
from poise.config.train_config import TrainConfig
from poise.parallel.distributed import Dist
from poise.rollout.dropout import active_dropout
from poise.rollout import hf_engine
from poise.rollout.hf_engine import RolloutBatch, minibatch_rows
from poise.rollout.logprobs import gradient_checkpointing
from poise.train.compute import n_tokens
from poise.train.microbatch import micro_parts, width
from poise.train.update import local_minibatch_prompts


@dataclass
class Scored:
    """One step's scoring pass over this rank's rows (B = n_prompts * G)."""

    batch: RolloutBatch  # the rollouts, with old_logp (B, T) and entropy (B, T) filled (probe-layer states freed)
    n_prompts: int  # this rank's prompts this step
    features: dict[str, Tensor] | None  # (B, ·) 'prompt', 'trajectory', 'entropy' on the CPU; None without a probe
    values: Tensor | None  # (B, T) the critic's values (PPO); None without a critic
    update_forward: Tensor | None  # (n, T) the first mini-batch's log-probs with their graph, or None

    @property
    def old_logp(self) -> Tensor:
        """(B, T) log pi_old of the sampled tokens (0 on padding)."""
        return self.batch.old_logp

    @property
    def entropy(self) -> Tensor:
        """(B, T) the policy's entropy at each response position (0 on padding)."""
        return self.batch.entropy

    def take_update_forward(self) -> Tensor | None:
        """The first mini-batch's log-probs with their graph, handed over once (the update uses them up)."""
        logp, self.update_forward = self.update_forward, None
        return logp


def score(state, batch: RolloutBatch) -> Scored:
    """The scoring pass over this rank's rows of the step (`state` is the run's `TrainState`): the policy's log-probs,
    entropies and probe-layer states (`score_policy`), then the critic's values and the probe features. Counts the
    policy's forward tokens (less those of the first mini-batch when the update reuses its forward) and the
    critic's."""
    cfg, dist = state.cfg, state.dist
    n_prompts = len(batch.prompt_ids) // cfg.rollout.group_size
    reused_rows, update_forward = score_policy(state.model, batch, n_prompts, cfg, dist, state.layer)
    reused = n_tokens(batch.rows(reused_rows)) if update_forward is not None else 0  # the update's own forward
    state.meter.add(forward_tokens_policy=n_tokens(batch) - reused)
    values = None
    if state.critic is not None:
        values = critic_values(state.critic, batch, n_prompts, cfg, dist)
        state.meter.add(forward_tokens_critic=n_tokens(batch, shared_prompts=False))
    features = probe_features(state, batch)
    return Scored(batch, n_prompts, features, values, update_forward)


def score_policy(model, batch: RolloutBatch, n_prompts: int, cfg: TrainConfig, dist: Dist, layer: int | None):
    """The policy's part of the scoring pass (old log-probs, entropies, the probe layer's hidden states, filled into
    `batch`) in eval mode -> (the first mini-batch's rows, their log-probs with the graph kept, or None).

    Without dropout (model.disable_dropout, the default) the first mini-batch's forward is the update's own, in train
    mode, which then computes the same function (its PPO ratio is exactly 1); the other rows get no-grad forwards of
    the same size, so scoring never holds more activations than the update. With dropout kept (`active_dropout`) every
    row is scored in eval mode without a graph, and the update makes its own forward for each mini-batch (None).
    The same (None) when optim.micro_batch_tokens splits the first mini-batch in several micro-batches: keeping the
    graphs of all of them would hold the whole mini-batch's activations. Scoring then runs micro-batches of that
    budget, and optim.logit_chunk_tokens computes its log-probs and entropies in chunks."""
    first_minibatch = minibatch_rows(n_prompts, local_minibatch_prompts(cfg, n_prompts, dist),
                                     cfg.rollout.group_size)[0]
    o, T = cfg.optim, cfg.rollout.temperature
    whole = len(micro_parts(len(first_minibatch), width(batch), o.micro_batch_tokens, cfg.rollout.group_size,
                            dist)) == 1
    budget = {"micro_batch_tokens": o.micro_batch_tokens, "chunk": o.logit_chunk_tokens}
    model.eval()
    if active_dropout(model) or not whole:
        hf_engine.score(model, batch, layer, T, micro_batch=len(first_minibatch), **budget)
        return first_minibatch, None
    hf_engine.score(model, batch, layer, T, micro_batch=len(first_minibatch), skip=first_minibatch, **budget)
    with gradient_checkpointing(model, cfg.model.gradient_checkpointing):
        return first_minibatch, hf_engine.score_with_graph(model, batch, first_minibatch, layer, T, o.logit_chunk_tokens)


def critic_values(critic, batch: RolloutBatch, n_prompts: int, cfg: TrainConfig, dist: Dist) -> Tensor:
    """The critic's (B, T) values of this rank's rows, a mini-batch (or with optim.micro_batch_tokens a micro-batch)
    at a time, without a graph (eval mode)."""
    minibatches = minibatch_rows(n_prompts, local_minibatch_prompts(cfg, n_prompts, dist), cfg.rollout.group_size)
    with torch.no_grad():
        critic.eval()
        return torch.cat([critic(batch.rows(rows[part])) for rows in minibatches for part in micro_parts(
            len(rows), width(batch), cfg.optim.micro_batch_tokens, 1, dist)])


def probe_features(state, batch: RolloutBatch) -> dict[str, Tensor] | None:
    """(B, ·) features 'prompt', 'trajectory', 'entropy' of this rank's rows on the CPU (where the probe and its
    buffer live); None unless the run uses them (POISE, or screen.mode probe). The probe-layer states are freed."""
    if not state.use_features:
        return None
    feats = rollout_features(batch.prompt_hidden, batch.prompt_mask, batch.response_hidden, batch.response_mask,
                             batch.response_ids, batch.entropy, state.marker, state.cfg.probe.k)
    batch.prompt_hidden = batch.response_hidden = None  # the features keep what the probe needs
    return {k: v.cpu() for k, v in feats.items()}
