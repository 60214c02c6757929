"""The built-in KV-cache sampler against the vLLM engine (`--rollout.engine`), inside real `poise train` steps.

    python benchmarks/speed/vllm_engine.py --models default --shapes 64x2 16x8 --steps 6 --reps 3 \
        --threads 2 --out results/vllm_engine.json
    # the generation phase alone (one sampling call per engine and repetition, alternating), for a model whose
    # training steps take minutes on a CPU
    python benchmarks/speed/vllm_engine.py --sample-only --models smollm2-135m --shapes 64x2 16x8 --reps 3 \
        --out results/vllm_engine_smollm2.json

Each (model, shape, engine) is a `poise train` run in its own process (the interpreter running this script: it
needs the vllm extra, `scripts/install_vllm.sh`), POISE at PxG rollouts (P prompts x G samples), the engines
alternating inside each repetition in a rotated order so that slow spells of a shared machine spread over all of
them. Engines: hf (the built-in sampler, fp32), vllm-fp32 and vllm-bf16 (`--rollout.engine_dtype bfloat16`; the
policy still trains in fp32). Per run, medians over steps FROM..N: generated tokens per second of the generation
phase (`compute/generated_tokens / time/generate_s`), the generation phase and the whole step in seconds, and the
log-prob mismatch `rollout/logprob_diff_mean` (vLLM only). Reported: the median over repetitions, and each vLLM
engine's ratio to hf measured in the same repetition (median over repetitions). The CPU's flags are printed beside
the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import subprocess
import sys
import tempfile
from pathlib import Path

ENGINES = {"hf": ["--rollout.engine", "hf"],
           "vllm-fp32": ["--rollout.engine", "vllm", "--rollout.engine_dtype", "float32"],
           "vllm-bf16": ["--rollout.engine", "vllm", "--rollout.engine_dtype", "bfloat16"]}


def cpu_flags() -> str:
    from poise.rollout.vllm_engine import cpu_flags as flags

    have = flags()
    if have is None:
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have)


def run_quietly(cmd: list[str]) -> None:
    """Run one benchmark process offline with vLLM's engine core in-process; its stderr's tail if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")


def one_run(model: str, shape: str, engine: str, steps: int, first: int, threads: int, where: Path,
            extra: list[str]) -> dict:
    P, G = (int(x) for x in shape.split("x"))
    out = where / f"{model}-{shape}-{engine}".replace("/", "_")
    cmd = [sys.executable, "-m", "poise.commands.cli", "train", "--model.name", model, "--max_steps", str(steps),
           "--rollout.prompts_per_step", str(P), "--rollout.group_size", str(G), "--optim.mini_batch_prompts",
           str(min(P, 16)), "--threads", str(threads), "--output_dir", str(out), "--checkpoint.every", "0",
           "--report_to", "none", *ENGINES[engine], *extra]
    run_quietly(cmd)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][first - 1:]
    return {"gen_tokens_per_s": st.median(r["compute/generated_tokens"] / r["time/generate_s"] for r in rows),
            "generate_s": st.median(r["time/generate_s"] for r in rows),
            "step_s": st.median(r["time/step_s"] for r in rows),
            "logprob_diff_mean": st.median(r.get("rollout/logprob_diff_mean", 0.0) for r in rows),
            "reward_mean": st.mean(r["reward/mean"] for r in rows)}


def sample_only(model_name: str, shape: str, engines: list[str], reps: int, threads: int, max_new: int) -> dict:
    """Generated tokens per second of one `sample` call of each engine on the same P problems x G, alternating
    engines in a rotated order each repetition; one engine object per engine, created (and warmed up) once."""
    import time

    import torch

    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig
    from poise.data.tasks.dataset import build_task
    from poise.rollout.models import load_policy
    from poise.rollout.sampler import KVCacheSampler, SamplingParams
    from poise.rollout.vllm_engine import VLLMSampler

    torch.set_num_threads(threads)
    P, G = (int(x) for x in shape.split("x"))
    model, tok = load_policy(model_name)
    problems = build_task(build_config(TrainConfig, {}).task).problems("train", P, seed=0)
    params = SamplingParams(max_new_tokens=max_new)
    samplers = {}
    for e in engines:
        if e == "hf":
            samplers[e] = KVCacheSampler(model, tok)
        else:
            samplers[e] = VLLMSampler(model, tok, max_model_len=1024, dtype=e.split("-")[1].replace("fp32", "float32")
                                      .replace("bf16", "bfloat16"), max_seqs=P * G)
            samplers[e].sample(problems[:2], G, params, torch.Generator().manual_seed(0))  # warm-up
    reps_out = []
    for r in range(reps):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        rep = {}
        for e in order:
            t = time.perf_counter()
            batch = samplers[e].sample(problems, G, params, torch.Generator().manual_seed(r))
            dt = time.perf_counter() - t
            tokens = int(batch.response_mask.sum())
            rep[e] = {"seconds": dt, "tokens": tokens, "gen_tokens_per_s": tokens / dt}
        reps_out.append(rep)
        print(model_name, shape, r, json.dumps({e: round(v["gen_tokens_per_s"]) for e, v in rep.items()}), flush=True)
    summary = {e: {"gen_tokens_per_s": st.median(rep[e]["gen_tokens_per_s"] for rep in reps_out)} for e in engines}
    for e in engines:
        if e != "hf" and "hf" in engines:
            summary[e]["generation_speedup_vs_hf"] = st.median(
                rep[e]["gen_tokens_per_s"] / rep["hf"]["gen_tokens_per_s"] for rep in reps_out)
    for s_ in samplers.values():
        getattr(s_, "close", lambda: None)()
    return {"summary": summary, "reps": reps_out}


def engine_arguments(doc: str, models: list[str], engines: list[str], out: str) -> argparse.ArgumentParser:
    """The options every engine benchmark here takes (this file and trl_vllm.py)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=models)
    ap.add_argument("--shapes", nargs="+", default=["64x2", "16x8"])
    ap.add_argument("--engines", nargs="+", default=engines, choices=engines)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--from-step", type=int, default=3, help="first step in the medians (vLLM warms up on step 1)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=out)
    return ap


def alternate(models: list[str], shapes: list[str], engines: list[str], reps: int, base: str, run) -> dict:
    """{"model shape": {"summary", "reps"}}: `run(model, shape, engine, rep)` -> {metric: value} for every engine in
    each repetition, the engines in a rotated order; the summary holds medians over repetitions, and for each engine
    but `base` its generation speed-up and step-time ratio against `base` within a repetition (median)."""
    out = {}
    for model in models:
        for shape in shapes:
            key, runs = f"{model} {shape}", []
            for r in range(reps):
                order = engines[r % len(engines):] + engines[:r % len(engines)]
                rep = {e: run(model, shape, e, r) for e in order}
                runs.append(rep)
                print(key, r, json.dumps({e: round(v["gen_tokens_per_s"]) for e, v in rep.items()}), flush=True)
            summary = {e: {k: st.median(rep[e][k] for rep in runs) for k in runs[0][e]} for e in engines}
            for e in engines:
                if e != base and base in engines:
                    summary[e]["generation_speedup_vs_hf"] = st.median(
                        rep[e]["gen_tokens_per_s"] / rep[base]["gen_tokens_per_s"] for rep in runs)
                    summary[e]["step_time_ratio_vs_hf"] = st.median(rep[e]["step_s"] / rep[base]["step_s"]
                                                                    for rep in runs)
            out[key] = {"summary": summary, "reps": runs}
            print(key, json.dumps(summary, indent=1), flush=True)
    return out


def main() -> None:
    ap = engine_arguments(__doc__, ["default", "smollm2-135m"], list(ENGINES), "results/vllm_engine.json")
    ap.add_argument("--train-arg", action="append", default=[], help="extra `poise train` argument (repeatable)")
    ap.add_argument("--sample-only", action="store_true", help="time one sampling call per engine, no training")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="with --sample-only")
    a = ap.parse_args()
    flags = cpu_flags()
    print(f"CPU flags: {flags}", flush=True)
    res: dict = {"cpu_flags": flags, "command": " ".join(sys.argv), "runs": {}}
    if a.sample_only:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        for model in a.models:
            for shape in a.shapes:
                res["runs"][f"{model} {shape}"] = out = sample_only(model, shape, a.engines, a.reps, a.threads,
                                                                    a.max_new_tokens)
                print(model, shape, json.dumps(out["summary"], indent=1), flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {a.out}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        res["runs"] = alternate(a.models, a.shapes, a.engines, a.reps, "hf", lambda model, shape, e, r: one_run(
            model, shape, e, a.steps, a.from_step, a.threads, Path(tmp) / str(r), a.train_arg))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
