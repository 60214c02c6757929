"""The POISE probe in the loop: `ProbePhase`, one object over a `TrainState` that the loop calls twice a step.

- `predict`: before the advantages, the probe's predictions g(z) for this step's rows (from the scoring pass's
  features, `scoring.py`), and whether the advantages may use them yet. The probe was fitted on earlier steps only:
  this step's rows join its buffer afterwards, in `observe`.
- `observe`: after the updates, this step's rows join the buffer with target mean_{j != i} r_j (the mean reward of
  each row's siblings, not its own), and the probe is refitted from the buffer's running moments (the prompt-only
  probe that screens prompts keeps its own buffer: `screened_stream.py`). With several processes the rows are
  gathered in the one-process order first, so every rank fits the same probe. Its metrics also say how well the
  out-of-sample baseline of `predict` tracked this step's rewards.
"""

from __future__ import annotations

import torch

from poise.algo.advantages import group_view, leave_one_out_mean, mask_unscorable, poise_targets
from poise.train.metrics import probe_step_metrics


class ProbePhase:
    """`predict`, then `observe`, once each per step. The predictions of `predict` are kept for `observe`'s metrics.
    The probe itself is `state.probe` (replaced when a checkpoint is restored), its rows `state.buffer`."""

    def __init__(self, state):
        self.state = state
        self.predictions: torch.Tensor | None = None

    def predict(self, features: dict | None, step: int) -> tuple[torch.Tensor | None, bool]:
        """-> ((B,) predictions of the probe as fitted after the previous step, or None without POISE or before its
        first fit; whether POISE advantages may use the probe at `step`: after `probe.warmup_steps`, or at once for a
        loaded probe)."""
        state = self.state
        self.predictions = None
        if features is not None and state.use_probe and state.probe.fitted:
            self.predictions = state.probe.predict(features["prompt"], features["trajectory"], features["entropy"])
        return self.predictions, bool(state.cfg.probe.load) or step > state.cfg.probe.warmup_steps

    def observe(self, scored, rollouts, step: int, used_probe: bool) -> dict:
        """Learn from this step (`scored`: the scoring pass, `scoring.Scored`; `rollouts`: the step's
        `sampling.Collected`, whose rewards give the targets) -> probe/buffer_rows (and dist/probe_in_sync with several
        processes), then, when `predict` made predictions, probe/* metrics of the out-of-sample baseline
        mean_{j != i} g(z_j) against this step's rewards and probe/used (`used_probe`: the advantages used it).
        {} without probe features."""
        metrics = self._learn(scored.features, rollouts.rewards, scored.n_prompts, step)
        if self.predictions is not None:  # out of sample: the probe had not seen this step when it predicted
            baseline = leave_one_out_mean(group_view(self.predictions, self.state.cfg.rollout.group_size)).flatten()
            metrics.update({**probe_step_metrics(baseline, rollouts.scores, self.state.dist),
                            "probe/used": int(used_probe)})
        return metrics

    def _learn(self, features: dict | None, rewards: torch.Tensor, n_prompts: int, step: int) -> dict:
        """Add this step's rows (every rank's, in the one-process order) to the buffer and refit the probe once the
        buffer holds `probe.min_fit_steps` steps. Rows whose siblings were all unscorable have no target and are left
        out."""
        if features is None:
            return {}
        state = self.state
        cfg, dist, G = state.cfg, state.dist, state.cfg.rollout.group_size
        targets, has = poise_targets(*mask_unscorable(group_view(rewards, G)))  # mean of the siblings' rewards
        n_all = n_prompts * dist.world  # the step's kept prompts over all ranks (P without dynamic sampling)
        order = dist.global_order(n_all, min(cfg.optim.mini_batch_prompts, n_all), G)  # one-process order
        rows = {k: dist.gather_rows(v, order) for k, v in
                {**features, "targets": targets.flatten(), "has": has.flatten()}.items()}
        keep = rows["has"]
        state.buffer.add(rows["prompt"][keep], rows["trajectory"][keep], rows["entropy"][keep], rows["targets"][keep],
                         step)
        if state.buffer.num_steps >= cfg.probe.min_fit_steps:
            moments = state.buffer.moments()
            state.probe.fit_moments(moments)  # the same rows on every rank: the same probe
        metrics = {"probe/buffer_rows": len(state.buffer)}
        if dist.world > 1:
            metrics["dist/probe_in_sync"] = int(dist.in_sync(state.probe.state_dict()))
        return metrics
