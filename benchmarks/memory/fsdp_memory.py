"""Peak memory per rank and step time of DDP against FSDP, on 2 CPU processes (gloo), side by side.

    python benchmarks/memory/fsdp_memory.py --model smollm2-135m --steps 5 --reps 3 --out results/fsdp_memory.json
    python benchmarks/memory/fsdp_memory.py --model smollm2-135m --steps 5 --reps 3 --mmap-threshold 0 \
        --out results/fsdp_timing.json

Each (mode, repetition) is a real `accelerate launch --num_processes 2 -m poise.commands.cli train ...` run of POISE,
the two modes alternating within a repetition. DDP is `--multi_gpu` (every rank keeps the whole model, its gradients
and its AdamW moments); FSDP adds `--fsdp true` (each rank keeps half of each, and gathers the whole model for
sampling and scoring). Per run:
  - what rank 0 holds of the training state after step 1 (weights, gradients, AdamW moments: the trainer's
    "memory on rank 0" line, counted from the live tensors, its shards under FSDP);
  - the largest resident set size of one launched process, sampled every 0.1 s from /proc: over the whole run,
    and from the moment step 1 is logged on (training only: while loading, every rank holds the whole model in
    both modes). Both modes run with MALLOC_MMAP_THRESHOLD_=1048576: glibc then serves every allocation of 1 MB
    or more with its own mapping and unmaps it when freed, so the RSS follows the live tensors rather than the
    high-water mark of the heap (with glibc's default, memory freed after loading stays resident). Mapping and
    unmapping costs time, so step times are best read from a run with `--mmap-threshold 0`;
  - the median over steps 2..N of the step time and of its generate, score and update phases.
Reported per mode: the median over repetitions, [min, max].
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics as st
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = ("generate", "score", "update", "step")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def watch(proc: subprocess.Popen, metrics: Path, peaks: dict) -> None:
    """Until `proc` ends, every 0.1 s: the largest RSS of one process below it, kept as the peak over the whole run
    and as the peak once step 1 is logged (training only, loading excluded)."""
    while proc.poll() is None:
        top = max((rss_mb(p) for p in descendants(proc.pid)), default=0.0)
        peaks["peak_rss_mb"] = max(peaks.get("peak_rss_mb", 0.0), top)
        if metrics.is_file() and metrics.stat().st_size > 0:
            peaks["peak_rss_training_mb"] = max(peaks.get("peak_rss_training_mb", 0.0), top)
        time.sleep(0.1)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def one_run(mode: str, args: argparse.Namespace, out: Path) -> dict:
    train = ["train", "--model.name", args.model, "--task.name", args.task, "--max-steps", str(args.steps),
             "--rollout.prompts_per_step", str(args.prompts), "--optim.mini_batch_prompts", str(args.prompts),
             "--rollout.max_new_tokens", str(args.max_new_tokens), "--threads", "1", "--checkpoint.every", "0",
             "--report-to", "none", "--output-dir", str(out), *(["--fsdp", "true"] if mode == "fsdp" else [])]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", free_port(), "-m", "poise.commands.cli", *train]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           **({"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)} if args.mmap_threshold else {})}
    peaks: dict = {}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(launch, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        watcher = threading.Thread(target=watch, args=(proc, out / "metrics.jsonl", peaks))
        watcher.start()
        proc.wait()
        watcher.join()
        log.seek(0)
        text = log.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(launch)} failed:\n{text[-3000:]}")
    line = next(ln for ln in text.splitlines() if "memory on rank 0 after step 1: " in ln)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    held = dict(part.rsplit(" ", 2)[:2] for part in line.split("after step 1: ", 1)[1].split(", "))
    return {**peaks, **{f"{k}_mb": float(v.replace(",", "")) for k, v in held.items()},
            **{f"{p}_s": st.median(m[f"time/{p}_s"] for m in rows[1:]) for p in PHASES},
            "reward_mean": st.mean(m["reward/mean"] for m in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="chain_sum")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step (= one mini-batch, split over 2 ranks)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--mmap-threshold", type=int, default=1 << 20,
                    help="MALLOC_MMAP_THRESHOLD_ for the runs, in bytes; 0 keeps glibc's default (for timing)")
    ap.add_argument("--out", default="results/fsdp_memory.json")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"ddp": [], "fsdp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for mode in (("ddp", "fsdp") if rep % 2 == 0 else ("fsdp", "ddp")):
                res = one_run(mode, args, Path(tmp) / f"{mode}{rep}")
                runs[mode].append(res)
                print(f"rep {rep} {mode}: {res}", flush=True)
    summary = {m: {k: {"median": st.median(r[k] for r in rs), "min": min(r[k] for r in rs),
                       "max": max(r[k] for r in rs)} for k in rs[0] if k != "reward_mean"} for m, rs in runs.items()}
    result = {"command": "python " + " ".join(sys.argv), "args": vars(args), "runs": runs, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    keys = list(summary["ddp"])
    print("| mode | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for m, s in summary.items():
        print(f"| {m} | " + " | ".join(f"{s[k]['median']:.2f} [{s[k]['min']:.2f}, {s[k]['max']:.2f}]" for k in keys)
              + " |")


if __name__ == "__main__":
    main()
