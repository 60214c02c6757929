"""Variance of the policy gradient for POISE, RLOO, GRPO and DAPO at matched samples per step.

    python benchmarks/value_estimation/grad_variance.py --compare-dir runs/compare --seed 0 --steps 20,60,120 \
        --batches 8 --out results/grad_variance.json

Direct estimate: at saved checkpoints of `poise compare` runs (the policy, and for POISE its probe as it was
at that step), draw `--batches` independent batches with the run's own preset. Every preset generates 128 samples
per batch: POISE and RLOO 64 prompts x 2, GRPO and DAPO 16 x 8, DAPO's dynamic sampling included. Compute the
policy gradient of the run's loss at ratio 1 (the on-policy REINFORCE gradient with the method's advantages and
aggregation), and report the trace of its covariance across batches, sum_params Var(g), next to |E g|^2 (the
squared norm of the mean gradient less Var / batches, which removes its noise inflation) and their ratio. The methods
scale advantages differently (GRPO and DAPO divide by the group's std), so the ratio, which does not depend on
that scale, is the comparable number; the raw variance is not. The Adam-moment proxy sum(v_hat - m_hat^2) over
training is logged by `poise train` as `optim/grad_var_proxy`; `--runs` summarises it from run directories.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model

from poise.config.loading import build_config, load_yaml
from poise.config.train_config import TrainConfig
from poise.train.compute import ComputeMeter
from poise.algo.features import rollout_features
from poise.algo.losses import ppo_clip_loss
from poise.rollout.models import decoder_layers, load_policy, resolve_layer
from poise.algo.probe import RidgeProbe
from poise.rollout.hf_engine import response_logits, score, token_logprobs
from poise.rollout.collect import collect
from poise.rollout.sampler import KVCacheSampler  # noqa: E402
from poise.data.tasks import get_task
from poise.data.tasks.dataset import task_kwargs
from poise.train.loop import compute_advantages
from poise.train.state import PromptStream, marker_token_id


def load_probe_at(ckpt: Path) -> RidgeProbe | None:
    tensors = load_file(str(ckpt / "probe.safetensors"))
    meta = json.loads((ckpt / "state.json").read_text())["probe"]
    probe = RidgeProbe.from_state({k[6:]: v for k, v in tensors.items() if k.startswith("probe.")}, meta)
    return probe if probe.fitted else None


def gradient(model, batch, advantages, cfg) -> torch.Tensor:
    """Flat gradient of the run's clipped loss at ratio 1 (old log-probs = current ones)."""
    model.zero_grad(set_to_none=True)
    logp = token_logprobs(response_logits(model, batch, cfg.rollout.temperature), batch.response_ids)
    lo = cfg.loss
    loss, _ = ppo_clip_loss(logp, logp.detach(), advantages, batch.response_mask, lo.clip_low, lo.clip_high,
                            lo.dual_clip or None, lo.aggregation, cfg.rollout.max_new_tokens)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                      for p in model.parameters()])


def measure(run: Path, step: int, batches: int, seed: int) -> dict:
    cfg = build_config(TrainConfig, load_yaml(run / "config.yaml"))
    task = get_task(cfg.task.name, **task_kwargs(cfg.task))
    model, tok = load_policy(cfg.model.name, cfg.task.name, cfg.seed, cfg.model.dtype)
    ckpt = run / "checkpoints" / f"step-{step:06d}"
    load_model(model, str(ckpt / "policy.safetensors"))
    use_probe = cfg.algorithm.advantage == "poise"
    probe = load_probe_at(ckpt) if use_probe else None
    layer = resolve_layer(cfg.probe.layer, len(decoder_layers(model))) if use_probe else None
    marker = marker_token_id(tok, cfg.probe.marker)
    stream = PromptStream(task.problems("train", cfg.task.train_size, seed=seed + 7), seed + 7)
    gen = torch.Generator().manual_seed(seed + 11)
    grads, rewards = [], []
    for _ in range(batches):
        col = collect(KVCacheSampler(model, tok), task, stream, cfg, gen, ComputeMeter())
        batch = col.batch
        score(model, batch, layer, cfg.rollout.temperature)
        pred = None
        if probe is not None:
            f = rollout_features(batch.prompt_hidden, batch.prompt_mask, batch.response_hidden, batch.response_mask,
                                 batch.response_ids, batch.entropy, marker, cfg.probe.k)
            pred = probe.predict(f["prompt"], f["trajectory"], f["entropy"])
        adv, _, _ = compute_advantages(cfg, col.rewards, pred, probe_ready=probe is not None)
        model.train()
        grads.append(gradient(model, batch, adv, cfg))
        rewards.append(float(col.all_scores.nanmean()))  # every sample generated, DAPO's dropped ones included
    G = torch.stack(grads).double()  # (batches, n_params)
    mean = G.mean(0)
    var = float(((G - mean) ** 2).sum(1).sum() / (batches - 1))
    signal = float(mean @ mean) - var / batches  # unbiased estimate of |E g|^2 (|mean|^2 is inflated by Var / K)
    return {"method": cfg.algorithm.name, "step": step, "batches": batches, "trace_var": var,
            "mean_grad_sq_norm": float(mean @ mean), "signal_sq_norm": signal,
            "signal_to_noise": signal / var if var else None,
            "samples_per_batch": int(col.batch.prompt_ids.shape[0]), "probe_used": probe is not None,
            "reward": statistics.mean(rewards)}


def adam_proxy(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["optim/grad_var_proxy"]) for r in rows if "optim/grad_var_proxy" in r]


def plot_proxy(proxy: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for d, p in proxy.items():
        steps, vals = zip(*p["points"])
        ax.plot(steps, vals, label=Path(d).name)
    ax.set_yscale("log")
    ax.set_xlabel("policy step")
    ax.set_ylabel("sum(v_hat - m_hat^2)  (Adam proxy)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare-dir", default="runs/compare")
    ap.add_argument("--methods", default="poise,rloo,grpo,dapo")
    ap.add_argument("--seed", type=int, default=0, help="which compare seed's runs")
    ap.add_argument("--steps", default="20,60,120", help="checkpoints to measure at (each must exist)")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--runs", default="", help="comma-separated run dirs whose optim/grad_var_proxy to summarise")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-direct", action="store_true", help="only summarise and plot --runs")
    ap.add_argument("--out", default="results/grad_variance.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    rows = []
    for m in [] if a.skip_direct else a.methods.split(","):
        run = Path(a.compare_dir) / m / f"seed{a.seed}"
        for step in map(int, a.steps.split(",")):
            if not (run / "checkpoints" / f"step-{step:06d}").is_dir():
                print(f"skip {m} step {step}: no checkpoint")
                continue
            rows.append(measure(run, step, a.batches, a.seed))
            print(json.dumps(rows[-1]))
    proxy = {}
    for d in filter(None, a.runs.split(",")):
        pts = adam_proxy(Path(d))
        proxy[d] = {"points": pts, "median_after_warmup": statistics.median(v for s, v in pts if s > 10)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    if proxy:
        plot_proxy(proxy, Path(a.out).with_suffix(".png"))
    if a.skip_direct and Path(a.out).is_file():  # keep the direct measurements of an earlier run
        rows = json.loads(Path(a.out).read_text())["direct"]
    Path(a.out).write_text(json.dumps({"direct": rows, "adam_proxy": proxy, "seconds": time.perf_counter() - t0},
                                      indent=1))
    print("| method | step | samples per batch | trace Var(g) | |E g|^2 (unbiased) | signal / noise | mean reward |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['step']} | {r['samples_per_batch']} | {r['trace_var']:.4g} | "
              f"{r['signal_sq_norm']:.4g} | {r['signal_to_noise']:.3f} | {r['reward']:.3f} |")
    for d, p in proxy.items():
        print(f"{d}: median optim/grad_var_proxy after step 10 = {p['median_after_warmup']:.4g}")


if __name__ == "__main__":
    main()
