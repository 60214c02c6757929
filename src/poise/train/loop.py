"""`train(cfg)`: the RL loop. POISE by default; GRPO, Dr. GRPO, DAPO, RLOO and PPO with a critic are presets in
`configs/` that change only the advantage estimator, group size, clip, aggregation, KL, dynamic sampling and
reward shaping. The algorithm is chosen in one place (`compute_advantages`).

Each step, in order:
  sample prompts -> generate G rollouts each -> rewards (DAPO: more rounds until enough groups have reward
  variance) -> score (one forward: old log-probs, entropies, hidden states of the probe layer, the first
  mini-batch's kept for the update's first step; the critic's values for PPO) -> baseline / advantages -> PPO
  update -> critic update -> probe update -> budget check -> held-out evaluation when due -> log -> checkpoint.
POISE (arXiv 2605.07579): A_i = r_i - mean_{j != i} g(z_j) with g a ridge probe on rollout j's
internal-state features, fitted only on earlier steps; RLOO advantages for the first `probe.warmup_steps` steps.
Departures from the reference implementation are listed in the config docstrings (sizes, learning rate).
The loop reads top to bottom as named phases over a `TrainState` (state.py: everything a step depends on, saved
and restored as one dictionary). Their modules: building the state `state.py`; the PPO update with its numerical
guard `update.py`; the critic `critic.py`; the probe `probe_phase.py`; logging `report.py`; checkpoints
`checkpointing.py`; compute accounting and budgets `compute.py`; per-step metrics over all ranks `metrics.py`;
the held-out evaluation (`--eval.every`, apart from the training's RNG streams, compute and budgets) `heldout.py`.
Distributed and FSDP details live behind the phases (poise.parallel).
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from poise.algo.advantages import (group_view, grpo_advantages, mask_unscorable, poise_advantages, rloo_advantages,
                                   value_advantages)
from poise.io.checkpoint import checkpoint_dir
from poise.io.config import TrainConfig
from poise.parallel import fsdp
from poise.rollout.sampling import collect
from poise.train import probe_phase
from poise.train.checkpointing import checkpoint_due, restore, save_outputs, write_checkpoint
from poise.train.compute import budget_reached, n_tokens
from poise.train.critic import critic_phase, critic_values
from poise.train.heldout import HeldOut
from poise.train.metrics import batch_metrics, mean_over_ranks, sampling_metrics
from poise.train.preemption import Preempted, StopRequest
from poise.train.report import RunLog
from poise.train.state import build_state, start_run
from poise.train.update import engine_correction, policy_update, score_for_update

# =====================================================================================================================
# Algorithm
# =====================================================================================================================


def compute_advantages(cfg: TrainConfig, rewards, predictions=None, probe_ready=False, values=None, mask=None):
    """Advantages from (B,) rewards -> (advantages, returns, used_probe).

    'poise': cross-rollout probe baseline once the probe is fitted and warm-up is over (or a probe was loaded),
    RLOO before; 'rloo': leave-one-out mean reward; 'grpo' / 'dr_grpo': group mean, with / without std division;
    'critic': r - V from the critic's (B, T) `values` (token level, or sequence level in critic.mode 'outcome').
    Advantages are (B,) except token-level critic advantages (B, T); `returns` are the critic's targets (else None).
    Unscorable rows (NaN reward) get advantage 0 and are left out of their siblings' baselines; the critic's target
    for them is its own value, so it is not pulled anywhere.
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
        return adv, returns, False
    R, V = group_view(rewards, G), group_view(valid, G)  # (P, G)
    V = None if bool(V.all()) else V
    if a in ("grpo", "dr_grpo"):
        return grpo_advantages(R, scale_by_std=a == "grpo", valid=V).flatten(), None, False
    if a == "poise" and predictions is not None and probe_ready:
        return poise_advantages(R, group_view(predictions, G), V).flatten(), None, True
    return rloo_advantages(R, V).flatten(), None, False


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
    log = RunLog(state, progress)
    log.write(0, heldout.maybe_evaluate(0) if state.step == 0 else {})  # the initial policy (resumed: logged before)
    G, metrics = cfg.rollout.group_size, {}
    for step in range(state.step + 1, cfg.max_steps + 1):
        log.begin_step()

        # ---- sample, reward (dynamic sampling: more rounds until P groups vary), score: old log-probs, entropies,
        # probe-layer hidden states. The first mini-batch's scoring forward is the update's own (graph kept, ratio 1).
        # FSDP: the whole model is gathered once for all of this, and ranks may sample different lengths ----
        t = time.perf_counter()
        with fsdp.gathered(state.model):
            state.sampler.load_policy(state.model)  # vLLM: this step's weights; the built-in sampler is the policy
            col = collect(state.sampler, state.task, state.prompts, cfg, state.generator, state.meter, dist)
            t_score = time.perf_counter()
            batch, rewards = col.batch, col.rewards  # B = P' * G rows, P' <= P
            n_local = len(batch.prompt_ids) // G if len(col.problems) else 0  # this rank's prompts this step
            if n_local:
                first, first_logp = score_for_update(state.model, batch, n_local, cfg, dist, state.layer)
        log.times.update({"time/generate_s": t_score - t - col.reward_seconds, "time/reward_s": col.reward_seconds,
                          "time/score_s": time.perf_counter() - t_score})
        metrics = {"step": step, **sampling_metrics(cfg, col, dist)}
        if state.screen is not None:  # screen/* metrics; history skipping records this step's groups
            metrics.update(state.screen.observe(col.problems, col.scores, G, dist))
        if n_local == 0:  # dynamic sampling kept nothing: no update this step
            tqdm.write(f"step {step}: no group with reward variance in {col.rounds} rounds; skipping the update")
        else:
            # ---- the rest of scoring: the critic's values (PPO), the probe's features (POISE) ----
            with log.timed("score"):
                shared = n_tokens(batch.rows(first)) if first_logp is not None else 0  # the update's own forward
                state.meter.add(forward_tokens_policy=n_tokens(batch) - shared)
                values = critic_values(state, batch, n_local) if state.critic is not None else None
                feats = probe_phase.features(state, batch)

            # ---- baseline / advantages (the probe was fitted on earlier steps only) ----
            with log.timed("advantages"):
                predictions = probe_phase.predict(state, feats)
                advantages, returns, used_probe = compute_advantages(
                    cfg, rewards, predictions, probe_phase.ready(state, step), values, batch.response_mask)
                advantages, corrected = engine_correction(batch, advantages, cfg, dist)  # vLLM: mismatch, TIS
                metrics.update(corrected)

            # ---- policy update (a vLLM engine on a GPU sleeps meanwhile) ----
            state.sampler.release()
            with log.timed("update"):
                stats = policy_update(state.model, state.ref_model, state.optimizer, state.scheduler, batch,
                                      advantages, cfg, state.counters, dist, first_logp)
                metrics.update(mean_over_ranks(stats, dist, keep=("optim/skipped_steps",)))
                first_logp = None  # the graph is freed
                passes = cfg.optim.epochs * n_tokens(batch)
                state.meter.add(forward_tokens_policy=passes, backward_tokens_policy=passes,
                                forward_tokens_reference=passes if state.ref_model is not None else 0)

            # ---- critic update (PPO) ----
            if state.critic is not None:
                with log.timed("critic"):
                    metrics.update(critic_phase(state, batch, values, returns, n_local))

            # ---- probe update: this step's rows join the buffer after its advantages are fixed ----
            with log.timed("probe"):
                metrics.update(probe_phase.update(state, feats, rewards, n_local, step))
            if predictions is not None:  # out of sample: the probe has not seen this step yet
                metrics.update(probe_phase.step_metrics(state, predictions, col.scores, used_probe))
            metrics.update(batch_metrics(batch, advantages, dist))
            log.samples(step, col, advantages)

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
            log.close()
            state.sampler.close()
            dist.close()
            raise Preempted(stop.signum, step, checkpoint_dir(cfg.output_dir) / f"step-{step:06d}")
        if reason:
            log.close()
            print(f"budget reached after step {step}: {reason}")
            break
    log.close()
    save_outputs(state)  # policy (+ probe) and critic; gathered under FSDP, so before the sampler closes:
    state.sampler.close()  # a multi-process vLLM engine's shutdown destroys the default process group
    dist.close()
    return metrics
