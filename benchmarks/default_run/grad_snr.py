"""How much of one step's policy gradient is signal, on the embedded default at its initial policy, and what Adam's
first steps do with it: the measurement behind the learning-rate sweep's finding (docs/results/archive.md).

    python benchmarks/default_run/grad_snr.py --batches 8 --out results/grad_snr.json

Draws M independent batches of the default step (64 prompts x 2 rollouts, RLOO advantages as in POISE's warm-up)
from the same policy, and for each the gradient g_m of the token-mean policy-gradient loss at ratio 1 (the PPO loss's
value and gradient on the update's first mini-batch). Reported:
    cosine         mean pairwise cos(g_a, g_b): 0 for pure noise, 1 for a noiseless gradient
    signal share   ||gbar||^2 - tr(Cov)/M over the mean per-batch ||g_m||^2, with gbar the mean gradient and tr(Cov)
                   the unbiased total variance of one batch's gradient: the fraction of a batch gradient's squared
                   norm that is the expected gradient
    sign agreement fraction of coordinates whose gradient sign agrees between two batches (0.5 for noise). Adam's
                   first step (bias-corrected m/sqrt(v) = sign(g)) moves every coordinate by lr in the direction of
                   sign(g), so this is the share of that first step that a second batch would repeat.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_gain import cpu_flags  # noqa: E402

from poise.algo.advantages import group_view, rloo_advantages  # noqa: E402
from poise.config.loading import build_config  # noqa: E402
from poise.config.train_config import TrainConfig  # noqa: E402
from poise.train.compute import ComputeMeter  # noqa: E402
from poise.parallel.distributed import Dist  # noqa: E402
from poise.rollout.models import load_model  # noqa: E402
from poise.rollout.hf_engine import response_logits, token_logprobs  # noqa: E402
from poise.rollout.collect import collect  # noqa: E402
from poise.rollout.sampler import KVCacheSampler  # noqa: E402
from poise.data.tasks.dataset import build_task  # noqa: E402
from poise.train.state import PromptStream  # noqa: E402
from poise.data.verifier import SafeVerifier  # noqa: E402


def batch_gradient(model, batch, rewards, temperature: float) -> torch.Tensor:
    """Flat gradient of L = -sum_{b,t} A_b log pi(y_bt) m_bt / sum m (token mean, RLOO advantages A, (B,))."""
    adv = rloo_advantages(group_view(rewards, batch.group_size)).flatten()
    model.zero_grad(set_to_none=True)
    logp = token_logprobs(response_logits(model, batch, temperature), batch.response_ids)  # (B, T)
    mask = batch.response_mask.float()
    (-(adv[:, None] * logp * mask).sum() / mask.sum()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/grad_snr.json")
    a = ap.parse_args()
    cfg = build_config(TrainConfig, {"seed": a.seed})
    torch.manual_seed(a.seed)
    task = build_task(cfg.task, cfg.reward.function)
    task.verifier = SafeVerifier(timeout=cfg.reward.timeout)
    model, tokenizer = load_model(cfg.model, cfg.task.name, cfg.seed)
    stream = PromptStream(task.problems("train", cfg.task.train_size, seed=cfg.seed), cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    grads, rewards = [], []
    for _ in range(a.batches):
        col = collect(KVCacheSampler(model, tokenizer), task, stream, cfg, gen, ComputeMeter(), Dist("cpu"))
        model.train()
        grads.append(batch_gradient(model, col.batch, col.rewards, cfg.rollout.temperature).double())
        rewards.append(float(col.rewards.mean()))
    g = torch.stack(grads)  # (M, D)
    m = len(g)
    mean = g.mean(0)
    total_var = ((g - mean) ** 2).sum(1).sum() / (m - 1)  # unbiased tr(Cov) of one batch's gradient
    signal = float(mean.pow(2).sum() - total_var / m)  # unbiased ||E g||^2
    pairs = list(itertools.combinations(range(m), 2))
    cos = [float(torch.nn.functional.cosine_similarity(g[i], g[j], dim=0)) for i, j in pairs]
    agree = [float((torch.sign(g[i]) == torch.sign(g[j])).double()[g[i] != 0].mean()) for i, j in pairs]
    res = {"batches": m, "parameters": int(g.shape[1]), "mean_reward": sum(rewards) / m,
           "cosine_mean": sum(cos) / len(cos), "signal_share": signal / float(g.pow(2).sum(1).mean()),
           "sign_agreement_mean": sum(agree) / len(agree), "grad_norm_mean": float(g.norm(dim=1).mean()),
           "mean_grad_norm": float(mean.norm()), "cpu_flags": cpu_flags()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
