"""`train(cfg)`: the RL loop. POISE by default; the algorithm is chosen in one place (`compute_advantages`).

Each step, in order:
  sample prompts -> generate G rollouts each -> score (one no-grad forward: old log-probs, entropies, hidden states
  of the probe layer) -> rewards -> baseline / advantages -> PPO update -> probe update -> log.
POISE (arXiv 2605.07579, ../shared/POISE.md): A_i = r_i - mean_{j != i} g(z_j) with g a ridge probe on rollout j's
internal-state features, fitted only on earlier steps; RLOO advantages for the first `probe.warmup_steps` steps.
Departures from the reference implementation are listed in the config docstrings (sizes, learning rate).
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from poise.advantages import group_view, leave_one_out_mean, poise_advantages, poise_targets, rloo_advantages
from poise.config import TrainConfig, save_config
from poise.features import rollout_features
from poise.losses import aggregate, kl_k3, ppo_clip_loss
from poise.models import decoder_layers, load_policy, resolve_layer
from poise.probe import FeatureBuffer, RidgeProbe, probe_metrics
from poise.rollout import RolloutBatch, encode_prompts, generate, response_logits, score, token_logprobs
from poise.tasks import get_task
from poise.tracking import MetricsWriter


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


def marker_token_id(tokenizer, marker: str) -> int | None:
    """Token id of the end-of-reasoning marker if it is a single token, else None (features fall back to last k)."""
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


# =====================================================================================================================
# Algorithm
# =====================================================================================================================


def compute_advantages(cfg: TrainConfig, rewards, predictions, probe_ready: bool):
    """(B,) advantages from (B,) rewards; `predictions` (B,) are the probe's g(z_i) or None.

    'poise' uses the cross-rollout probe baseline once the probe is fitted and warm-up is over (or a probe was
    loaded), RLOO before; 'rloo' always uses the leave-one-out mean reward.
    """
    G = cfg.rollout.group_size
    R = group_view(rewards, G)  # (P, G)
    if cfg.algorithm.advantage == "poise" and predictions is not None and probe_ready:
        return poise_advantages(R, group_view(predictions, G)).flatten(), True
    return rloo_advantages(R).flatten(), False


def policy_update(model, ref_model, optimizer, scheduler, batch: RolloutBatch, advantages, cfg: TrainConfig) -> dict:
    """PPO clipped update over mini-batches of whole groups; one optimizer step per mini-batch."""
    G, lo = batch.group_size, cfg.loss
    P = batch.prompt_ids.shape[0] // G
    mb_prompts = min(cfg.optim.mini_batch_prompts, P)
    stats: dict[str, list[float]] = {"loss/policy": [], "clip_ratio": [], "kl/approx": [], "grad_norm": []}
    if lo.kl_coef > 0:
        stats["kl/ref"] = []
    model.train()
    for _ in range(cfg.optim.epochs):
        for s in range(0, P, mb_prompts):
            prompts = torch.arange(s, min(s + mb_prompts, P))
            rows = (prompts[:, None] * G + torch.arange(G)).flatten()
            mb = batch.rows(rows)
            logp = token_logprobs(response_logits(model, mb, cfg.rollout.temperature), mb.response_ids)
            loss, st = ppo_clip_loss(logp, mb.old_logp, advantages[rows], mb.response_mask, lo.clip_low,
                                     lo.clip_high, lo.dual_clip or None, lo.aggregation,
                                     cfg.rollout.max_new_tokens)
            if ref_model is not None:
                with torch.no_grad():
                    ref_logp = token_logprobs(response_logits(ref_model, mb, cfg.rollout.temperature),
                                              mb.response_ids)
                kl = aggregate(kl_k3(logp, ref_logp), mb.response_mask, lo.aggregation, cfg.rollout.max_new_tokens)
                loss = loss + lo.kl_coef * kl
                stats["kl/ref"].append(kl.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
            stats["loss/policy"].append(loss.item())
            stats["clip_ratio"].append(float(st["clip_ratio"]))
            stats["kl/approx"].append(float(st["approx_kl"]))
            stats["grad_norm"].append(gnorm.item())
    return {k: sum(v) / len(v) for k, v in stats.items()}


# =====================================================================================================================
# Probe persistence
# =====================================================================================================================


def save_probe(probe: RidgeProbe, directory: Path, feature_meta: dict) -> None:
    """probe.safetensors (tensors) + probe.json (dimensions, alpha, and how features were taken)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, str(directory / "probe.safetensors"))
    (directory / "probe.json").write_text(json.dumps({**probe.metadata(), "features": feature_meta}, indent=2))


def load_probe(directory: str | Path, feature_meta: dict | None = None) -> RidgeProbe:
    """A saved probe; with `feature_meta`, fails unless it was fitted on features taken the same way."""
    directory = Path(directory)
    for name in ("probe.safetensors", "probe.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"probe.load: {directory / name} does not exist")
    meta = json.loads((directory / "probe.json").read_text())
    saved = meta.get("features", {})
    if feature_meta is not None:
        bad = {k: (saved.get(k), v) for k, v in feature_meta.items() if saved.get(k) != v}
        if bad:
            raise ValueError(f"probe.load: {directory} was fitted on other features (saved, now): {bad}")
    return RidgeProbe.from_state(load_file(str(directory / "probe.safetensors")), meta)


# =====================================================================================================================
# The loop
# =====================================================================================================================


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run RL training as configured; returns the final step's metrics. Writes everything to cfg.output_dir."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    # ---- model, task, data ----
    model, tokenizer = load_policy(cfg.model.name, cfg.task.name, cfg.seed, cfg.model.dtype)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.loss.kl_coef > 0 else None
    task_kwargs = {"levels": cfg.task.levels} if cfg.task.levels else {}
    task = get_task(cfg.task.name, test_fraction=cfg.task.test_fraction, **task_kwargs)
    stream = PromptStream(task.problems("train", cfg.task.train_size, seed=cfg.seed), cfg.seed)
    G, P = cfg.rollout.group_size, cfg.rollout.prompts_per_step
    gen = torch.Generator().manual_seed(cfg.seed)

    # ---- POISE probe ----
    use_probe = cfg.algorithm.advantage == "poise"
    layer = resolve_layer(cfg.probe.layer, len(decoder_layers(model))) if use_probe else None
    marker_id = marker_token_id(tokenizer, cfg.probe.marker)
    feature_meta = {"layer": layer, "k": cfg.probe.k, "marker": cfg.probe.marker, "marker_id": marker_id}
    probe = load_probe(cfg.probe.load, feature_meta) if cfg.probe.load else RidgeProbe(
        cfg.probe.prompt_dim, cfg.probe.trajectory_dim, cfg.probe.alpha)
    buffer = FeatureBuffer(cfg.probe.buffer_size)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    warm = max(1, cfg.optim.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    writer = MetricsWriter(out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train: {cfg.algorithm.advantage} | model {cfg.model.name} ({n_params / 1e6:.2f} M) | task "
          f"{task.name} | {P} prompts x {G} rollouts | {cfg.max_steps} steps -> {out}")

    metrics: dict = {}
    bar = tqdm(range(1, cfg.max_steps + 1), desc=cfg.algorithm.advantage, disable=not progress,
               mininterval=2)
    for step in bar:
        t_step = time.perf_counter()
        problems = stream.take(P)

        # ---- generate ----
        t = time.perf_counter()
        model.eval()
        prompt_ids, prompt_mask = encode_prompts(tokenizer, problems, G)  # (B, L), B = P * G
        response_ids, response_mask = generate(model, prompt_ids, prompt_mask, cfg.rollout.max_new_tokens,
                                               tokenizer.eos_token_id, tokenizer.pad_token_id,
                                               cfg.rollout.temperature, cfg.rollout.top_p, gen)
        batch = RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, G)
        time_generate = time.perf_counter() - t

        # ---- score: old log-probs, entropies, probe-layer hidden states in one forward ----
        t = time.perf_counter()
        score(model, batch, layer, cfg.rollout.temperature)
        feats = None
        if use_probe:
            feats = rollout_features(batch.prompt_hidden, batch.prompt_mask, batch.response_hidden,
                                     batch.response_mask, batch.response_ids, batch.entropy, marker_id, cfg.probe.k)
            batch.prompt_hidden = batch.response_hidden = None  # features keep what the probe needs
        time_score = time.perf_counter() - t

        # ---- rewards ----
        t = time.perf_counter()
        texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
        rewards = torch.tensor(task.score_batch(texts, [p for p in problems for _ in range(G)]),
                               dtype=torch.float32)  # (B,)
        time_reward = time.perf_counter() - t

        # ---- baseline / advantages (probe fitted on earlier steps only) ----
        t = time.perf_counter()
        predictions = probe.predict(feats["prompt"], feats["trajectory"], feats["entropy"]) \
            if use_probe and probe.fitted else None
        probe_ready = bool(cfg.probe.load) or step > cfg.probe.warmup_steps
        advantages, used_probe = compute_advantages(cfg, rewards, predictions, probe_ready)
        time_probe = time.perf_counter() - t

        # ---- policy update ----
        t = time.perf_counter()
        update = policy_update(model, ref_model, optimizer, scheduler, batch, advantages, cfg)
        time_update = time.perf_counter() - t

        # ---- probe update: this step's rows join the buffer after its advantages are fixed ----
        t = time.perf_counter()
        if use_probe:
            targets = poise_targets(group_view(rewards, G)).flatten()  # row i: mean reward of its siblings
            buffer.add(feats["prompt"], feats["trajectory"], feats["entropy"], targets, step)
            if buffer.num_steps >= cfg.probe.min_fit_steps:
                probe.fit(*buffer.tensors())
        time_probe += time.perf_counter() - t

        # ---- log ----
        lengths = response_mask.sum(1).float()
        metrics = {
            "step": step,
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std().item(),
            "advantage/mean": advantages.mean().item(),
            "advantage/std": advantages.std().item(),
            **update,
            "entropy/mean": (batch.entropy[response_mask].mean().item()),
            "completion/mean_length": lengths.mean().item(),
            "completion/truncated_fraction": batch.truncated.float().mean().item(),
            "tokens/generated": int(response_mask.sum()),
            "lr": scheduler.get_last_lr()[0],
        }
        levels = [p.level for p in problems for _ in range(G)]
        for lv in sorted(set(levels)):  # reward by difficulty level, e.g. reward/level_t2d1
            metrics[f"reward/level_{lv}"] = rewards[[i for i, x in enumerate(levels) if x == lv]].mean().item()
        if predictions is not None:  # out of sample: the probe has not seen this step yet
            baseline = leave_one_out_mean(group_view(predictions, G)).flatten()
            metrics.update({f"probe/{k}": v for k, v in probe_metrics(baseline, rewards).items()})
            metrics["probe/used"] = int(used_probe)
        if use_probe:
            metrics["probe/buffer_rows"] = len(buffer)
        metrics.update({"time/generate_s": time_generate, "time/score_s": time_score, "time/reward_s": time_reward,
                        "time/update_s": time_update, "time/probe_s": time_probe,
                        "time/step_s": time.perf_counter() - t_step})
        writer.log(metrics)
        bar.set_postfix({"reward": f"{metrics['reward/mean']:.3f}",
                         **({"probe_r": f"{metrics['probe/pearson']:.2f}"} if "probe/pearson" in metrics else {})})

    # ---- save ----
    writer.close()
    model.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    if use_probe and probe.fitted:
        save_probe(probe, out / "policy", feature_meta)
    return metrics
