"""The importance weights of each `rollout.tis_mode` against response length, on SmolLM2-135M-Instruct sampled by the
vLLM engine in bfloat16 and scored by poise's fp32 pass, as `--config smollm2 --rollout.engine vllm
--rollout.engine_dtype bfloat16` samples and scores (no update: the mismatch is the engines', not the training's).

    python benchmarks/unbiasedness/tis_modes.py --batches 3 --prompts 32 --max-new-tokens 128 \
        --out results/tis_modes.json

For every response: its length n, the sum of its per-token log ratios d = log pi_old - log pi_vllm, and per mode its
effective weight: w_b for the sequence modes, (1/n) sum_t w_bt for the token modes (the factor its advantage gets on
average over its tokens). Reported per mode: the weights' mean, the fraction of units (responses, or tokens) above
the cap, the fraction of responses with effective weight 0, the standard deviation of log w over responses with
w > 0, the Pearson correlation of log w with n, and the mean weight of the shortest and the longest quarter of the
responses. Needs the vllm extra (scripts/install_vllm.sh) and SmolLM2 (README, Models). CPU flags are printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from poise.algo.correction import TIS_MODES, importance_weights, log_ratios
from poise.config.loading import build_config, load_yaml
from poise.config.train_config import TrainConfig
from poise.data.tasks.dataset import build_task
from poise.rollout.hf_engine import score
from poise.rollout.limits import check_fits
from poise.rollout.models import load_model
from poise.rollout.sampler import SamplingParams
from poise.rollout.vllm_engine import VLLMSampler, cpu_flags


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x * y).sum() / ((x * x).sum().sqrt() * (y * y).sum().sqrt()).clamp(min=1e-300))


def collect(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(old_logp, sampler_logp, mask), each (N, T_max), over every batch; and the run's settings."""
    cfg = build_config(TrainConfig, {**load_yaml("smollm2"), "rollout.engine": "vllm",
                                     "rollout.engine_dtype": "bfloat16", "rollout.max_new_tokens": args.max_new_tokens})
    r = cfg.rollout
    model, tok = load_model(cfg.model, cfg.task.name, cfg.seed)
    task = build_task(cfg.task, cfg.reward.function)
    problems = task.problems("train", args.batches * args.prompts, seed=cfg.seed)
    longest = check_fits(model, tok, problems, r.max_new_tokens, "rollout.max_new_tokens")
    sampler = VLLMSampler(model, tok, max_model_len=longest + r.max_new_tokens, dtype="bfloat16", seed=cfg.seed,
                          max_seqs=args.prompts * r.group_size)
    gen, parts, t0 = torch.Generator().manual_seed(cfg.seed), [], time.perf_counter()
    try:
        sampler.sync_weights(model)
        model.eval()
        for b in range(args.batches):
            batch = sampler.sample(problems[b * args.prompts:(b + 1) * args.prompts], r.group_size,
                                   SamplingParams(r.max_new_tokens, r.temperature, r.top_p), gen)
            score(model, batch, None, r.temperature, micro_batch=16)
            parts.append((batch.old_logp, batch.sampler_logp, batch.response_mask))
            print(f"batch {b + 1}/{args.batches}: {int(batch.response_mask.sum())} tokens "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        sampler.close()
    T = max(p[0].shape[1] for p in parts)

    def cat(i, fill):
        return torch.cat([torch.nn.functional.pad(p[i], (0, T - p[i].shape[1]), value=fill) for p in parts])

    info = {"model": cfg.model.name, "task": cfg.task.name, "levels": cfg.task.levels, "group_size": r.group_size,
            "temperature": r.temperature, "max_new_tokens": r.max_new_tokens, "engine_dtype": "bfloat16",
            "policy_dtype": cfg.model.dtype, "seconds": round(time.perf_counter() - t0, 1)}
    return cat(0, 0.0), cat(1, 0.0), cat(2, False), info


def mode_stats(old, sampler, mask, cap: float, mode: str) -> dict:
    n = mask.sum(1)
    w, over = importance_weights(old, sampler, mask, cap, mode)
    eff = w if w.dim() == 1 else torch.where(mask, w, torch.zeros_like(w)).sum(1) / n.clamp(min=1)  # (B,)
    units_over = over.float().mean() if w.dim() == 1 else over[mask].float().mean()
    pos = eff > 0
    order = torch.argsort(n.double() + torch.linspace(0, 0.5, len(n), dtype=torch.double))  # ties kept in order
    q = max(1, len(n) // 4)
    return {"weight_mean": float(eff.mean()), "over_cap_frac": float(units_over),
            "zero_weight_responses_frac": float((~pos).float().mean()),
            "log_weight_std": float(eff[pos].log().std()) if pos.sum() > 1 else 0.0,
            "corr_log_weight_length": pearson(eff[pos].log(), n[pos]) if pos.sum() > 2 else float("nan"),
            "weight_mean_shortest_quarter": float(eff[order[:q]].mean()),
            "weight_mean_longest_quarter": float(eff[order[-q:]].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32, help="prompts per batch (x group_size 2 responses)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--cap", type=float, default=2.0, help="rollout.tis_cap")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/tis_modes.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags() or set()
    print("CPU flags:", " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags))
    old, sampler, mask, info = collect(args)
    n, d = mask.sum(1), log_ratios(old, sampler, mask)
    result = {**info, "cap": args.cap, "responses": len(n), "tokens": int(n.sum()),
              "length_mean": float(n.double().mean()), "length_min": int(n.min()), "length_max": int(n.max()),
              "truncated_frac": float((n == args.max_new_tokens).float().mean()),
              "mismatch": {"token_abs_mean": float(d.abs().sum() / n.sum()), "token_mean": float(d.sum() / n.sum()),
                           "seq_sum_abs_mean": float(d.sum(1).abs().mean()),
                           "corr_seq_sum_length": pearson(d.sum(1), n),
                           "corr_abs_seq_sum_length": pearson(d.sum(1).abs(), n)},
              "modes": {m: mode_stats(old, sampler, mask, args.cap, m) for m in TIS_MODES},
              "cpu_flags": sorted(f for f in flags if "avx" in f or "amx" in f),
              "torch": torch.__version__, "threads": args.threads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("cpu_flags",)}, indent=1))


if __name__ == "__main__":
    main()
