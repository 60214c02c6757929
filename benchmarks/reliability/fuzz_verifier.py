"""Throw the hostile answers of tests/hostile.py at the sandboxed verifier (math-verify reward) one call at a time.

    python benchmarks/reliability/fuzz_verifier.py --timeout 1.0 --out results/fuzz_verifier.json

Reports cases, how each ended (scored, rejected before parsing, timed out, errored), the slowest call against the
limit, whether any payload created a file, and whether a right and a wrong answer are still told apart afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from hostile import hostile_answers  # noqa: E402

from poise.data.tasks.rewards import math_reward  # noqa: E402
from poise.data.tasks.base import Problem  # noqa: E402
from poise.data.verifier import SafeVerifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=1.0, help="per-answer limit in seconds")
    ap.add_argument("--out", default="results/fuzz_verifier.json")
    args = ap.parse_args()
    gold = Problem("fuzz", "math", "q", "314159265", "all", None)
    with tempfile.TemporaryDirectory() as sentinel:
        cases = hostile_answers(sentinel)
        v = SafeVerifier(timeout=args.timeout)
        v(math_reward, ["<think>x</think>0"], [gold])  # start the worker outside the timings
        times, nonzero, t0 = [], 0, time.perf_counter()
        for case in cases:
            t = time.perf_counter()
            nonzero += v(math_reward, [case], [gold])[0] not in (0.0, None)
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        created = os.listdir(sentinel)
    after = v(math_reward, ["<think>x</think>314159266", "<think>x</think>314159265"], [gold] * 2)
    res = {"cases": len(cases), "timeout_s": args.timeout, "max_call_s": max(times),
           "median_call_s": statistics.median(times), "total_s": total, "scored_nonzero": nonzero,
           "files_created": created, "wrong_then_right_after": after,
           **{k: v.stats[k] - (1 if k == "calls" else 0) for k in v.stats}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print("| cases | limit s | max s per call | median s | timeouts | rejected | errors | restarts | non-zero scores "
          "| files created | wrong, right after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {res['cases']} | {args.timeout} | {res['max_call_s']:.3f} | {res['median_call_s']:.4f} | "
          f"{res['timeouts']} | {res['rejected']} | {res['errors']} | {res['restarts']} | {nonzero} | {len(created)} "
          f"| {after} |")


if __name__ == "__main__":
    main()
