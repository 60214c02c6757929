"""Our GRPO loop against TRL's GRPOTrainer on the same CPU workload, alternating in one run.

    python benchmarks/speed/vs_trl.py --preset tiny --steps 20 --reps 2 --out results/vs_trl.json
    python benchmarks/speed/vs_trl.py --preset tiny --steps 20 --reps 2 --poise --out results/vs_trl_poise.json

The workload, identical for both: the same untrained Qwen3 preset and BPE tokenizer (built here with one seed and
saved, so both load the same weights), chain_sum prompts in the chat template, G = 8 completions per prompt,
16 prompts per step (128 completions), at most 32 new tokens at temperature 1. The reward is 1 for an even-length
completion, one optimizer step per step, no KL term (TRL's default beta = 0), fp32, one torch thread. TRL:
GRPOTrainer 1.16 with `per_device_train_batch_size=128`. Ours: `poise train --config grpo` with
`optim.mini_batch_prompts = 16` and `loss.kl_coef = 0`. Step time is the median wall-clock of a whole step
(generation, reward, scoring, update) over steps 3 to `--steps`; generated tokens per second use each side's
own count of completion tokens.

With `--poise`, two more runs join each repetition at the same 128 samples per step (64 prompts x G = 2, one
optimizer step per step, the probe's baseline in use from step 3: warm-up 2 steps, refit from 1 step): our POISE
(`--config poise`, `optim.mini_batch_prompts = 64`) and POISE through the TRL integration (`POISETrainer`, the same
sizes); both are reported against the TRL GRPO run of the same repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

P, G, T = 16, 8, 32


def build(preset: str, where: Path):
    from poise.rollout.models import build_tiny_model, build_tokenizer, tokenizer_corpus

    tok = build_tokenizer(tokenizer_corpus("chain_sum", n=300), vocab_size=300)
    build_tiny_model(preset, tok, seed=0).save_pretrained(where)
    tok.save_pretrained(where)
    (where / "even_reward.py").write_text(
        "def reward(completions, **kw):\n    return [float(len(c) % 2 == 0) for c in completions]\n")


def run_trl(model_dir: Path, steps: int, out: Path, poise: bool = False) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from poise.integrations.trl import POISEConfig, POISETrainer

    from poise.data.tasks import build_messages, get_task

    class Clock(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.steps.append(time.perf_counter() - self.t)

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ds = Dataset.from_list([{"prompt": build_messages(p)} for p in get_task("chain_sum").problems("train", 2048)])
    common = dict(output_dir=str(out), per_device_train_batch_size=P * G, num_generations=2 if poise else G,
                  max_completion_length=T, temperature=1.0, beta=0.0, max_steps=steps, learning_rate=5e-5,
                  logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
    args = POISEConfig(probe_warmup_steps=2, probe_min_fit_steps=1, **common) if poise else GRPOConfig(**common)
    clock = Clock()
    def even(completions, **kw):
        return [float(len(c[0]["content"]) % 2 == 0) for c in completions]

    tr = (POISETrainer if poise else GRPOTrainer)(model=model, reward_funcs=even, args=args, train_dataset=ds,
                                                  processing_class=tok, callbacks=[clock])
    tr.remove_callback(PrinterCallback)
    tr.train()
    logs = [h for h in tr.state.log_history if "completions/mean_length" in h][2:]
    step = statistics.median(clock.steps[2:])
    length = statistics.median(h["completions/mean_length"] for h in logs)
    out = {"step_s": step, "mean_length": length, "tokens_per_s": length * P * G / step}
    if poise:
        out["probe_used"] = min(h["probe/used"] for h in logs)
    return out


def run_ours(model_dir: Path, steps: int, out: Path, poise: bool = False) -> dict:
    from poise.config.loading import build_config, load_yaml
    from poise.config.train_config import TrainConfig
    from poise.io.tracking import read_metrics
    from poise.train.loop import train

    values = load_yaml("poise" if poise else "grpo")
    prompts, g = (P * G // 2, 2) if poise else (P, G)
    values.update({"model.name": str(model_dir), "output_dir": str(out), "max_steps": steps, "seed": 0,
                   "rollout.prompts_per_step": prompts, "rollout.group_size": g, "rollout.max_new_tokens": T,
                   "optim.mini_batch_prompts": prompts, "loss.kl_coef": 0.0, "optim.lr": 5e-5,
                   "reward.function": f"{model_dir / 'even_reward.py'}:reward", "checkpoint.every": 0})
    if poise:
        values.update({"probe.warmup_steps": 2, "probe.min_fit_steps": 1})
    train(build_config(TrainConfig, values), progress=False)
    rows = read_metrics(out)[2:]
    step = statistics.median(r["time/step_s"] for r in rows)
    tokens = statistics.median(r["tokens/generated"] for r in rows)
    out = {"step_s": step, "mean_length": tokens / (P * G), "tokens_per_s": tokens / step,
           "phases_s": {k: statistics.median(r[k] for r in rows) for k in
                        ("time/generate_s", "time/reward_s", "time/score_s", "time/advantages_s", "time/update_s",
                         "time/probe_s")}}
    if poise:
        out["probe_used"] = min(r.get("probe/used", 0) for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--poise", action="store_true", help="also POISE (ours) and POISETrainer at equal samples")
    ap.add_argument("--out", default="results/vs_trl.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    root = Path(tempfile.mkdtemp(prefix="vs_trl_"))
    build(a.preset, root / "model")
    sys.path.insert(0, str(root / "model"))
    res = []
    for rep in range(a.reps):  # alternate, so a slow spell of the machine hits both
        ours = run_ours(root / "model", a.steps, root / f"ours{rep}")
        trl = run_trl(root / "model", a.steps, root / f"trl{rep}")
        res.append({"rep": rep, "ours": ours, "trl": trl, "speedup": trl["step_s"] / ours["step_s"]})
        print(f"rep {rep}: ours {ours['step_s']:.3f} s/step ({ours['tokens_per_s']:.0f} tok/s, length "
              f"{ours['mean_length']:.1f}) | TRL {trl['step_s']:.3f} s/step ({trl['tokens_per_s']:.0f} tok/s, length "
              f"{trl['mean_length']:.1f}) | ours {res[-1]['speedup']:.2f}x faster per step", flush=True)
        if a.poise:
            r = res[-1]
            r["ours_poise"] = run_ours(root / "model", a.steps, root / f"ours_poise{rep}", poise=True)
            r["trl_poise"] = run_trl(root / "model", a.steps, root / f"trl_poise{rep}", poise=True)
            for k in ("ours_poise", "trl_poise"):
                r[f"{k}_vs_trl_grpo"] = trl["step_s"] / r[k]["step_s"]
            print(f"       POISE ours {r['ours_poise']['step_s']:.3f} s/step ({r['ours_poise_vs_trl_grpo']:.2f}x TRL "
                  f"GRPO) | POISETrainer {r['trl_poise']['step_s']:.3f} s/step ({r['trl_poise_vs_trl_grpo']:.2f}x) | "
                  f"probe used {r['ours_poise']['probe_used']:.0f}/{r['trl_poise']['probe_used']:.0f}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"preset": a.preset, "threads": a.threads, "steps": a.steps, "runs": res,
                                       "poise": a.poise},
                                      indent=1))


if __name__ == "__main__":
    main()
