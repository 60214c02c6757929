"""Kill a real `poise train` run with SIGKILL, resume it, and compare with an uninterrupted run bit for bit.

    python benchmarks/reliability/resume_check.py --steps 40 --every 10 --kill-after 23 --out-dir runs/resume_check

Runs the CLI three times on the embedded default (or any `poise train` arguments after `--`): an uninterrupted run,
a run killed with SIGKILL once `--kill-after` steps are logged, and `--resume` of the killed run. Then compares the
final checkpoints (policy weights, Adam moments, probe and its buffer, RNG states, data position) and the per-step
metrics other than wall times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from poise.io.tracking import read_metrics


def run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "poise.commands.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def logged(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    return sum(1 for line in p.read_text().splitlines() if line.strip()) if p.exists() else 0


def same_tensors(a: Path, b: Path, name: str) -> bool:
    x, y = load_file(str(a / name)), load_file(str(b / name))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def same_optim(a: Path, b: Path) -> bool:
    ox, oy = (torch.load(d / "optim.pt", weights_only=True)["optimizer"]["state"] for d in (a, b))
    return ox.keys() == oy.keys() and all(torch.equal(ox[i][k], oy[i][k]) for i in ox for k in ox[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--kill-after", type=int, default=23)
    ap.add_argument("--out-dir", default="runs/resume_check")
    ap.add_argument("extra", nargs="*", help="more `poise train` arguments (after --)")
    a = ap.parse_args()
    root = Path(a.out_dir)
    shutil.rmtree(root, ignore_errors=True)
    common = ["--max-steps", str(a.steps), "--checkpoint.every", str(a.every), *a.extra]
    t = time.perf_counter()
    p = run([*common, "--output-dir", str(root / "full")])
    assert p.wait() == 0, p.stderr.read().decode()[-3000:]
    full_s = time.perf_counter() - t
    p = run([*common, "--output-dir", str(root / "cut")])
    while logged(root / "cut") < a.kill_after and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = logged(root / "cut")
    ckpts = sorted(d.name for d in (root / "cut" / "checkpoints").iterdir())
    p = run([*common, "--output-dir", str(root / "cut"), "--resume"])
    assert p.wait() == 0, p.stderr.read().decode()[-3000:]
    fa, fb = (root / d / "checkpoints" / f"step-{a.steps:06d}" for d in ("full", "cut"))

    def no_time(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]

    res = {"steps": a.steps, "checkpoint_every": a.every, "killed_after_steps_logged": killed_at,
           "checkpoints_at_kill": ckpts, "returncode_of_killed": -signal.SIGKILL,
           "policy_identical": same_tensors(fa, fb, "policy.safetensors"),
           "probe_and_buffer_identical": same_tensors(fa, fb, "probe.safetensors"),
           "rng_identical": same_tensors(fa, fb, "rng.safetensors"), "adam_state_identical": same_optim(fa, fb),
           "data_position_identical": json.loads((fa / "state.json").read_text())["stream"]
           == json.loads((fb / "state.json").read_text())["stream"],
           "metrics_identical": no_time(read_metrics(root / "full")) == no_time(read_metrics(root / "cut")),
           "uninterrupted_run_s": round(full_s, 1)}
    (root / "resume_check.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        print(f"{k}: {v}")
    if not all(res[k] for k in res if k.endswith("identical")):
        sys.exit(1)


if __name__ == "__main__":
    main()
