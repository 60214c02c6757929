"""The loop's log phase: the run's start line, each step's closing metrics (learning rate, the numerical guard's
counters, the gradient-variance proxy, phase times and compute totals over every rank), `metrics.jsonl` /
TensorBoard / wandb and sample logs on rank 0 (with the row of step 0 when the policy is evaluated before training),
the memory line after the first step, and the progress bar (counting towards the budget when one is set)."""

from __future__ import annotations

import time
from contextlib import contextmanager

from tqdm import tqdm

from poise.config.loading import to_dict
from poise.config.validation import report_targets
from poise.io.tracking import MetricsWriter
from poise.parallel import fsdp
from poise.train.compute import budget_limits, progress_budget
from poise.train.metrics import adam_variance_proxy, sample_rows


class RunLog:
    """Rank 0's outputs of a run (other ranks only join the collectives). `times` collects this step's phase times
    (`time/<phase>_s`, through `timed`). `close` once, at the end of the run (`poise.train.loop`'s teardown)."""

    def __init__(self, state, progress: bool):
        cfg, dist = state.cfg, state.dist
        self.state, self.start = state, state.step
        targets = report_targets(cfg.report_to)
        self.writer = MetricsWriter(cfg.output_dir, "tensorboard" in targets, keep_until=state.step,
                                    wandb_config=to_dict(cfg) if "wandb" in targets else None) if dist.main else None
        self.budget = budget_limits(cfg.budget)
        self.counted = progress_budget(self.budget)  # with a budget the bar counts towards it, not to max_steps
        self.times: dict[str, float] = {}
        if dist.main:
            n_params = sum(p.numel() for p in state.model.parameters())
            G, P = cfg.rollout.group_size, cfg.rollout.prompts_per_step
            print(f"train: {cfg.algorithm.name} ({cfg.algorithm.advantage} advantages) | model {cfg.model.name} "
                  f"({n_params / 1e6:.2f} M, {dist.device}) | task {state.task.name} | {P} prompts x {G} rollouts | "
                  f"{cfg.max_steps} steps"
                  f"{f' | {dist.world} processes' if dist.world > 1 else ''}{' (FSDP)' if dist.sharded else ''}"
                  f"{' | budget ' + str(self.budget) if self.budget else ''}"
                  f"{f' | resumed after step {state.step}' if state.step else ''} -> {cfg.output_dir}")
        self.bar = tqdm(total=self.counted[1] if self.counted else cfg.max_steps, initial=self._progress(state.step),
                        desc=cfg.algorithm.name, unit=f" {self.counted[0]}" if self.counted else "step",
                        unit_scale=bool(self.counted), disable=not (progress and dist.main), mininterval=2)

    def _progress(self, step: int) -> float:
        if not self.counted:
            return step
        return min(self.counted[1], self.state.meter.totals_for_budget()[self.counted[0]])

    def begin_step(self) -> None:
        self.t_step, self.times = time.perf_counter(), {}

    @contextmanager
    def timed(self, phase: str):
        """Adds the block's wall time to `time/<phase>_s`: the one clock of the step's phases. It yields a dict of
        nested phases, whose time a callee measured inside the block: `nested["reward"] = seconds` moves those
        seconds from `phase` to `time/reward_s`."""
        nested: dict[str, float] = {}
        t = time.perf_counter()
        yield nested
        elapsed = time.perf_counter() - t
        for name, seconds in {phase: elapsed - sum(nested.values()), **nested}.items():
            key = f"time/{name}_s"
            self.times[key] = self.times.get(key, 0.0) + seconds

    def samples(self, step: int, rollouts, advantages) -> None:
        cfg = self.state.cfg
        if self.writer is not None and cfg.log_samples_every and (step == 1 or step % cfg.log_samples_every == 0):
            self.writer.log_samples(step, sample_rows(self.state.tokenizer, rollouts, advantages, cfg.log_samples))

    def end_step(self, step: int, metrics: dict) -> dict:
        """Close the step's metrics (every rank: the collectives): learning rate, guard counters, phase times (the
        step's time ends here) and compute totals; returns them for `write`."""
        state, dist = self.state, self.state.dist
        metrics["lr"] = state.scheduler.get_last_lr()[0]
        metrics["optim/skipped_total"] = state.counters["skipped_total"]
        metrics["optim/grad_var_proxy"] = adam_variance_proxy(state.optimizer, dist)  # sum(v_hat - m_hat^2)
        times = {**self.times, "time/step_s": time.perf_counter() - self.t_step}
        if dist.world > 1:  # the slowest rank's phase times; compute summed over ranks (identical totals everywhere)
            times = {k: dist.max(v) for k, v in times.items()}
            state.meter.step.update({k: dist.sum(v) for k, v in state.meter.step.items()})
        metrics.update(times)
        metrics.update(state.meter.end_step(times))
        return metrics

    def write(self, step: int, metrics: dict) -> None:
        """Log a step's row on rank 0 (metrics.jsonl, TensorBoard, wandb) and move the bar. Step 0 is the row of the
        held-out evaluation before the first update (`heldout.py`), written only when there is one."""
        state, dist = self.state, self.state.dist
        if step == 0:
            if metrics and self.writer is not None:
                self.writer.log({"step": 0, **metrics})
            return
        if self.writer is not None:
            self.writer.log(metrics)
        if step == self.start + 1 and dist.main:  # the training state this rank holds (a half of it per rank: FSDP)
            held = fsdp.state_megabytes((state.model, state.ref_model, state.critic),
                                        (state.optimizer, state.critic_optimizer))
            tqdm.write(f"memory on rank 0 after step {step}: " + ", ".join(f"{k} {v:,.1f} MB" for k, v in held.items()))
        self.bar.update(self._progress(step) - self.bar.n)
        self.bar.set_postfix({**({"step": step} if self.counted else {}), "reward": f"{metrics['reward/mean']:.3f}",
                              **({"probe_r": f"{metrics['probe/pearson']:.2f}"} if "probe/pearson" in metrics else {})})

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
