"""The first check of the GPU path, sized for the first minutes on one CUDA GPU of a node without a network
(`scripts/gpu_check.sh` installs what the node lacks and runs this). Every stage writes into one folder:
`gpu_check.json` (every figure) and `gpu_check.md` (the tables).

    python benchmarks/reliability/gpu_check.py --out runs/gpu_check       # on the GPU (about 5-8 minutes on one H100)
    python benchmarks/reliability/gpu_check.py --dry-run --out runs/gpu_check_dry   # the stages on the CPU, tiny (CI)

Stages:
  default  100 POISE steps of the embedded default on the device, held-out Avg@8 on 500 problems before and after,
           paired per problem with a bootstrap interval, beside the CPU run of the same commands
           (results/gpu_check/cpu_reference.json, written with --cpu-reference on a CPU machine)
  presets  every method preset (poise, rloo, grpo, dr_grpo, dapo, ppo) for 5 steps: finished, median step time
  resume   8 steps with a checkpoint every 4, against 4 steps and --resume to 8: the final policies bit for bit
  phases   a model of Qwen3-0.6B's architecture with random weights built from its config (no download):
           64 prompts x 2 rollouts of 256 forced tokens, sampled in fp32 and in bf16 with the built-in sampler,
           then the scoring pass and one PPO update in fp32: seconds per phase, generated tokens/s, peak memory
The dry run keeps every stage and shrinks every size (3 steps, micro models), so this script cannot rot unseen.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics as st
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "default_run"))  # default_gain.py, paired_eval.py
from default_gain import cpu_flags  # noqa: E402
from paired_eval import paired  # noqa: E402

METHODS = ("poise", "rloo", "grpo", "dr_grpo", "dapo", "ppo")
# Qwen3-0.6B's config (hidden 1024, 28 layers, 16 query / 8 key-value heads of 128, MLP 3072, vocabulary 151,936)
QWEN3_0P6B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True)
MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
             intermediate_size=64, vocab_size=1000, tie_word_embeddings=True)


def sizes(dry: bool) -> dict:
    if dry:
        return dict(device="cpu", steps=3, problems=16, k=2, preset_steps=2, resume=(4, 2), arch=MICRO,
                    prompts=4, prompt_len=8, tokens=16, small=["--rollout.prompts_per_step", "8",
                                                               "--optim.mini_batch_prompts", "4",
                                                               "--task.train_size", "64", "--threads", "1"])
    return dict(device="cuda", steps=100, problems=500, k=8, preset_steps=5, resume=(8, 4), arch=QWEN3_0P6B,
                prompts=64, prompt_len=32, tokens=256, small=[])


def cli(*args: str) -> float:
    """`poise ARGS` in this process (one import of torch for every stage); its seconds. Fails loudly."""
    from poise.commands.cli import main as poise_main

    t = time.time()
    code = poise_main(list(args))
    if code != 0:
        raise RuntimeError(f"poise {' '.join(args)} exited {code} (its error is printed above)")
    return time.time() - t


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# =====================================================================================================================
# Stages
# =====================================================================================================================


def stage_default(out: Path, s: dict) -> dict:
    """Before/after held-out Avg@k of `steps` POISE steps of the embedded default, paired, on the device."""
    ev = ["--k", str(s["k"]), "--num_problems", str(s["problems"]), "--seed", "0", "--device", s["device"],
          *s.get("threads", [])]
    cli("eval", "--model.name", "default", "--output", str(out / "before.jsonl"), *ev)
    seconds = cli("train", "--max_steps", str(s["steps"]), "--device", s["device"], "--output_dir",
                     str(out / "run"), "--checkpoint.every", "0", "--report_to", "none", *s["small"],
                     *s.get("threads", []))
    cli("eval", "--model.name", str(out / "run" / "policy"), "--output", str(out / "after.jsonl"), *ev)
    rows = [[json.loads(line) for line in open(out / f)] for f in ("before.jsonl", "after.jsonl")]
    steps = metrics(out / "run")
    return {"levels": paired(*rows), "steps": len(steps), "train_command_s": seconds,
            "median_step_s": st.median(r["time/step_s"] for r in steps),
            "step_s_total": sum(r["time/step_s"] for r in steps)}


def stage_presets(out: Path, s: dict) -> dict:
    """Each method preset for a few steps on the device: its median step time and last reward."""
    res = {}
    for m in METHODS:
        run = out / m
        seconds = cli("train", "--config", m, "--max_steps", str(s["preset_steps"]), "--device", s["device"],
                         "--output_dir", str(run), "--checkpoint.every", "0", "--report_to", "none", *s["small"])
        rows = metrics(run)
        res[m] = {"steps": len(rows), "median_step_s": st.median(r["time/step_s"] for r in rows),
                  "reward_mean_last": rows[-1]["reward/mean"], "command_s": seconds}
    return res


def stage_resume(out: Path, s: dict) -> dict:
    """An uninterrupted run against one stopped halfway and resumed: the final policy weights bit for bit."""
    from safetensors.torch import load_file

    total, every = s["resume"]
    common = ["--device", s["device"], "--checkpoint.every", str(every), "--report_to", "none", *s["small"]]
    cli("train", "--max_steps", str(total), "--output_dir", str(out / "whole"), *common)
    cli("train", "--max_steps", str(every), "--output_dir", str(out / "halves"), *common)
    cli("train", "--max_steps", str(total), "--output_dir", str(out / "halves"), "--resume", *common)
    a, b = (load_file(str(out / d / "policy" / "model.safetensors")) for d in ("whole", "halves"))
    differ = sorted(k for k in a if not (a[k] == b[k]).all())

    def keep(row: dict) -> dict:  # wall times differ between any two runs
        return {k: v for k, v in row.items() if not k.startswith(("time/", "time_total/")) and "per_s" not in k}

    same_metrics = [keep(r) for r in metrics(out / "whole")] == [keep(r) for r in metrics(out / "halves")]
    return {"steps": total, "checkpoint_every": every, "tensors": len(a), "tensors_differing": differ,
            "bit_identical": not differ, "metrics_identical": same_metrics}


def stage_phases(s: dict) -> dict:
    """Sampling (fp32 and bf16 copies of the policy), scoring and one PPO update of a model of the given architecture
    with random weights, on B = prompts x 2 rows of `tokens` forced response tokens (no EOS can end them)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig
    from poise.parallel.distributed import Dist
    from poise.rollout.hf_engine import RolloutBatch, generate
    from poise.train.scoring import score_policy
    from poise.train.update import policy_update

    dev = torch.device(s["device"])
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(max_position_embeddings=4096, **s["arch"])).float().to(dev)
    P, G, L, T = s["prompts"], 2, s["prompt_len"], s["tokens"]
    prompts = torch.randint(10, s["arch"]["vocab_size"], (P, L), generator=torch.Generator().manual_seed(0))
    ids = prompts.repeat_interleave(G, 0).to(dev)
    mask = torch.ones_like(ids, dtype=torch.bool)

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        value = fn()
        if cuda:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return value, time.perf_counter() - t, peak

    res: dict = {"rows": P * G, "prompt_tokens": L, "response_tokens": T,
                 "parameters_M": sum(p.numel() for p in model.parameters()) / 1e6}
    def gen(m):
        return generate(m, ids, mask, T, eos_id=[-1], pad_id=0, generator=torch.Generator(dev).manual_seed(1),
                        group_size=G)

    with torch.no_grad():
        for name, m in (("fp32", model), ("bf16", None)):
            m = m if m is not None else Qwen3ForCausalLM(model.config).to(dev, torch.bfloat16)
            if name == "bf16":
                m.load_state_dict(model.state_dict())
            (resp, rmask), secs, peak = timed(lambda: gen(m))
            res[f"generate_{name}"] = {"s": secs, "tokens_per_s": int(rmask.sum()) / secs, "peak_GiB": peak}
            del m
    batch = RolloutBatch(prompt_ids=ids, prompt_mask=mask, response_ids=resp, response_mask=rmask.bool(),
                         ended=torch.zeros(P * G, dtype=torch.bool, device=dev), group_size=G)
    layer = s["arch"]["num_hidden_layers"] // 2
    mb = min(P, 32)  # the paper's 32 prompts per mini-batch
    half = (mb // 2) * G * (L + T)  # the tokens of half its rows: two micro-batches per mini-batch
    variants = {"memory options": {"optim.micro_batch_tokens": half, "optim.logit_chunk_tokens": 1024,
                                   "model.gradient_checkpointing": True},
                "full logits": {}}  # today's default path, last: it may not fit
    for name, options in variants.items():
        cfg = build_config(TrainConfig, {"rollout.group_size": G, "rollout.prompts_per_step": P,
                                         "optim.mini_batch_prompts": mb, "optim.lr": 1e-6, **options})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        counters = {"skipped_total": 0, "consecutive_skips": 0}
        try:
            (_, reused_logp), t_score, p_score = timed(lambda: score_policy(model, batch, P, cfg, Dist(), layer))
            _, t_update, p_update = timed(lambda: policy_update(model, None, opt, sched, batch, torch.randn(P * G),
                                                                cfg, counters, Dist(), reused_logp))
            res[name] = {"options": options, "score": {"s": t_score, "peak_GiB": p_score},
                         "update": {"s": t_update, "peak_GiB": p_update}}
        except torch.OutOfMemoryError as e:  # recorded, not fatal: the point of the memory options
            res[name] = {"options": options, "out_of_memory": str(e).splitlines()[0][:200]}
        del opt
        batch.old_logp = batch.entropy = batch.prompt_hidden = batch.response_hidden = None
        if cuda:
            torch.cuda.empty_cache()
    res["vllm"] = "installed, not measured here" if _has("vllm") else "not installed"
    return res


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# =====================================================================================================================
# Report
# =====================================================================================================================


def markdown(r: dict, cpu: dict | None) -> str:
    lines = [f"# GPU check ({'dry run on the CPU' if r['dry_run'] else r['env']['device_name']})", "",
             f"torch {r['env']['torch']}, transformers {r['env']['transformers']}, Python {r['env']['python']}; "
             f"{r['seconds']:.0f} s in all", ""]
    d = r.get("default")
    if d:
        lines += ["## The embedded default: held-out Avg@k before and after", "",
                  "| where | steps | level | before | after | change | 95% interval | median step s |",
                  "|---|---:|---|---:|---:|---:|---|---:|"]
        for where, x in (("this device", d), ("CPU reference", (cpu or {}).get("default"))):
            for lv, v in (x or {}).get("levels", {}).items():
                lines.append(f"| {where} | {x['steps']} | {lv} | {v['mean_before']:.3f} | {v['mean_after']:.3f} | "
                             f"{v['mean']:+.3f} | [{v['lo']:+.3f}, {v['hi']:+.3f}] | {x['median_step_s']:.3f} |")
    if r.get("presets"):
        lines += ["", "## Presets", "", "| preset | steps | median step s | last reward |", "|---|---:|---:|---:|"]
        lines += [f"| {m} | {v['steps']} | {v['median_step_s']:.3f} | {v['reward_mean_last']:.3f} |"
                  for m, v in r["presets"].items()]
    if r.get("resume"):
        v = r["resume"]
        lines += ["", f"## Resume: {v['steps']} steps against {v['checkpoint_every']} + resume: policy "
                  f"{'bit-identical' if v['bit_identical'] else 'DIFFERS in ' + str(len(v['tensors_differing']))}"
                  f" ({v['tensors']} tensors), metrics {'identical' if v['metrics_identical'] else 'differ'}"]
    p = r.get("phases")
    if p:
        lines += ["", f"## Phases: {p['parameters_M']:.3g} M parameters, {p['rows']} rows x {p['response_tokens']} "
                  f"forced tokens (prompt {p['prompt_tokens']})", "", "| phase | s | tokens/s | peak GiB |",
                  "|---|---:|---:|---:|"]
        for k in ("generate_fp32", "generate_bf16"):
            v = p[k]
            peak = f"{v['peak_GiB']:.2f}" if v.get("peak_GiB") is not None else "n/a (CPU)"
            lines.append(f"| {k} | {v['s']:.2f} | {v['tokens_per_s']:,.0f} | {peak} |")
        for variant in ("memory options", "full logits"):
            v = p[variant]
            if "out_of_memory" in v:
                lines.append(f"| score + update, {variant} | out of memory | | |")
                continue
            for k in ("score", "update"):
                peak = f"{v[k]['peak_GiB']:.2f}" if v[k].get("peak_GiB") is not None else "n/a (CPU)"
                lines.append(f"| {k}, {variant} | {v[k]['s']:.2f} | | {peak} |")
        lines.append(f"\nmemory options: {p['memory options']['options']}")
        lines.append(f"\nvLLM: {p['vllm']}")
    return "\n".join(lines) + "\n"


def environment(dry: bool) -> dict:
    import torch
    import transformers

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "device_name": name, "cuda": torch.version.cuda, "cpu_flags": cpu_flags(), "dry_run": dry}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--dry-run", action="store_true", help="every stage on the CPU with tiny sizes (CI)")
    ap.add_argument("--cpu-reference", action="store_true",
                    help="only the default stage, on the CPU at full size: results/gpu_check/cpu_reference.json")
    ap.add_argument("--stages", default="default,presets,resume,phases")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the --cpu-reference runs")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    s = sizes(a.dry_run)
    if a.cpu_reference:
        s, stages = {**s, "device": "cpu", "threads": ["--threads", str(a.threads)]}, ["default"]
    else:
        stages = a.stages.split(",")
    if s["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device is visible to torch; use --dry-run on a CPU machine")
    t0 = time.time()
    r: dict = {"dry_run": a.dry_run, "env": environment(a.dry_run)}
    for stage in stages:
        t = time.time()
        print(f"gpu_check: {stage} ...", flush=True)
        shutil.rmtree(out / stage, ignore_errors=True)  # every stage starts afresh
        r[stage] = (stage_phases(s) if stage == "phases" else globals()[f"stage_{stage}"](out / stage, s))
        print(f"gpu_check: {stage} done in {time.time() - t:.0f} s", flush=True)
    r["seconds"] = time.time() - t0
    ref_path = Path(__file__).resolve().parents[2] / "results" / "gpu_check" / "cpu_reference.json"
    if a.cpu_reference:
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(json.dumps(r, indent=2) + "\n")
        print(f"wrote {ref_path}")
        return
    cpu = json.loads(ref_path.read_text()) if ref_path.is_file() and not a.dry_run else None
    (out / "gpu_check.json").write_text(json.dumps({**r, "cpu_reference": cpu}, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(r, cpu))
    print(markdown(r, cpu))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
