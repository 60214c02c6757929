"""Time per training step by phase, and peak memory, for POISE and every baseline at their default sizes.

    python benchmarks/speed/phases.py --steps 24 --from-step 17 --reps 3 --threads 2 --out results/phases.json
    # the same, for checkouts of other commits side by side (LABEL=SRC_DIR; each run imports poise from SRC_DIR)
    python benchmarks/speed/phases.py --methods poise grpo --src before=/tmp/wt_before/src --src now=src ...
    # another task or model for every run (here the long-response regime of configs/compare/long.yaml)
    python benchmarks/speed/phases.py --methods poise dapo --train-arg=--model.name=runs/sft_long ...

Each (method, repetition) is a real `poise train --config METHOD` run in its own process on the embedded default
model and task; the methods run in a rotated order in each repetition so slow spells of a shared machine spread over
all of them. Per run: the median over steps FROM..N (POISE's probe baseline starts at step 17) of every `time/*_s`
phase and of generated tokens per second;
peak resident memory of the process (`ru_maxrss`). Reported per method: the median over repetitions, and for step
time also the min and max. Phases (src/poise/train/loop.py): generate (sampling, minus reward time), reward
(answer checking in the sandbox), score (old log-probs, entropies, probe-layer states, POISE features; it includes
the first mini-batch's forward, which the update reuses), advantages (probe predictions and the estimator), update
(PPO steps), critic (PPO's value model), probe (buffer update and refit).
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

METHODS = ("poise", "rloo", "grpo", "dr_grpo", "dapo", "ppo")
PHASES = ("generate", "reward", "score", "advantages", "update", "critic", "probe", "step")


def one_run(method: str, steps: int, threads: int, where: Path, src: str | None = None, first: int = 3,
            train_args: tuple[str, ...] = ()) -> dict:
    out = where / f"{method}"
    cmd = [sys.executable, "-m", "poise.commands.cli", "train", "--config", method, "--max_steps", str(steps),
           "--threads", str(threads), "--output_dir", str(out), "--checkpoint.every", "0", *train_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"PYTHONPATH": str(Path(src).resolve())} if src else {})}
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: the progress bar cannot fill it and block
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][first - 1:]
    res = {p: st.median(r.get(f"time/{p}_s", 0.0) for r in rows) for p in PHASES}
    res["generated_tokens_per_s"] = st.median(r["compute/generated_tokens"] / r["time/step_s"] for r in rows)
    res["samples_per_step"] = st.median(r["compute/samples"] for r in rows)
    res["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--from-step", type=int, default=3, help="first step in the medians")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--src", action="append", default=[], metavar="LABEL=DIR",
                    help="run every method with poise imported from DIR (a checkout's src/), labelled LABEL")
    ap.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                    help="one more `poise train` argument for every run, e.g. --train-arg=--rollout.max_new_tokens=256")
    ap.add_argument("--out", default="results/phases.json")
    a = ap.parse_args()
    srcs = dict(x.split("=", 1) for x in a.src) or {"": None}
    jobs = [(label, m) for label in srcs for m in a.methods]
    runs: dict[str, list[dict]] = {f"{m} {label}".strip(): [] for label, m in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            for label, m in jobs[rep % len(jobs):] + jobs[:rep % len(jobs)]:
                name = f"{m} {label}".strip()
                runs[name].append(one_run(m, a.steps, a.threads, Path(tmp) / f"rep{rep}" / (label or "x"),
                                          srcs[label], a.from_step, tuple(a.train_arg)))
                print(f"rep {rep + 1}/{a.reps} {name}: {runs[name][-1]['step']:.3f} s/step", flush=True)
    summary = {}
    for m, rs in runs.items():
        summary[m] = {k: st.median(r[k] for r in rs) for k in rs[0]}
        summary[m]["step_min"], summary[m]["step_max"] = min(r["step"] for r in rs), max(r["step"] for r in rs)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "summary": summary, "runs": runs}, indent=1))
    head = "| method | samples/step | " + " | ".join(f"{p} ms" for p in PHASES[:-1]) + \
        " | step s (min-max) | gen tok/s | peak RSS MB |"
    print(head + "\n" + "|---" * (len(PHASES) + 4) + "|")
    for m, s in summary.items():
        print(f"| {m} | {s['samples_per_step']:.0f} | " + " | ".join(f"{s[p] * 1e3:.1f}" for p in PHASES[:-1])
              + f" | {s['step']:.3f} ({s['step_min']:.3f}-{s['step_max']:.3f}) | {s['generated_tokens_per_s']:.0f} "
              f"| {s['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
