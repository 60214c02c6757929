"""`train(cfg)`: the RL loop. POISE by default; GRPO, Dr. GRPO, DAPO, RLOO and PPO with a critic are presets in
`configs/` that change only the advantage estimator, group size, clip, aggregation, KL, dynamic sampling and
reward shaping. The algorithm is chosen in one place (`compute_advantages`).

Each step, in order:
  sample prompts -> generate G rollouts each -> rewards (DAPO: more rounds until enough groups have reward
  variance) -> score (one pass: old log-probs, entropies, probe features; the critic's values for PPO) -> the
  probe's predictions -> baseline / advantages -> PPO update -> critic update -> the probe observes the step ->
  budget check -> held-out evaluation when due -> log -> checkpoint.
POISE (arXiv 2605.07579): A_i = r_i - mean_{j != i} g(z_j) with g a ridge probe on rollout j's
internal-state features, fitted only on earlier steps; RLOO advantages for the first `probe.warmup_steps` steps.
POISE from one rollout per prompt (poise_single): A_i = r_i - g(x_i) with g a probe on the prompt's state alone.
Departures from the reference implementation are listed in the config docstrings (sizes, learning rate).
The loop reads top to bottom as named phases over a `TrainState` (state.py: everything a step depends on, saved
and restored as one dictionary). Their modules: building the state `state.py`; the scoring pass `scoring.py`; the
vLLM correction `sampler_mismatch.py`; the PPO update with its numerical guard `update.py`; the critic `critic.py`;
the probe `probe_phase.py`; logging and phase times `report.py`; checkpoints `checkpointing.py`; compute accounting
and budgets `compute.py` (each phase counts its own compute); per-step metrics over all ranks `metrics.py`; the
held-out evaluation (`--eval.every`, apart from the training's RNG streams, compute and budgets) `heldout.py`.
Distributed and FSDP details live behind the phases (poise.parallel).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from tqdm import tqdm

from poise.algo.advantages import (batch_loo_advantages, group_view, grpo_advantages, mask_unscorable,
                                   poise_advantages, prompt_baseline_advantages, rloo_advantages, value_advantages)
from poise.config.train_config import TrainConfig
from poise.io.checkpoint import checkpoint_dir
from poise.parallel import fsdp
from poise.rollout.collect import collect
from poise.train.checkpointing import checkpoint_due, restore, save_outputs, write_checkpoint
from poise.train.compute import budget_reached
from poise.train.critic import critic_phase
from poise.train.heldout import HeldOut
from poise.train.metrics import batch_metrics, sampling_metrics
from poise.train.preemption import Preempted, StopRequest
from poise.train.probe_phase import ProbePhase
from poise.train.report import RunLog
from poise.train.sampler_mismatch import correct_for_sampler
from poise.train.scoring import score
from poise.train.state import TrainState, build_state, start_run
from poise.train.update import update_phase

# =====================================================================================================================
# Algorithm
# =====================================================================================================================


def compute_advantages(cfg: TrainConfig, rewards, predictions=None, probe_ready=False, values=None, mask=None,
                       dist=None):
    """Advantages from (B,) rewards -> (advantages, returns, used_probe).

    'poise': cross-rollout probe baseline for the groups whose probe is ready (fitted, past its warm-up or loaded:
    `probe_ready`, a bool or (B,) bools), RLOO for the others; 'poise_prompt': r - g(x) from the prompt probe's (B,)
    `predictions` where ready, the leave-one-out batch mean elsewhere; 'rloo': leave-one-out mean reward of the
    group; 'batch_loo': leave-one-out mean reward of the whole batch (every rank's rows: `dist`); 'grpo' /
    'dr_grpo': group mean, with / without std division; 'critic': r - V from the critic's (B, T) `values` (token
    level, or sequence level in critic.mode 'outcome'). Advantages are (B,) except token-level critic advantages
    (B, T); `returns` are the critic's targets (else None); `used_probe` is the fraction of rows whose baseline
    came from a probe. Unscorable rows (NaN reward) get advantage 0 and are left out of their siblings' baselines;
    the critic's target for them is its own value, so it is not pulled anywhere.
    """
    a, G = cfg.algorithm.advantage, cfg.rollout.group_size
    if values is not None:  # the critic's values live on the model's device; rewards come from the CPU
        rewards = rewards.to(values.device)
    rewards, valid = mask_unscorable(rewards)
    if a == "critic":
        adv, returns = value_advantages(rewards, values, mask, cfg.critic.mode)
        if not bool(valid.all()):
            keep = valid if adv.dim() == 1 else valid[:, None]
            own = values[:, 0] if adv.dim() == 1 else values
            adv = torch.where(keep, adv, torch.zeros_like(adv))
            returns = torch.where(keep, returns, own.detach().to(returns.dtype))
        return adv, returns, 0.0
    ready = torch.as_tensor(probe_ready, dtype=torch.bool).expand(len(rewards)) if predictions is not None \
        else torch.zeros(len(rewards), dtype=torch.bool)
    if a in ("batch_loo", "poise_prompt"):
        totals = None if dist is None or dist.world == 1 else (dist.sum(float(rewards[valid].double().sum())),
                                                                int(dist.sum(int(valid.sum()))))
        adv = batch_loo_advantages(rewards, valid, totals)
        if a == "poise_prompt" and bool(ready.any()):
            probe = prompt_baseline_advantages(rewards, predictions.nan_to_num(0.0), valid)
            adv = torch.where(ready, probe, adv)
        return adv, None, float(ready.float().mean()) if a == "poise_prompt" else 0.0
    R, V = group_view(rewards, G), group_view(valid, G)  # (P, G)
    V = None if bool(V.all()) else V
    if a in ("grpo", "dr_grpo"):
        return grpo_advantages(R, scale_by_std=a == "grpo", valid=V).flatten(), None, 0.0
    if a == "poise" and bool(ready.any()):
        adv = poise_advantages(R, group_view(predictions.nan_to_num(0.0), G), V).flatten()
        if not bool(ready.all()):  # groups whose probe is still warming up (probe.split_by task): RLOO
            adv = torch.where(ready, adv, rloo_advantages(R, V).flatten())
        return adv, None, float(ready.float().mean())
    return rloo_advantages(R, V).flatten(), None, 0.0


def sample(state: TrainState):
    """The step's rollouts, rewarded (`rollout.sampling.collect`: dynamic sampling, several processes), from the
    policy as it is now: a vLLM engine loads its weights first; the built-in sampler is the policy itself."""
    state.sampler.sync_weights(state.model)
    return collect(state.sampler, state.task, state.prompts, state.cfg, state.generator, state.meter, state.dist)


# =====================================================================================================================
# The loop
# =====================================================================================================================


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run RL training as configured; returns the final step's metrics. Writes everything to cfg.output_dir.

    Under `accelerate launch --num_processes N` every rank runs this loop on its share of each step's prompts
    (distributed.py); rank 0 writes the logs, checkpoints and the final policy. A SIGTERM or SIGINT ends the step in
    progress, writes a checkpoint and raises `poise.train.preemption.Preempted`; a second signal exits at once."""
    with StopRequest() as stop:
        return _train(cfg, progress, stop)


def _train(cfg: TrainConfig, progress: bool, stop: StopRequest) -> dict:
    dist = start_run(cfg)  # threads, processes, FSDP, seeds; output_dir/config.yaml
    state = build_state(cfg, dist)  # task, models, optimizers, probe, prompt stream, sampling generator
    heldout = HeldOut(state)  # eval.*: each task's held-out problems, fixed for the run (none with eval.every 0)
    restore(state)  # --resume: every part of the state from the newest complete checkpoint
    probe, metrics = ProbePhase(state), {}  # POISE: predicts each step's baselines, then observes its rewards
    with running(state, progress) as log:  # the teardown, however the run ends: log, sampler, processes
        log.write(0, heldout.maybe_evaluate(0) if state.step == 0 else {})  # the initial policy (resumed: before)
        for step in range(state.step + 1, cfg.max_steps + 1):
            log.begin_step()
            # ---- sample and reward (dynamic sampling: more rounds until P groups vary); score: one pass giving old
            # log-probs, entropies, probe features and the critic's values. FSDP: the policy gathered once for both
            with fsdp.gathered(state.model):
                with log.timed("generate") as nested:
                    rollouts = sample(state)
                    nested["reward"] = rollouts.reward_seconds  # answer checking, timed inside `collect`
                with log.timed("score"):
                    scored = score(state, rollouts.batch) if rollouts.problems else None  # None: nothing kept
            metrics = {"step": step, **sampling_metrics(cfg, rollouts, dist)}
            if state.screen is not None:  # screen/* metrics; screening learns from every group sampled
                metrics.update(state.screen.observe(rollouts.all_problems, rollouts.all_scores, dist, step))
            if scored is not None:
                # ---- baseline / advantages (the probe was fitted on earlier steps only); vLLM: mismatch, TIS ----
                with log.timed("advantages"):
                    advantages, returns, used_probe = compute_advantages(  # the probes' predictions and readiness
                        cfg, rollouts.rewards, *probe.predict(scored.features, rollouts.problems, step), scored.values,
                        scored.batch.response_mask, dist)
                    advantages, mismatch = correct_for_sampler(scored.batch, advantages, cfg, dist)
                    metrics.update(mismatch)
                # ---- updates: policy (a vLLM engine sleeps meanwhile), critic; the probe observes the step ----
                state.sampler.release()
                with log.timed("update"):
                    metrics.update(update_phase(state, scored, advantages))
                if state.critic is not None:
                    with log.timed("critic"):
                        metrics.update(critic_phase(state, scored, returns))
                with log.timed("probe"):
                    metrics.update(probe.observe(scored, rollouts, step, used_probe))
                metrics.update(batch_metrics(scored.batch, advantages, dist))
                log.samples(step, rollouts, advantages)
            else:
                tqdm.write(f"step {step}: no group with reward variance in {rollouts.rounds} rounds; skipping the "
                           "update")
            # ---- close the step; held-out evaluation when due (not in the step's time, compute or budget); log;
            # then checkpoint and stop on a budget or a signal ----
            state.step = step
            metrics = log.end_step(step, metrics)
            reason = budget_reached(log.budget, state.meter.totals_for_budget())
            metrics.update(heldout.maybe_evaluate(step, last=bool(reason) or step == cfg.max_steps))
            log.write(step, metrics)
            preempted = not reason and step < cfg.max_steps and stop.requested(dist)  # SIGTERM / SIGINT on any rank
            if checkpoint_due(cfg, step, bool(reason) or preempted):
                write_checkpoint(state)
            if preempted:
                raise Preempted(stop.signum, step, checkpoint_dir(cfg.output_dir) / f"step-{step:06d}")
            if reason:
                tqdm.write(f"budget reached after step {step}: {reason}")
                break
        save_outputs(state)  # policy (+ probe) and critic; gathered under FSDP, so before the sampler closes
    return metrics


@contextmanager
def running(state: TrainState, progress: bool):
    """The run's log (`RunLog`) for the block, and its one teardown, whatever ends the block: the log closes, then the
    sampler (a multi-process vLLM engine's shutdown destroys the default process group, so it closes after the
    outputs are saved), then the processes leave their group. That last one waits for every rank, so it runs only
    when all of them leave together: at the end of the run or on a preemption, which the ranks agree on. A rank that
    fails alone exits without waiting, and the launcher stops the others."""
    log, together = None, False
    try:
        log = RunLog(state, progress)
        yield log
        together = True
    except Preempted:
        together = True
        raise
    finally:
        if log is not None:
            log.close()
        state.sampler.close()
        if together:
            state.dist.close()
