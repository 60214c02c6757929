"""Long-run stability: does a long `poise train` grow in memory or slow down?

    python benchmarks/reliability/soak.py --steps 3000 --every 50 --threads 2 --keep runs/soak_run \
        --out results/soak.json --plot docs/img/soak.png

Runs `poise train` on the micro model (`--model.name micro`, the 2-layer tiny preset; the default task, config and
TensorBoard logging, a checkpoint every 500 steps) as a child process. Every `--every` steps it records the resident
memory (VmRSS from /proc) of the trainer, of the verifier's forkserver and of the verifier's worker (the processes
under the trainer), and the median `time/step_s` of the steps since the last sample. Reported: the growth of each from
the sample at `--from-step` (200: allocator and caches settle) to the median of the last five samples, as a percentage,
and the least-squares slope per 1,000 steps over the same span. Goals (issue #20): trainer RSS < +5%, step time < +10%.
The policy's responses change length as it learns, and a step's work with them, so it also records the generated
tokens per step, the step time per 1,000 generated tokens and the main phases' times (medians of each window).
A shared machine's speed drifts too; so with `--keep` the last steps are then redone from a checkpoint in a fresh
process (`--control-from`, default 2500): the same work, bit for bit, so the ratio of the two step times is the
long-lived process's own slowdown.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "memory"))  # fsdp_memory.py
import fsdp_memory  # noqa: E402  (its /proc reader)


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` in MB; NaN once the process is gone (fsdp_memory.rss_mb reads 0 then)."""
    return fsdp_memory.rss_mb(pid) or float("nan")


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


def slope_and_growth(xs: list[float], ys: list[float]) -> tuple[float, float, float, float]:
    """(first: median of the first 5 samples, last: median of the last 5, growth first -> last in %, least-squares
    slope per 1,000 steps as a % of `first`). Medians of five, because one 50-step window of a shared machine can
    be 20% off."""
    xs, ys = zip(*[(x, y) for x, y in zip(xs, ys) if y == y]) or ((0.0,), (float("nan"),))  # NaN: a process gone
    mx, my = st.fmean(xs), st.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-12, sum((x - mx) ** 2 for x in xs))
    first, last = st.median(ys[:5]), st.median(ys[-5:])
    return first, last, 100 * (last / first - 1), 100 * slope * 1000 / first


def summarise(samples: list[dict], from_step: int) -> dict:
    kept = [s for s in samples if s["step"] >= from_step]
    xs, out = [s["step"] for s in kept], {}
    for key in ("trainer_rss_mb", "worker_rss_mb", "forkserver_rss_mb", "step_s", "generated_tokens",
                "step_ms_per_1k_tokens", "generate_s", "score_s", "update_s"):
        first, last, growth, slope = slope_and_growth(xs, [s[key] for s in kept])
        out[key] = {"first5_median": first, "last5_median": last, "growth_pct": growth,
                    "slope_pct_per_1000_steps": slope}
    return out


def print_summary(summary: dict, from_step: int) -> None:
    print(f"| quantity | first 5 samples from step {from_step} | last 5 samples | growth | slope per 1,000 steps |")
    print("|---|---:|---:|---:|---:|")
    for key, v in summary.items():
        print(f"| {key} | {v['first5_median']:.3f} | {v['last5_median']:.3f} | {v['growth_pct']:+.1f}% | "
              f"{v['slope_pct_per_1000_steps']:+.2f}% |")


def control(run: Path, from_step: int, threads: int) -> dict:
    """The same steps again in a fresh process: resume a copy of `run` from its checkpoint at `from_step` and
    train to its last step. The resumed steps are bit-identical to the long-lived process's (the same work), so the
    ratio of their median step times separates a slowdown of the long-lived process from the machine's own drift."""
    import shutil

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]["step"]
    fresh = run.parent / f"{run.name}-control"
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(run, fresh, ignore=shutil.ignore_patterns("tb", "policy"))
    for ckpt in (fresh / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > from_step:
            shutil.rmtree(ckpt)
    if not (fresh / "checkpoints" / f"step-{from_step:06d}").is_dir():
        raise SystemExit(f"{run} has no checkpoint at step {from_step} (checkpoint.every 500 keeps the last two)")
    cmd = [sys.executable, "-m", "poise.commands.cli", "train", "--config", str(fresh / "config.yaml"), "--output_dir",
           str(fresh), "--resume", "--threads", str(threads), "--max_steps", str(last)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    again = [json.loads(x) for x in (fresh / "metrics.jsonl").read_text().splitlines()]
    span = [r for r in rows if r["step"] > from_step], [r for r in again if r["step"] > from_step]
    same = all(a["reward/mean"] == b["reward/mean"] for a, b in zip(*span))
    old, new = (st.median(r["time/step_s"] for r in x) for x in span)
    out = {"from_step": from_step, "to_step": last, "long_lived_step_s": old, "fresh_step_s": new,
           "ratio_long_lived_over_fresh": old / new, "same_rewards": same}
    print(f"steps {from_step + 1}-{last}: long-lived process {old * 1e3:.1f} ms/step, fresh process "
          f"{new * 1e3:.1f} ms/step, ratio {old / new:.3f} (same rewards: {same})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--from-step", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-arg", action="append", default=[], metavar="ARG", help="one more `poise train` argument")
    ap.add_argument("--out", default="results/soak.json")
    ap.add_argument("--plot", default="")
    ap.add_argument("--keep", default="", metavar="DIR", help="train into DIR and keep it (default: a temporary one)")
    ap.add_argument("--control-from", type=int, default=2500, metavar="STEP",
                    help="after the run, redo steps STEP+1.. in a fresh process from the checkpoint at STEP (0: no)")
    ap.add_argument("--control-only", action="store_true",
                    help="only the control, on the finished run in --keep DIR; adds it to --out")
    ap.add_argument("--summary-only", action="store_true",
                    help="recompute --out's summary (and --plot) from its samples")
    a = ap.parse_args()
    if a.control_only or a.summary_only:
        result = json.loads(Path(a.out).read_text())
        if a.control_only:
            result["control"] = control(Path(a.keep), a.control_from, a.threads)
        result["summary"] = summarise(result["samples"], a.from_step)
        Path(a.out).write_text(json.dumps(result, indent=1))
        print_summary(result["summary"], a.from_step)
        if a.plot:
            plot(result["samples"], a.from_step, a.plot)
        return
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    cpu = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags)
    print(f"cpu flags: {cpu} | {os.cpu_count()} cores", flush=True)
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(a.keep) if a.keep else Path(tmp) / "run"
        cmd = [sys.executable, "-m", "poise.commands.cli", "train", "--model.name", "micro",
               "--max_steps", str(a.steps),
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
                last = rows[next_at - a.every:next_at]
                samples.append({"step": next_at, "trainer_rss_mb": rss_mb(proc.pid),
                                "forkserver_rss_mb": rss_mb(server) if server else float("nan"),
                                "worker_rss_mb": rss_mb(worker) if worker else float("nan"),
                                "step_s": st.median(window), "wall_s": time.time() - t0,
                                "generated_tokens": st.median(r["compute/generated_tokens"] for r in last),
                                "step_ms_per_1k_tokens": st.median(1e6 * r["time/step_s"] /
                                                                   max(1, r["compute/generated_tokens"]) for r in last),
                                **{f"{ph}_s": st.median(r.get(f"time/{ph}_s", 0.0) for r in last)
                                   for ph in ("generate", "reward", "score", "update", "probe")}})
                s = samples[-1]
                print(f"step {s['step']}: trainer {s['trainer_rss_mb']:.0f} MB, worker {s['worker_rss_mb']:.0f} MB, "
                      f"forkserver {s['forkserver_rss_mb']:.0f} MB, step {s['step_s'] * 1e3:.1f} ms", flush=True)
                next_at += a.every
            if proc.returncode:
                err.seek(0)
                raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")
    summary = summarise(samples, a.from_step)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "cpu": cpu, "command": " ".join(cmd[3:]),
                                       "summary": summary, "samples": samples}, indent=1))
    print_summary(summary, a.from_step)
    if a.control_from and a.keep:
        result = json.loads(Path(a.out).read_text())
        result["control"] = control(Path(a.keep), a.control_from, a.threads)
        Path(a.out).write_text(json.dumps(result, indent=1))
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
    ax2.plot(steps, [s["step_s"] * 1e3 for s in samples], color="C3", label="step time (ms)")
    if "generated_tokens" in samples[0]:
        ax2.plot(steps, [s["step_ms_per_1k_tokens"] for s in samples], color="C4", label="ms per 1k generated tokens")
        ax3 = ax2.twinx()
        ax3.plot(steps, [s["generated_tokens"] for s in samples], color="C2", ls=":", label="generated tokens / step")
        ax3.set_ylabel("generated tokens per step")
        ax3.set_ylim(0, 1.15 * max(s["generated_tokens"] for s in samples))
        ax3.legend(fontsize=8, loc="lower right")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set(xlabel="step", ylabel="milliseconds", title="step time (median of each 50 steps)")
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
