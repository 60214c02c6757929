"""Long-run stability: does a long `poise train` grow in memory or slow down?

    python benchmarks/soak.py --steps 3000 --every 50 --threads 2 --out results/soak.json --plot docs/img/soak.png

Runs `poise train` on the micro model (`--model.name micro`, the 2-layer tiny preset; the default task, config and
TensorBoard logging, a checkpoint every 500 steps) as a child process. Every `--every` steps it records the resident
memory (VmRSS from /proc) of the trainer, of the verifier's forkserver and of the verifier's worker (the processes
under the trainer), and the median `time/step_s` of the steps since the last sample. Reported: the growth of each from
the sample at `--from-step` (200: allocator and caches settle) to the median of the last five samples, as a percentage,
and the least-squares slope per 1,000 steps over the same span. Goals (issue #20): trainer RSS < +5%, step time < +10%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def verifier_pids(trainer: int) -> tuple[int | None, int | None]:
    """(forkserver, newest worker): the forkserver is the trainer's child whose command line says so; workers are
    its children."""
    for c in children(trainer):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"forkserver" in cmd:
            kids = children(c)
            return c, (max(kids) if kids else None)
    return None, None


def slope_and_growth(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(least-squares slope per 1,000 steps as a % of the first value, growth first -> median of the last 5 in %)."""
    xs, ys = zip(*[(x, y) for x, y in zip(xs, ys) if y == y]) or ((0.0,), (float("nan"),))  # NaN: a process gone
    mx, my = st.fmean(xs), st.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-12, sum((x - mx) ** 2 for x in xs))
    return 100 * slope * 1000 / ys[0], 100 * (st.median(ys[-5:]) / ys[0] - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--from-step", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-arg", action="append", default=[], metavar="ARG", help="one more `poise train` argument")
    ap.add_argument("--out", default="results/soak.json")
    ap.add_argument("--plot", default="")
    a = ap.parse_args()
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    cpu = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags)
    print(f"cpu flags: {cpu} | {os.cpu_count()} cores", flush=True)
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "poise.cli", "train", "--model.name", "micro", "--max_steps", str(a.steps),
               "--threads", str(a.threads), "--output_dir", str(run), "--checkpoint.every", "500",
               "--log_samples_every", "100", *a.train_arg]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        t0 = time.time()
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
            metrics, rows, next_at = run / "metrics.jsonl", [], a.every
            while proc.poll() is None:
                time.sleep(0.2)
                if not metrics.exists():
                    continue
                with open(metrics) as f:
                    lines = f.readlines()
                if len(lines) < next_at:
                    continue
                rows = [json.loads(x) for x in lines[:next_at] if x.endswith("\n")]
                if len(rows) < next_at:
                    continue
                server, worker = verifier_pids(proc.pid)
                window = [r["time/step_s"] for r in rows[next_at - a.every:next_at]]
                samples.append({"step": next_at, "trainer_rss_mb": rss_mb(proc.pid),
                                "forkserver_rss_mb": rss_mb(server) if server else float("nan"),
                                "worker_rss_mb": rss_mb(worker) if worker else float("nan"),
                                "step_s": st.median(window), "wall_s": time.time() - t0})
                s = samples[-1]
                print(f"step {s['step']}: trainer {s['trainer_rss_mb']:.0f} MB, worker {s['worker_rss_mb']:.0f} MB, "
                      f"forkserver {s['forkserver_rss_mb']:.0f} MB, step {s['step_s'] * 1e3:.1f} ms", flush=True)
                next_at += a.every
            if proc.returncode:
                err.seek(0)
                raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")
    kept = [s for s in samples if s["step"] >= a.from_step]
    xs = [s["step"] for s in kept]
    summary = {}
    for key in ("trainer_rss_mb", "worker_rss_mb", "forkserver_rss_mb", "step_s"):
        slope, growth = slope_and_growth(xs, [s[key] for s in kept])
        seen = [s[key] for s in kept if s[key] == s[key]]
        summary[key] = {"at_from_step": seen[0], "last5_median": st.median(seen[-5:]),
                        "growth_pct": growth, "slope_pct_per_1000_steps": slope}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "cpu": cpu, "command": " ".join(cmd[3:]),
                                       "summary": summary, "samples": samples}, indent=1))
    print("| quantity | at step %d | last 5 samples | growth | slope per 1,000 steps |" % a.from_step)
    print("|---|---:|---:|---:|---:|")
    for key, v in summary.items():
        print(f"| {key} | {v['at_from_step']:.3f} | {v['last5_median']:.3f} | {v['growth_pct']:+.1f}% | "
              f"{v['slope_pct_per_1000_steps']:+.2f}% |")
    if a.plot:
        plot(samples, a.from_step, a.plot)


def plot(samples: list[dict], from_step: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s["step"] for s in samples]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, label in (("trainer_rss_mb", "trainer"), ("worker_rss_mb", "verifier worker"),
                       ("forkserver_rss_mb", "verifier forkserver")):
        ax1.plot(steps, [s[key] for s in samples], label=label)
    ax1.set(xlabel="step", ylabel="resident memory (MB)", title="RSS every 50 steps")
    ax2.plot(steps, [s["step_s"] * 1e3 for s in samples], color="C3")
    ax2.set(xlabel="step", ylabel="median step time (ms)", title="step time (median of each 50 steps)")
    for ax in (ax1, ax2):
        ax.axvline(from_step, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
