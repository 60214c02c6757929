"""`train(cfg)`: the RL loop. POISE by default; GRPO, Dr. GRPO, DAPO, RLOO and PPO with a critic are presets in
`configs/` that change only the advantage estimator, group size, clip, aggregation, KL, dynamic sampling and
reward shaping. The algorithm is chosen in one place (`compute_advantages`).

Each step, in order:
  sample prompts -> generate G rollouts each -> rewards (DAPO: more rounds until enough groups have reward
  variance) -> score (one forward: old log-probs, entropies, hidden states of the probe layer, the first
  mini-batch's kept for the update's first step; the critic's values for PPO) -> baseline / advantages -> PPO
  update -> critic update -> probe update -> log -> budget check.
POISE (arXiv 2605.07579, ../shared/POISE.md): A_i = r_i - mean_{j != i} g(z_j) with g a ridge probe on rollout j's
internal-state features, fitted only on earlier steps; RLOO advantages for the first `probe.warmup_steps` steps.
Departures from the reference implementation are listed in the config docstrings (sizes, learning rate).
Compute accounting and budgets: `compute.py`. The PPO update with its numerical guard: `update.py`. Several processes:
`distributed.py`; per-step metrics over all ranks: `metrics.py`.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from poise.parallel import fsdp
from poise.algo.advantages import (group_view, grpo_advantages, leave_one_out_mean, mask_unscorable, poise_advantages,
                              poise_targets, rloo_advantages, value_advantages)
from poise.io.checkpoint import checkpoint_dir, resume, save_checkpoint
from poise.train.compute import ComputeMeter, budget_reached, progress_budget
from poise.io.config import TrainConfig, save_config, to_dict
from poise.train.critic import ValueModel, critic_update, explained_variance
from poise.algo.features import rollout_features
from poise.rollout.models import decoder_layers, load_model, resolve_layer, save_policy
from poise.train.preemption import Preempted, StopRequest
from poise.algo.probe import FeatureBuffer, RidgeProbe, load_probe, save_probe  # noqa: F401
from poise.rollout.engine import RolloutBatch, minibatch_rows, prompts_shared, score, score_with_graph
from poise.rollout.sampling import collect
from poise.io.configio import ConfigError
from poise.data.tasks import drop_long_prompts
from poise.data.tasks.dataset import build_task, check_reward_function
from poise.data.verifier import SafeVerifier
from poise.io.tracking import MetricsWriter
from poise.train.update import local_minibatch_prompts, policy_update
from poise.parallel.distributed import Dist, check_layout
from poise.train.metrics import (adam_variance_proxy, batch_metrics, mean_over_ranks, probe_step_metrics, sample_rows,
                           sampling_metrics)
from poise.io.validation import report_targets


class ShardedStream:
    """This rank's view of the shared PromptStream: `take(n)` draws the step's n prompts (every rank draws the same
    ones) and keeps this rank's whole groups, interleaved per mini-batch (distributed.py)."""

    def __init__(self, stream: "PromptStream", dist: Dist, mini_batch: int):
        self.stream, self.dist, self.mini_batch = stream, dist, mini_batch

    def take(self, n: int) -> list:
        items = self.stream.take(n)
        return [items[i] for i in self.dist.local_prompts(n, min(self.mini_batch, n))]


class PromptStream:
    """Endless prompts from a fixed pool, reshuffled on every pass with a seeded RNG."""

    def __init__(self, pool: list, seed: int):
        self.pool, self.rng, self.order = pool, random.Random(seed), []

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.pool)))
                self.rng.shuffle(self.order)
            out.append(self.pool[self.order.pop()])
        return out


def marker_token_id(tokenizer, marker: str) -> int | list[int] | None:
    """The end-of-reasoning marker's token id, or its ids (matched as a sequence) when it takes several tokens;
    None for an empty marker (features then use the last k tokens and the answer entropy is 0)."""
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
    return ids[0] if len(ids) == 1 else (list(ids) or None)


def n_tokens(batch: RolloutBatch, shared_prompts: bool = True) -> int:
    """Valid (non-padding) prompt + response tokens one forward or backward pass over `batch` processes. The policy's
    passes run each group's prompt once (`rollout.response_forward`), so with `shared_prompts` a prompt counts once
    per group; the critic's do not share them."""
    G = batch.group_size
    share = shared_prompts and prompts_shared(batch.prompt_ids, batch.prompt_mask, G)
    return int((batch.prompt_mask[::G] if share else batch.prompt_mask).sum() + batch.response_mask.sum())


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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        dist = Dist(cfg.device)  # rank, world size and this process's device
    except ValueError as e:
        raise ConfigError(str(e)) from None
    problem = check_layout(dist.world, cfg.rollout.prompts_per_step, cfg.optim.mini_batch_prompts)
    if problem:
        raise ConfigError(problem)
    try:
        fsdp.configure(cfg, dist)  # sets cfg.fsdp (recorded, so resume checks it) and dist.sharded
    except ValueError as e:
        raise ConfigError(str(e)) from None
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # identical on every rank: tiny presets are built from it
    out = Path(cfg.output_dir)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    # ---- task, model, data ----
    task = build_task(cfg.task, cfg.reward.function)  # data file and reward function checked before anything else
    model, tokenizer = load_model(cfg.model, cfg.task.name, cfg.seed)  # + LoRA adapters when model.lora_r > 0
    model.to(dist.device)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.loss.kl_coef > 0 else None
    critic = ValueModel(model) if cfg.algorithm.advantage == "critic" else None  # PPO: a policy-sized value model
    if dist.sharded:  # each of them in units of one decoder layer, before the optimizers see their parameters
        layer_type = type(decoder_layers(model)[0])
        for m in (model, ref_model, critic):
            if m is not None:
                fsdp.shard(m, layer_type, dist.device, dist.world)
    task.verifier = SafeVerifier(timeout=cfg.reward.timeout)  # answer checking in a sandboxed worker process
    pool, n_long = drop_long_prompts(task.problems("train", cfg.task.train_size, seed=cfg.seed), tokenizer,
                                     cfg.task.max_prompt_tokens)
    if n_long:
        print(f"task.max_prompt_tokens: dropped {n_long} of {n_long + len(pool)} training prompts longer than "
              f"{cfg.task.max_prompt_tokens} tokens (none truncated)")
    if not pool:
        raise ConfigError(f"task.max_prompt_tokens: every training prompt is longer than {cfg.task.max_prompt_tokens} "
                          "tokens; raise the limit")
    check_reward_function(task, pool)  # a user's reward function that raises or hangs fails now, not as all-0 rewards
    stream = PromptStream(pool, cfg.seed)  # the same on every rank; each keeps its share of every draw
    local_stream = stream if dist.world == 1 else ShardedStream(stream, dist, cfg.optim.mini_batch_prompts)
    G, P = cfg.rollout.group_size, cfg.rollout.prompts_per_step
    gen = torch.Generator(dist.device).manual_seed(cfg.seed + 1_000_003 * dist.rank)  # rank 0 samples as one process
    warm = max(1, cfg.optim.warmup_steps)

    def warmup(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = warmup(optimizer)

    # ---- POISE probe ----
    use_probe = cfg.algorithm.advantage == "poise"
    layer = resolve_layer(cfg.probe.layer, len(decoder_layers(model))) if use_probe else None
    marker_id = marker_token_id(tokenizer, cfg.probe.marker)
    feature_meta = {"layer": layer, "k": cfg.probe.k, "marker": cfg.probe.marker, "marker_id": marker_id}
    probe = load_probe(cfg.probe.load, feature_meta) if cfg.probe.load else RidgeProbe(
        cfg.probe.prompt_dim, cfg.probe.trajectory_dim, cfg.probe.alpha)
    buffer = FeatureBuffer(cfg.probe.buffer_size, cfg.probe.buffer_steps)

    # ---- PPO critic: its own optimizer ----
    critic_opt = critic_sched = None
    if critic is not None:
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic.lr, weight_decay=cfg.optim.weight_decay)
        critic_sched = warmup(critic_opt)

    # ---- resume: every stateful object above, restored from the newest complete checkpoint ----
    meter = ComputeMeter()
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "critic": critic,
             "critic_optimizer": critic_opt, "critic_scheduler": critic_sched, "probe": probe, "buffer": buffer,
             "stream": stream, "generator": gen, "meter": meter, "cfg": cfg,
             "counters": {"skipped_total": 0, "consecutive_skips": 0},  # numerical-guard counters
             "dist": dist}
    start = resume(cfg, parts)  # 0 for a fresh run
    probe, buffer, counters = parts["probe"], parts["buffer"], parts["counters"]
    targets = report_targets(cfg.report_to)
    writer = MetricsWriter(out, "tensorboard" in targets, keep_until=start,
                           wandb_config=to_dict(cfg) if "wandb" in targets else None) if dist.main else None
    progress = progress and dist.main
    budget = {k: v for k, v in to_dict(cfg.budget).items() if v}
    n_params = sum(p.numel() for p in model.parameters())
    if dist.main:
        print(f"train: {cfg.algorithm.name} ({cfg.algorithm.advantage} advantages) | model {cfg.model.name} "
              f"({n_params / 1e6:.2f} M, {dist.device}) | task {task.name} | {P} prompts x {G} rollouts | "
              f"{cfg.max_steps} steps"
              f"{f' | {dist.world} processes' if dist.world > 1 else ''}{' (FSDP)' if dist.sharded else ''}"
              f"{' | budget ' + str(budget) if budget else ''}"
              f"{f' | resumed after step {start}' if start else ''} -> {out}")

    metrics: dict = {}
    counted = progress_budget(budget)  # with a budget the bar counts towards it (a budget, not max_steps, ends runs)

    def progress_now(step: int) -> float:
        return min(counted[1], meter.totals_for_budget()[counted[0]]) if counted else step

    bar = tqdm(total=counted[1] if counted else cfg.max_steps, initial=progress_now(start), desc=cfg.algorithm.name,
               unit=f" {counted[0]}" if counted else "step", unit_scale=bool(counted), disable=not progress,
               mininterval=2)
    for step in range(start + 1, cfg.max_steps + 1):
        t_step = time.perf_counter()
        times: dict[str, float] = {}

        # ---- sample prompts, generate, reward (dynamic sampling: more rounds until P groups vary); score: old
        # log-probs, entropies, probe-layer hidden states. The first mini-batch's scoring forward is the update's own
        # (graph kept, ratio 1); the other rows get no-grad forwards of the same size (eval mode), so scoring never
        # holds more activations than the update. FSDP: the whole model is gathered once for all of this, and ranks
        # may sample different lengths ----
        t = time.perf_counter()
        with fsdp.gathered(model):
            col = collect(model, tokenizer, task, local_stream, cfg, gen, meter, dist)
            t_score = time.perf_counter()
            batch, rewards = col.batch, col.rewards  # B = P' * G rows, P' <= P
            n_local = len(batch.prompt_ids) // G if len(col.problems) else 0  # this rank's prompts this step
            if n_local:
                first = minibatch_rows(n_local, local_minibatch_prompts(cfg, n_local, dist), G)[0]
                score(model, batch, layer, cfg.rollout.temperature, micro_batch=len(first), skip=first)
                first_logp = score_with_graph(model, batch, first, layer, cfg.rollout.temperature)
        times["time/generate_s"] = t_score - t - col.reward_seconds
        times["time/reward_s"] = col.reward_seconds
        times["time/score_s"] = time.perf_counter() - t_score
        metrics = {"step": step, **sampling_metrics(cfg, col, dist)}
        if n_local == 0:  # dynamic sampling kept nothing: no update this step
            tqdm.write(f"step {step}: no group with reward variance in {col.rounds} rounds; skipping the update")
        else:
            # ---- the rest of scoring: the critic's values (PPO), the probe's features (POISE) ----
            t = time.perf_counter()
            meter.add(forward_tokens_policy=n_tokens(batch) - n_tokens(batch.rows(first)))
            values = None
            if critic is not None:
                with torch.no_grad():
                    critic.eval()
                    values = torch.cat([critic(batch.rows(rows)) for rows in  # (B, T), a mini-batch at a time
                                        minibatch_rows(n_local, local_minibatch_prompts(cfg, n_local, dist), G)])
                meter.add(forward_tokens_critic=n_tokens(batch, shared_prompts=False))
            feats = None
            if use_probe:
                feats = rollout_features(batch.prompt_hidden, batch.prompt_mask, batch.response_hidden,
                                         batch.response_mask, batch.response_ids, batch.entropy, marker_id,
                                         cfg.probe.k)
                feats = {k: v.cpu() for k, v in feats.items()}  # the probe and its buffer live on the CPU
                batch.prompt_hidden = batch.response_hidden = None  # features keep what the probe needs
            times["time/score_s"] += time.perf_counter() - t

            # ---- baseline / advantages (probe fitted on earlier steps only) ----
            t = time.perf_counter()
            predictions = probe.predict(feats["prompt"], feats["trajectory"], feats["entropy"]) \
                if use_probe and probe.fitted else None
            probe_ready = bool(cfg.probe.load) or step > cfg.probe.warmup_steps
            advantages, returns, used_probe = compute_advantages(cfg, rewards, predictions, probe_ready, values,
                                                                 batch.response_mask)
            times["time/advantages_s"] = time.perf_counter() - t

            # ---- policy update ----
            t = time.perf_counter()
            stats = policy_update(model, ref_model, optimizer, scheduler, batch, advantages, cfg, counters, dist,
                                  first_logp)
            metrics.update(mean_over_ranks(stats, dist, keep=("optim/skipped_steps",)))
            first_logp = None  # the graph is freed
            passes = cfg.optim.epochs * n_tokens(batch)
            meter.add(forward_tokens_policy=passes, backward_tokens_policy=passes,
                      forward_tokens_reference=passes if ref_model is not None else 0)
            times["time/update_s"] = time.perf_counter() - t

            # ---- critic update ----
            if critic is not None:
                t = time.perf_counter()
                outcome = cfg.critic.mode == "outcome"
                old = values[:, 0] if outcome else values
                metrics.update(mean_over_ranks(critic_update(
                    critic, critic_opt, critic_sched, batch, old, returns, outcome,
                    local_minibatch_prompts(cfg, n_local, dist) * G, cfg.optim.epochs, cfg.critic.value_clip,
                    cfg.optim.grad_clip, dist), dist))
                if dist.world > 1:  # explained variance over every rank's rows, not a mean of per-rank ones
                    m = torch.ones_like(returns, dtype=torch.bool) if outcome else batch.response_mask
                    v, r = (torch.cat(dist.gather_objects(x[m].cpu())) for x in (old, returns))
                    metrics["critic/explained_variance"] = explained_variance(v, r, torch.ones_like(v, dtype=torch.bool))
                    metrics["critic/value_mean"] = float(v.mean())
                critic_passes = cfg.optim.epochs * n_tokens(batch, shared_prompts=False)
                meter.add(forward_tokens_critic=critic_passes, backward_tokens_critic=critic_passes)
                times["time/critic_s"] = time.perf_counter() - t

            # ---- probe update: this step's rows join the buffer after its advantages are fixed ----
            t = time.perf_counter()
            if use_probe:
                targets, has = poise_targets(*mask_unscorable(group_view(rewards, G)))  # mean of siblings' rewards
                n_all = n_local * dist.world  # the step's kept prompts over all ranks (P without dynamic sampling)
                order = dist.global_order(n_all, min(cfg.optim.mini_batch_prompts, n_all), G)  # one-process order
                rows = {k: dist.gather_rows(v, order) for k, v in
                        {**feats, "targets": targets.flatten(), "has": has.flatten()}.items()}
                keep = rows["has"]  # rows whose siblings were all unscorable have no target
                buffer.add(rows["prompt"][keep], rows["trajectory"][keep], rows["entropy"][keep],
                           rows["targets"][keep], step)
                if buffer.num_steps >= cfg.probe.min_fit_steps:
                    probe.fit_moments(buffer.moments())  # the same rows on every rank: the same probe
                metrics["probe/buffer_rows"] = len(buffer)
                if dist.world > 1:
                    metrics["dist/probe_in_sync"] = int(dist.in_sync(probe.state_dict()))
            times["time/probe_s"] = time.perf_counter() - t
            if predictions is not None:  # out of sample: the probe has not seen this step yet
                baseline = leave_one_out_mean(group_view(predictions, G)).flatten()
                metrics.update(probe_step_metrics(baseline, col.scores, dist))
                metrics["probe/used"] = int(used_probe)
            metrics.update(batch_metrics(batch, advantages, dist))
            if writer is not None and cfg.log_samples_every and (step == 1 or step % cfg.log_samples_every == 0):
                writer.log_samples(step, sample_rows(tokenizer, col, advantages, cfg.log_samples))

        # ---- log, budget ----
        metrics["lr"] = scheduler.get_last_lr()[0]
        metrics["optim/skipped_total"] = counters["skipped_total"]
        metrics["optim/grad_var_proxy"] = adam_variance_proxy(optimizer, dist)  # sum(v_hat - m_hat^2), all ranks
        times["time/step_s"] = time.perf_counter() - t_step
        if dist.world > 1:  # the slowest rank's phase times; compute summed over ranks (identical totals everywhere)
            times = {k: dist.max(v) for k, v in times.items()}
            meter.step.update({k: dist.sum(v) for k, v in meter.step.items()})
        metrics.update(times)
        metrics.update(meter.end_step(times))
        if writer is not None:
            writer.log(metrics)
        if step == start + 1 and dist.main:  # the training state this rank holds (a half of it per rank under FSDP)
            held = fsdp.state_megabytes((model, ref_model, critic), (optimizer, critic_opt))
            tqdm.write(f"memory on rank 0 after step {step}: " + ", ".join(f"{k} {v:,.1f} MB" for k, v in held.items()))
        bar.update(progress_now(step) - bar.n)
        bar.set_postfix({**({"step": step} if counted else {}), "reward": f"{metrics['reward/mean']:.3f}",
                         **({"probe_r": f"{metrics['probe/pearson']:.2f}"} if "probe/pearson" in metrics else {})})
        reason = budget_reached(budget, meter.totals_for_budget())
        preempted = not reason and step < cfg.max_steps and stop.requested(dist)  # SIGTERM / SIGINT on any rank
        if reason or preempted or step == cfg.max_steps or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            parts["rng_states"] = dist.gather_objects((torch.get_rng_state(), gen.get_state()))  # one pair per rank
            parts["full"] = fsdp.checkpoint_states(parts) if dist.sharded else None  # gathered to rank 0
            if dist.main:
                save_checkpoint(out, step, parts, cfg.checkpoint.keep_last)
            parts["full"] = None
            dist.barrier()
        if preempted:
            bar.close()
            if writer is not None:
                writer.close()
            dist.close()
            raise Preempted(stop.signum, step, checkpoint_dir(out) / f"step-{step:06d}")
        if reason:
            bar.close()
            print(f"budget reached after step {step}: {reason}")
            break
    bar.close()

    # ---- save ----
    full = {k: fsdp.full_state(m) for k, m in (("model", model), ("critic", critic))  # FSDP: gathered to rank 0
            if m is not None and dist.sharded}
    if not dist.main:
        dist.close()
        return metrics
    writer.close()
    save_policy(model, out / "policy", fsdp.fill_tied(model, full["model"]) if full else None)  # LoRA: merged
    tokenizer.save_pretrained(out / "policy")
    if use_probe and probe.fitted:
        save_probe(probe, out / "policy", feature_meta)
    if critic is not None:
        (out / "critic").mkdir(exist_ok=True)
        state = full.get("critic") or {k: v.contiguous() for k, v in critic.state_dict().items()}
        save_file(state, str(out / "critic" / "critic.safetensors"))
    dist.close()
    return metrics

