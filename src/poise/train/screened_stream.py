"""Prompt screening in the loop (`screen.mode`; the rules are in `poise.algo.screening_rules`).

`ScreenedStream` wraps the run's shared `PromptStream`, so every rank draws, prefills and chooses the same prompts
(the choice generator is seeded alike on every rank, and the prompt probe is fitted from the same gathered buffer
rows), and the sampling phase is unchanged: it asks the stream for `prompts_per_step` prompts.

- probe: `take(n)` draws candidates * n prompts, prefills them once (`rollout.engine.prompt_states`: the probe
  layer's states, pooled as POISE pools the prompt), predicts each one's pass rate with the prompt-only probe as
  fitted after the previous step (`PromptProbe`; 1/2 before its first fit) and keeps n (`choose`). The prefill's
  tokens are counted as policy forward tokens. With `screen.reuse_prefill` and the built-in KV-cache sampler, the
  kept prompts' KV cache and last logits go to the sampler (`rollout.engine.Prefill`), whose next `sample` starts
  from them instead of prefilling those prompts again (and counts no prompt tokens for them: they were counted
  here). vLLM's engine cannot take them and prefills again.
- history: `take(n)` skips prompts whose last `patience` groups had equal rewards, except with probability
  `explore`; `observe` records each step's groups (over every rank), dynamic sampling's dropped groups included.

A step of dynamic sampling calls `take` once per round; what the rounds kept accumulates until `observe` closes the
step.
"""

from __future__ import annotations

import torch

from poise.algo.buffer import FeatureBuffer
from poise.algo.features import last_k_mean
from poise.algo.probe import PromptProbe
from poise.algo.screening_rules import choose, equal_reward_groups
from poise.algo.stats import auroc
from poise.data.tasks import encode_prompts
from poise.rollout.hf_engine import prompt_states


class ScreenedStream:
    """The shared prompt stream, screened. `attach` gives it the run's model, tokenizer, probe layer and compute
    meter (not the TrainState itself: no reference cycle keeps the run's verifier worker alive after it ends)."""

    def __init__(self, stream, cfg, seed: int):
        self.stream, self.cfg, self.screen = stream, cfg, cfg.screen
        self.generator = torch.Generator().manual_seed(seed + 7_000_001)  # CPU, the same on every rank
        self.probe = PromptProbe(cfg.probe.prompt_dim, cfg.probe.alpha)
        self.history: dict[str, int] = {}  # prompt uid -> consecutive groups with equal rewards
        self.metrics: dict[str, float] = {}  # the last take's screen/* metrics
        self.model = self.tokenizer = self.layer = self.meter = self.sampler = None
        self.kept: dict[str, float] = {}  # probe: the predicted pass rate of each prompt kept this step (all rounds)
        self.features: dict[str, torch.Tensor] = {}  # probe: the prompt features of each prompt sampled this step
        self.buffer = FeatureBuffer(cfg.probe.buffer_size, cfg.probe.buffer_steps) if self.screen.mode == "probe" \
            else None  # probe: (prompt features, mean reward) of every group sampled, dropped ones included

    def attach(self, model, tokenizer, layer: int, meter, sampler=None) -> None:
        self.model, self.tokenizer, self.layer, self.meter = model, tokenizer, layer, meter
        self.sampler = sampler if self.screen.reuse_prefill and hasattr(sampler, "prefill") else None

    # ---- drawing ----

    def take(self, n: int) -> list:
        return self._take_probe(n) if self.screen.mode == "probe" else self._take_history(n)

    def _take_probe(self, n: int) -> list:
        cands = self.stream.take(self.screen.candidates * n)
        if self.probe.fitted:
            feats, tokens, prefill = self._prompt_features(cands)
            p = self.probe.predict(feats)
        else:  # nothing fitted yet: a uniform choice
            p = torch.full((len(cands),), 0.5)
        keep = choose(p, n, self.screen.epsilon, self.generator, self.screen.power)
        kept = p[keep]
        chosen = [cands[i] for i in keep.tolist()]
        if self.probe.fitted:
            self.kept.update({c.uid: float(p[i]) for c, i in zip(chosen, keep.tolist())})
            feats = feats[keep]
        else:  # the buffer still needs the kept prompts' features: prefill those alone
            feats, tokens, prefill = self._prompt_features(chosen)
        self.features.update({c.uid: f for c, f in zip(chosen, feats)})
        self.meter.add(forward_tokens_policy=tokens)
        if self.sampler is not None:
            self.sampler.prefill = prefill
        self.metrics = {"screen/pred_mean": float(p.mean()), "screen/pred_kept_mean": float(kept.mean()),
                        "screen/kept_weight": float((kept * (1 - kept)).mean()),
                        "screen/candidate_weight": float((p * (1 - p)).mean()),
                        "screen/kept_fraction": n / len(cands), "screen/prefill_tokens": tokens,
                        "screen/probe_fitted": int(self.probe.fitted)}
        return chosen

    def _prompt_features(self, problems: list) -> tuple[torch.Tensor, int, object]:
        """(P, H) prompt features on the CPU, pooled as the probe's (last k prompt-token states), the prefill's
        prompt tokens, and the prefill itself for the sampler (None when it takes none)."""
        device = next(self.model.parameters()).device
        ids, mask = (x.to(device) for x in encode_prompts(self.tokenizer, problems, 1))
        self.model.eval()
        keep = [p.uid for p in problems] if self.sampler is not None else None
        hidden, prefill = prompt_states(self.model, ids, mask, self.layer, keep)
        return last_k_mean(hidden, mask, self.cfg.probe.k).cpu(), int(mask.sum()), prefill

    def _take_history(self, n: int) -> list:
        out, skipped, limit = [], 0, 64 * n  # the limit only guards a pool where every prompt is skippable
        while len(out) < n:
            (item,) = self.stream.take(1)
            due = self.history.get(item.uid, 0) >= self.screen.patience
            if due and skipped < limit and torch.rand((), generator=self.generator) >= self.screen.explore:
                skipped += 1
                continue
            out.append(item)
        self.metrics = {"screen/skipped": skipped, "screen/tracked": len(self.history)}
        return out

    # ---- after the step ----

    def observe(self, problems: list, scores: torch.Tensor, dist, step: int) -> dict:
        """After the step's rewards, over every group sampled in it (`problems` (P',), `scores` (P' * G,): dynamic
        sampling's dropped groups included): history counts each group's equal-reward streak (every rank's groups,
        gathered); probe scores its prediction (screen/auroc_varied: the AUROC of p(1 - p) for the groups whose
        rewards were unequal), adds each group's (prompt features, mean reward) to its buffer and refits. Returns the
        step's screen/* metrics."""
        group_size = self.cfg.rollout.group_size
        equal = equal_reward_groups(scores, group_size).tolist() if len(problems) else []
        pairs = [pair for part in dist.gather_objects([(p.uid, e) for p, e in zip(problems, equal)]) for pair in part]
        metrics = dict(self.metrics)
        if self.screen.mode == "history":
            for uid, e in pairs:
                self.history[uid] = self.history.get(uid, 0) + 1 if e else 0
        else:
            if self.kept and pairs:  # how well p(1 - p) told this step's groups with unequal rewards from the rest
                scored = [(uid, e) for uid, e in pairs if uid in self.kept]
                w = torch.tensor([self.kept[uid] * (1 - self.kept[uid]) for uid, _ in scored])
                metrics["screen/auroc_varied"] = auroc(w, ~torch.tensor([e for _, e in scored]))
            metrics.update(self._learn(problems, scores, group_size, dist, step))
        self.kept, self.features = {}, {}
        if dist.world > 1:  # every rank drew, and will draw, the same prompts: the same stream, generator and probe
            metrics["dist/screen_in_sync"] = int(dist.in_sync({
                "order": torch.tensor(self.stream.order, dtype=torch.long), "generator": self.generator.get_state(),
                **{f"probe.{k}": v for k, v in self.probe.state_dict().items()}}))
        return metrics

    def _learn(self, problems: list, scores: torch.Tensor, group_size: int, dist, step: int) -> dict:
        """The probe's buffer takes one row per sampled group with a scorable reward: (prompt features (H,), mean
        reward), every rank's rows in rank order; the probe is refitted from the buffer's moments once they span
        probe.min_fit_steps steps. The buffer rows' trajectory and entropy blocks are one zero column each
        (`FeatureBuffer` holds POISE's rows; `PromptProbe` reads the prompt block and the target only)."""
        means = scores.view(-1, group_size).nanmean(dim=1) if len(problems) else torch.zeros(0)
        local = [(self.features[p.uid], float(m)) for p, m in zip(problems, means.tolist())
                 if p.uid in self.features and m == m]  # m == m: not NaN (no scorable row in the group)
        rows = [r for part in dist.gather_objects(local) for r in part]
        if rows:
            x = torch.stack([f for f, _ in rows]).float()
            zero = torch.zeros(len(rows), 1)
            self.buffer.add(x, zero, zero, torch.tensor([m for _, m in rows]), step)
        if len(self.buffer) and self.buffer.num_steps >= self.cfg.probe.min_fit_steps:
            self.probe.fit_moments(self.buffer.moments())
        return {"screen/buffer_rows": len(self.buffer), "screen/buffer_added": len(rows)}

    # ---- checkpoint ----

    def state_dict(self) -> dict:
        sd = {"generator": self.generator.get_state(), "probe": self.probe.state_dict(),
              "probe_meta": self.probe.metadata(), "history": dict(self.history)}
        if self.buffer is not None:
            sd.update(buffer=self.buffer.state_dict(), buffer_meta=self.buffer.metadata())
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.generator.set_state(sd["generator"])
        self.probe = PromptProbe.from_state(sd["probe"], sd["probe_meta"])
        self.history = dict(sd["history"])
        if self.buffer is not None and sd.get("buffer_meta") is not None:
            self.buffer = FeatureBuffer.from_state(sd["buffer"], sd["buffer_meta"])
