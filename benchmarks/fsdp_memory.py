"""Peak memory per rank and step time of DDP against FSDP, on 2 CPU processes (gloo), side by side.

    python benchmarks/fsdp_memory.py --model smollm2-135m --steps 4 --reps 2 --out results/fsdp_memory.json

Each (mode, repetition) is a real `accelerate launch --num_processes 2 -m poise.cli train ...` run of POISE, the
two modes alternating within a repetition. DDP is `--multi_gpu` (every rank keeps the whole model, its gradients
and its AdamW moments); FSDP adds `--fsdp true` (each rank keeps half of each, and gathers the whole model for
sampling and scoring). Per run: the largest peak resident set size over the launched processes (`ru_maxrss` of
the children, read in a wrapper process that starts nothing else, so it is the larger rank's), and the median
`time/step_s` over steps 2..N. Reported per mode: the median over repetitions (and min, max).
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
from pathlib import Path

WRAPPER = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
           "print(json.dumps({'rc': r.returncode, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


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
              "--main_process_port", free_port(), "-m", "poise.cli", *train]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", WRAPPER, *launch], env=env, capture_output=True, text=True)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if r.returncode or res["rc"]:
        raise RuntimeError(f"{' '.join(launch)} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"peak_rss_mb": res["maxrss_kb"] / 1024, "step_s": st.median(m["time/step_s"] for m in rows[1:]),
            "reward_mean": st.mean(m["reward/mean"] for m in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="chain_sum")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step (= one mini-batch, split over 2 ranks)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
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
                       "max": max(r[k] for r in rs)} for k in ("peak_rss_mb", "step_s")} for m, rs in runs.items()}
    result = {"command": "python " + " ".join(sys.argv), "args": vars(args), "runs": runs, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("| mode | peak RSS per rank, MB (median [min, max]) | step time, s |")
    print("| --- | --- | --- |")
    for m, s in summary.items():
        p, t = s["peak_rss_mb"], s["step_s"]
        print(f"| {m} | {p['median']:.0f} [{p['min']:.0f}, {p['max']:.0f}] | {t['median']:.2f} [{t['min']:.2f}, "
              f"{t['max']:.2f}] |")


if __name__ == "__main__":
    main()
