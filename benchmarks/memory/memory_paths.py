"""Peak memory and step time of one scoring pass + one update mini-batch at long response lengths, today's path against
micro-batches, chunked log-probs and activation checkpointing on SmolLM2-135M (the `smollm2-135m` model).

    python benchmarks/memory/memory_paths.py --lengths 48 256 1024 --repeats 3 --long-repeats 1 --threads 1

Each (variant, length, repeat) runs in a fresh process. It loads the model (fp32), builds a RolloutBatch of
`--prompts` random prompts of `--prompt-tokens` tokens x 2 rollouts of exactly `length` random response tokens (every
token valid: no EOS ends them), and runs one warm-up step on a 1-token batch (which allocates the gradients and the
AdamW moments). Then it records the resident set (VmRSS), resets the high-water mark (/proc/self/clear_refs) and runs
what a training step runs after sampling: `score_policy` (old log-probs, entropies, the probe layer's states;
the first mini-batch's forward kept for the update when it is one micro-batch) and `policy_update` on the whole
batch as one mini-batch. Peak = VmHWM after it, minus the RSS before it: the memory the pass and the update add on
top of the weights, gradients and optimizer state (torch's own allocator statistics miss CPU memory, so RSS is read).
Variants:
    today     optim.micro_batch_tokens 0, optim.logit_chunk_tokens 0, model.gradient_checkpointing false
    chunked   optim.logit_chunk_tokens --chunk alone (the full logits never exist)
    new       optim.micro_batch_tokens --micro-tokens, optim.logit_chunk_tokens --chunk, model.gradient_checkpointing
Reported: the medians over the repeats (--repeats; --long-repeats at 1,024 tokens and more) of the peak above the
state, the wall-clock and CPU seconds (process time: less disturbed by other processes) of scoring and of the update,
and the peak per token of the largest forward (rows x (prompt + response) positions in one micro-batch). The CPU
flags and the machine's load average are printed beside them. Writes results/memory_paths/<variant>_T<length>.json
(every repeat) and results/memory_paths/summary.json. docs/results/speed.md ("Memory at the paper's lengths") has the
table and the arithmetic for the paper presets.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"today": {}, "chunked": {"optim.logit_chunk_tokens": "CHUNK"},
            "new": {"optim.micro_batch_tokens": "MICRO", "optim.logit_chunk_tokens": "CHUNK",
                    "model.gradient_checkpointing": True}}


def _status_kb(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _batch(torch, P: int, L: int, T: int, vocab: int, seed: int):
    from poise.rollout.hf_engine import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(100, vocab, (P, L), generator=g).repeat_interleave(2, 0)  # (2P, L), groups of 2
    resp = torch.randint(100, vocab, (2 * P, T), generator=g)
    ones = torch.ones(2 * P, T, dtype=torch.bool)
    return RolloutBatch(prompts, torch.ones_like(prompts, dtype=torch.bool), resp, ones, 2,
                        ended=torch.zeros(2 * P, dtype=torch.bool))


def child(a) -> dict:
    import torch

    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig
    from poise.parallel.distributed import Dist
    from poise.parallel.fsdp import state_megabytes
    from poise.rollout.models import decoder_layers, load_model, resolve_layer
    from poise.train.microbatch import micro_parts, width
    from poise.train.scoring import score_policy
    from poise.train.update import policy_update

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    values = {k: {"CHUNK": a.chunk, "MICRO": a.micro_tokens}.get(v, v) for k, v in VARIANTS[a.child].items()}
    cfg = build_config(TrainConfig, {"model.name": a.model, "rollout.prompts_per_step": a.prompts,
                                     "rollout.group_size": 2, "optim.mini_batch_prompts": a.prompts,
                                     "rollout.max_new_tokens": a.length, "optim.lr": 1e-6, **values})
    model, _ = load_model(cfg.model, cfg.task.name, cfg.seed)
    layer = resolve_layer(cfg.probe.layer, len(decoder_layers(model)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    vocab, P = model.config.vocab_size, a.prompts

    def step(batch) -> tuple[float, float, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        _, reused_logp = score_policy(model, batch, P, cfg, Dist(), layer)
        t1, c1 = time.perf_counter(), time.process_time()
        policy_update(model, None, opt, sched, batch, torch.linspace(-1, 1, 2 * P), cfg, {}, Dist(), reused_logp)
        return t1 - t0, time.perf_counter() - t1, c1 - c0, time.process_time() - c1

    step(_batch(torch, P, a.prompt_tokens, 1, vocab, 1))  # warm-up: gradients and AdamW moments exist from here on
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    state = state_megabytes([model], [opt])
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from here
    batch = _batch(torch, P, a.prompt_tokens, a.length, vocab, 2)
    score_s, update_s, score_cpu_s, update_cpu_s = step(batch)
    peak = _status_kb("VmHWM")
    parts = micro_parts(2 * P, width(batch), cfg.optim.micro_batch_tokens, 2)
    return {"variant": a.child, "length": a.length, "rows": 2 * P, "prompt_tokens": a.prompt_tokens,
            "tokens": 2 * P * width(batch), "largest_forward_tokens": max(len(p) for p in parts) * width(batch),
            "micro_batches": len(parts), "options": values, "threads": a.threads, "base_rss_mb": base / 1024,
            "state_mb": state, "peak_above_state_mb": (peak - base) / 1024, "score_s": score_s, "update_s": update_s,
            "score_cpu_s": score_cpu_s, "update_cpu_s": update_cpu_s,
            "vocab": vocab, "hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers,
            "load_average": os.getloadavg()[0]}  # other processes on the machine slow the times, not the memory


def cpu_flags() -> str:
    flags = re.findall(r"avx512[a-z_0-9]*|amx[a-z_0-9]*|avx2", Path("/proc/cpuinfo").read_text())
    return " ".join(sorted(set(flags)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[48, 256, 1024])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--prompts", type=int, default=1, help="prompts in the mini-batch (x 2 rollouts each)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--micro-tokens", type=int, default=2048, help="optim.micro_batch_tokens of the 'new' variant")
    ap.add_argument("--chunk", type=int, default=256, help="optim.logit_chunk_tokens of 'chunked' and 'new'")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-repeats", type=int, default=1, help="repeats at lengths of 1,024 tokens and more")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/memory_paths")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    flags = cpu_flags()
    print(f"CPU flags: {flags}")
    summary = []
    for length in a.lengths:
        for variant in a.variants:
            runs = []
            for _ in range(a.repeats if length < 1024 else a.long_repeats):
                cmd = [sys.executable, __file__, "--child", variant, "--length", str(length)] + [
                    x for k in ("model", "prompts", "prompt_tokens", "micro_tokens", "chunk", "threads")
                    for x in (f"--{k.replace('_', '-')}", str(getattr(a, k)))]
                r = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            (out / f"{variant}_T{length}.json").write_text(json.dumps({"runs": runs, "cpu_flags": flags}, indent=1))
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("peak_above_state_mb", "score_s", "update_s", "score_cpu_s", "update_cpu_s",
                             "load_average")}
            row = {**{k: runs[0][k] for k in ("variant", "length", "rows", "tokens", "largest_forward_tokens",
                                               "micro_batches", "options", "state_mb", "vocab", "hidden", "layers")},
                   **med, "repeats": len(runs),
                   "bytes_per_forward_token": med["peak_above_state_mb"] * 2**20 / runs[0]["largest_forward_tokens"]}
            summary.append(row)
            print(f"T={length:5d} {variant:8s} peak above state {med['peak_above_state_mb']:8.0f} MB  "
                  f"score {med['score_s']:6.2f} s ({med['score_cpu_s']:.2f} CPU s)  update {med['update_s']:6.2f} s "
                  f"({med['update_cpu_s']:.2f} CPU s)  load {med['load_average']:.1f}", flush=True)
    (out / "summary.json").write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "child"},
                                                  "cpu_flags": flags, "results": summary}, indent=1))
    print("\n| response tokens | variant | rows x positions | micro-batches | peak above weights+grads+AdamW, MB | "
          "score s (CPU s) | update s (CPU s) | load |\n|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        print(f"| {r['length']} | {r['variant']} | {r['rows']} x {r['tokens'] // r['rows']} | {r['micro_batches']} | "
              f"{r['peak_above_state_mb']:.0f} | {r['score_s']:.1f} ({r['score_cpu_s']:.1f}) | {r['update_s']:.1f} "
              f"({r['update_cpu_s']:.1f}) | {r['load_average']:.1f} |")


if __name__ == "__main__":
    main()
