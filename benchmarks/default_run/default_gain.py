"""What the default run learns: held-out Avg@8 of the embedded default before and after `poise train`, paired per
problem, with its 95% bootstrap interval.

    python benchmarks/default_run/default_gain.py --out runs/gain [-- extra poise train arguments]

The extra arguments that set the task (`--task.levels "[t4d1, t5d1]"`, `--task.name=...`) go to both evaluations
too, so that before and after are scored on the task that was trained on.

Runs, in order (each skipped when its output is already there):
    poise eval --model.name default --output OUT/before.jsonl            (500 held-out problems, k = 8)
                                        (the extra arguments' --model.name instead of default, when they name one)
    poise train --output-dir OUT/run [extra]                             (the default config: 300 steps)
    poise eval --model.name OUT/run/policy --output OUT/after.jsonl      (the same problems and seed)
then pairs the two evaluations (`paired_eval.paired`) and writes OUT/default_gain.json with the per-level table,
the training wall time and the machine's CPU flags.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_eval import paired  # noqa: E402


def cpu_flags() -> str:
    """The vector-extension flags of this CPU (speed figures are only comparable on the same flags)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))))


def task_args(extra: list[str]) -> list[str]:
    """The `--task.*` options among `poise train` arguments, each with its value (`--task.f V` or `--task.f=V`)."""
    out, i = [], 0
    while i < len(extra):
        if extra[i].startswith("--task."):
            takes_value = "=" not in extra[i] and i + 1 < len(extra) and not extra[i + 1].startswith("--")
            out += extra[i:i + 1 + takes_value]
            i += takes_value
        i += 1
    return out


def model_name(extra: list[str]) -> str:
    """The `--model.name` among `poise train` arguments (the model that is trained, so the one evaluated before),
    else 'default'."""
    for i, arg in enumerate(extra):
        if arg.startswith("--model.name="):
            return arg.split("=", 1)[1]
        if arg == "--model.name" and i + 1 < len(extra):
            return extra[i + 1]
    return "default"


def poise(*args: str) -> float:
    t = time.time()
    subprocess.run([sys.executable, "-m", "poise.commands.cli", *args], check=True)
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gain")
    ap.add_argument("--num-problems", type=int, default=500)
    ap.add_argument("extra", nargs="*", help="more `poise train` arguments (after --)")
    a = ap.parse_args()
    out = Path(a.out)
    ev = ["--k", "8", "--num-problems", str(a.num_problems), "--seed", "0", *task_args(a.extra)]
    if not (out / "before.jsonl").is_file():
        poise("eval", "--model.name", model_name(a.extra), "--output", str(out / "before.jsonl"), *ev)
    train_s = None
    if not (out / "run" / "policy").is_dir():
        train_s = poise("train", "--output-dir", str(out / "run"), *a.extra)
    if not (out / "after.jsonl").is_file():
        poise("eval", "--model.name", str(out / "run" / "policy"), "--output", str(out / "after.jsonl"), *ev)
    rows = [[json.loads(line) for line in open(out / f)] for f in ("before.jsonl", "after.jsonl")]
    table = paired(*rows)
    steps = [json.loads(line) for line in open(out / "run" / "metrics.jsonl")]
    result = {"levels": table, "train_command_seconds": train_s, "steps": len(steps),
              "train_step_seconds_total": sum(r["time/step_s"] for r in steps), "cpu_flags": cpu_flags(),
              "extra_train_args": a.extra}
    (out / "default_gain.json").write_text(json.dumps(result, indent=2))
    print("| level | problems | before | after | change ± SE | 95% bootstrap interval |")
    print("|---|---:|---:|---:|---:|---:|")
    for level, d in table.items():
        print(f"| {level} | {d['n']} | {d['mean_before']:.3f} | {d['mean_after']:.3f} | {d['mean']:+.3f} ± "
              f"{d['se']:.3f} | [{d['lo']:+.3f}, {d['hi']:+.3f}] |")
    print(f"train: {len(steps)} steps, {result['train_step_seconds_total']:.0f} s of steps"
          + (f", {train_s:.0f} s for the command" if train_s else "") + f"; CPU flags: {result['cpu_flags']}")


if __name__ == "__main__":
    main()
