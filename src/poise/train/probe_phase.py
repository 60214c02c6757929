"""The value probe in the loop: `ProbePhase`, one object over a `TrainState` that the loop calls twice a step.

- `predict`: before the advantages, the probes' predictions for this step's rows (from the scoring pass's features,
  `scoring.py`), and which rows' baselines may use them yet. The probes were fitted on earlier steps only: this
  step's rows join their buffers afterwards, in `observe`.
- `observe`: after the updates, this step's rows join their probe's buffer and each probe with rows is refitted from
  its buffer's running moments (`poise.algo.probe_bank.ProbeBank`: one probe, or one per task with probe.split_by
  task). The target of a row is, for POISE (algorithm.advantage poise), mean_{j != i} r_j, the mean reward of its
  siblings, not its own; for the prompt probe (poise_prompt), its own reward: the prompt state is fixed before the
  response, so least squares fits V(x) either way. With several processes the rows are gathered in the one-process
  order first, so every rank fits the same probes. Its metrics also say how well the out-of-sample baseline of
  `predict` tracked this step's rewards, over the batch and, for a mixture, per task. (The prompt-only probe that
  screens prompts keeps its own buffer: `screened_stream.py`.)
"""

from __future__ import annotations

import torch

from poise.algo.advantages import group_view, leave_one_out_mean, mask_unscorable, poise_targets
from poise.train.metrics import probe_step_metrics


class ProbePhase:
    """`predict`, then `observe`, once each per step. The predictions of `predict` are kept for `observe`'s metrics.
    The probes are `state.probes` (replaced when a checkpoint is restored)."""

    def __init__(self, state):
        self.state = state
        self.predictions: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.tasks: list[str] = []

    def predict(self, features: dict | None, problems: list, step: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """-> ((B,) predictions of the probes as fitted after the previous step, NaN for rows whose probe is not fitted
        yet, or None without a probe or before any fit; (B,) bool, the rows whose baseline may use its probe at `step`:
        fitted, and past its warm-up (probe.warmup_steps since its key's first rows) or loaded). `problems`: the
        step's (P,) kept problems; their tasks route rows to probes."""
        state, G = self.state, self.state.cfg.rollout.group_size
        bank = state.probes
        self.tasks = [p.task for p in problems for _ in range(G)]  # (B,) each row's task
        self.predictions, self.index = None, bank.index(self.tasks)
        if features is None or not state.use_probe:
            return None, torch.zeros(len(self.index), dtype=torch.bool)
        if bank.any_fitted:
            self.predictions = bank.predict(features, self.index)
        return self.predictions, bank.ready(self.index, step, state.cfg.probe.warmup_steps)

    def observe(self, scored, rollouts, step: int, used_probe: float) -> dict:
        """Learn from this step (`scored`: the scoring pass, `scoring.Scored`; `rollouts`: the step's
        `sampling.Collected`, whose rewards give the targets) -> probe/buffer_rows (and dist/probe_in_sync with several
        processes), then, when `predict` made predictions, probe/* metrics of the out-of-sample baseline against this
        step's rewards (per task too, probe/<task>/*, for a mixture) and probe/used (`used_probe`: the fraction of
        rows whose advantages used a probe). {} without probe features."""
        metrics = self._learn(scored.features, rollouts.rewards, scored.n_prompts, step)
        if self.predictions is not None:  # out of sample: the probes had not seen this step when they predicted
            metrics.update({**self._baseline_metrics(rollouts.scores), "probe/used": used_probe})
        return metrics

    def baseline(self) -> torch.Tensor:
        """(B,) the baseline each row's advantage gets from the probes' predictions: mean_{j != i} g(z_j) for POISE,
        g(x_i) for the prompt probe (NaN where a probe was not fitted)."""
        if self.state.probes.kind == "prompt":
            return self.predictions
        return leave_one_out_mean(group_view(self.predictions, self.state.cfg.rollout.group_size)).flatten()

    def _baseline_metrics(self, scores: torch.Tensor) -> dict:
        """probe/mae, probe/pearson (and probe/auroc) of the baseline against the scores, over the rows whose probe
        was fitted; for a mixture, the same per task as probe/<task>/*."""
        state = self.state
        baseline, dist = self.baseline(), state.dist
        fitted = torch.isfinite(baseline)
        metrics = probe_step_metrics(baseline[fitted], scores[fitted], dist)
        for name in getattr(state.task, "parts", {}):  # a mixture: the same on each task's rows
            mine = fitted & torch.tensor([t == name for t in self.tasks], dtype=torch.bool)
            metrics.update(probe_step_metrics(baseline[mine], scores[mine], dist, prefix=f"probe/{name}/"))
        return metrics

    def _learn(self, features: dict | None, rewards: torch.Tensor, n_prompts: int, step: int) -> dict:
        """Add this step's rows (every rank's, in the one-process order) to their probes' buffers and refit each
        probe whose buffer holds `probe.min_fit_steps` steps. Rows whose target is unscorable are left out."""
        if features is None:
            return {}
        state = self.state
        cfg, dist, G = state.cfg, state.dist, state.cfg.rollout.group_size
        r, valid = mask_unscorable(rewards)
        if state.probes.kind == "prompt":  # the row's own reward: its prompt state precedes its response
            targets, has = r, valid
        else:  # the mean of the siblings' rewards
            targets, has = (x.flatten() for x in poise_targets(group_view(r, G), group_view(valid, G)))
        n_all = n_prompts * dist.world  # the step's kept prompts over all ranks (P without dynamic sampling)
        order = dist.global_order(n_all, min(cfg.optim.mini_batch_prompts, n_all), G)  # one-process order
        rows = {k: dist.gather_rows(v, order) for k, v in
                {**features, "targets": targets, "has": has, "index": self.index}.items()}
        keep = rows.pop("has")
        index = rows.pop("index")[keep]
        state.probes.add({k: v[keep] for k, v in rows.items()}, index, step, cfg.probe.min_fit_steps)
        metrics = {"probe/buffer_rows": state.probes.rows}
        if dist.world > 1:
            metrics["dist/probe_in_sync"] = int(dist.in_sync(state.probes.state_dict()["probe"]))
        return metrics
