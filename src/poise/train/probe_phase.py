"""The loop's POISE probe phases, over a `TrainState`:

- `features`: after scoring, each rollout's probe features (prompt state, trajectory state, entropy means) from the
  hidden states of the probe layer; the hidden states are freed.
- `predict`: before the advantages, the probe's predictions g(z) for this step's rows. The probe was fitted on
  earlier steps only: this step's rows join its buffer afterwards, in `update`.
- `update`: after the policy update, this step's rows join the buffer with target mean_{j != i} r_j (the mean reward
  of each row's siblings, not its own), and the probe is refitted from the buffer's running moments (with
  screen.mode probe, so is the prompt-only probe that screens the next step's prompts). With several
  processes the rows are gathered in the one-process order first, so every rank fits the same probe.
- `step_metrics`: how well the out-of-sample baseline tracked this step's rewards.
"""

from __future__ import annotations

import torch

from poise.algo.advantages import group_view, leave_one_out_mean, mask_unscorable, poise_targets
from poise.algo.features import rollout_features
from poise.rollout.engine import RolloutBatch
from poise.train.metrics import probe_step_metrics


def features(state, batch: RolloutBatch) -> dict[str, torch.Tensor] | None:
    """(B, ·) features 'prompt', 'trajectory', 'entropy' of this rank's rows on the CPU (where the probe and its
    buffer live); None unless the run uses them (POISE, or screen.mode probe)."""
    if not state.use_features:
        return None
    feats = rollout_features(batch.prompt_hidden, batch.prompt_mask, batch.response_hidden, batch.response_mask,
                             batch.response_ids, batch.entropy, state.marker, state.cfg.probe.k)
    batch.prompt_hidden = batch.response_hidden = None  # the features keep what the probe needs
    return {k: v.cpu() for k, v in feats.items()}


def predict(state, feats: dict | None) -> torch.Tensor | None:
    """(B,) predictions of the probe as fitted after the previous step; None without POISE or before its first fit."""
    if feats is None or not state.use_probe or not state.probe.fitted:
        return None
    return state.probe.predict(feats["prompt"], feats["trajectory"], feats["entropy"])


def ready(state, step: int) -> bool:
    """Whether POISE advantages may use the probe at `step`: after `probe.warmup_steps`, or at once for a loaded
    probe."""
    return bool(state.cfg.probe.load) or step > state.cfg.probe.warmup_steps


def update(state, feats: dict | None, rewards: torch.Tensor, n_local: int, step: int) -> dict:
    """Add this step's rows (every rank's, in the one-process order) to the buffer and refit the probe once the
    buffer holds `probe.min_fit_steps` steps. Rows whose siblings were all unscorable have no target and are left
    out. Returns probe/buffer_rows (and dist/probe_in_sync with several processes); {} without POISE."""
    if feats is None:
        return {}
    cfg, dist, G = state.cfg, state.dist, state.cfg.rollout.group_size
    targets, has = poise_targets(*mask_unscorable(group_view(rewards, G)))  # mean of the siblings' rewards
    n_all = n_local * dist.world  # the step's kept prompts over all ranks (P without dynamic sampling)
    order = dist.global_order(n_all, min(cfg.optim.mini_batch_prompts, n_all), G)  # one-process order
    rows = {k: dist.gather_rows(v, order) for k, v in
            {**feats, "targets": targets.flatten(), "has": has.flatten()}.items()}
    keep = rows["has"]
    state.buffer.add(rows["prompt"][keep], rows["trajectory"][keep], rows["entropy"][keep], rows["targets"][keep],
                     step)
    if state.buffer.num_steps >= cfg.probe.min_fit_steps:
        moments = state.buffer.moments()
        if state.use_probe:
            state.probe.fit_moments(moments)  # the same rows on every rank: the same probe
        if cfg.screen.mode == "probe":
            state.screen.probe.fit_moments(moments)  # the prompt-only probe, for the next step's screening
    metrics = {"probe/buffer_rows": len(state.buffer)}
    if dist.world > 1:
        metrics["dist/probe_in_sync"] = int(dist.in_sync(state.probe.state_dict()))
    return metrics


def step_metrics(state, predictions: torch.Tensor, scores: torch.Tensor, used_probe: bool) -> dict:
    """probe/* metrics of the out-of-sample baseline mean_{j != i} g(z_j) against this step's rewards."""
    baseline = leave_one_out_mean(group_view(predictions, state.cfg.rollout.group_size)).flatten()
    return {**probe_step_metrics(baseline, scores, state.dist), "probe/used": int(used_probe)}
