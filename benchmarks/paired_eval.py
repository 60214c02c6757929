"""Paired change between two `poise eval` outputs on the same problems: per level and overall, the mean over problems
of (correct fraction after - correct fraction before) and its standard error sd / sqrt(n).

    python benchmarks/paired_eval.py runs/eval/before.jsonl runs/eval/after.jsonl

Both files must hold the same problems in the same order (the same --task.*, --num-problems and --seed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics


def paired(before: list[dict], after: list[dict]) -> dict:
    """{level or 'all': (n, mean before, mean after, mean difference, SE)} from per-problem eval rows."""
    if [r["uid"] for r in before] != [r["uid"] for r in after]:
        raise SystemExit("the two files do not hold the same problems in the same order")
    out = {}
    for level in sorted({r["level"] for r in before}) + ["all"]:
        pairs = [(b["n_correct"] / len(b["scores"]), a["n_correct"] / len(a["scores"]))
                 for b, a in zip(before, after) if level in ("all", b["level"])]
        d = [y - x for x, y in pairs]
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        out[level] = (len(d), statistics.mean(x for x, _ in pairs), statistics.mean(y for _, y in pairs),
                      statistics.mean(d), se)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    a = ap.parse_args()
    rows = [[json.loads(line) for line in open(p)] for p in (a.before, a.after)]
    print("| level | problems | before | after | change ± SE |\n|---|---:|---:|---:|---:|")
    for level, (n, x, y, d, se) in paired(*rows).items():
        print(f"| {level} | {n} | {x:.3f} | {y:.3f} | {d:+.3f} ± {se:.3f} |")


if __name__ == "__main__":
    main()
