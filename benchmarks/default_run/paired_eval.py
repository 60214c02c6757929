"""Paired change between two `poise eval` outputs on the same problems: per level and overall, the mean over problems
of (correct fraction after - correct fraction before), its standard error sd / sqrt(n) and its 95% percentile
bootstrap interval (problems resampled as pairs; `poise.algo.stats.paired_difference`).

    python benchmarks/default_run/paired_eval.py runs/eval/before.jsonl runs/eval/after.jsonl \
        [--bootstrap 2000 --seed 0]

Both files must hold the same problems in the same order (the same --task.*, --num-problems and --seed).
"""

from __future__ import annotations

import argparse
import json

from poise.algo.stats import paired_difference


def correct_fractions(rows: list[dict]) -> list[float]:
    """Per-problem correct fraction n_correct / k of `poise eval` rows, in their order."""
    return [r["n_correct"] / len(r["scores"]) for r in rows]


def paired(before: list[dict], after: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """{level or 'all': paired_difference(before fractions, after fractions)} from per-problem eval rows."""
    if [r["uid"] for r in before] != [r["uid"] for r in after]:
        raise SystemExit("the two files do not hold the same problems in the same order")
    out = {}
    for level in sorted({r["level"] for r in before}) + ["all"]:
        keep = [level in ("all", r["level"]) for r in before]
        x = [f for f, k in zip(correct_fractions(before), keep) if k]
        y = [f for f, k in zip(correct_fractions(after), keep) if k]
        out[level] = paired_difference(x, y, n_boot=n_boot, seed=seed)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    a = ap.parse_args()
    rows = [[json.loads(line) for line in open(p)] for p in (a.before, a.after)]
    print("| level | problems | before | after | change ± SE | 95% bootstrap interval |")
    print("|---|---:|---:|---:|---:|---:|")
    for level, d in paired(*rows, a.bootstrap, a.seed).items():
        print(f"| {level} | {d['n']} | {d['mean_before']:.3f} | {d['mean_after']:.3f} | {d['mean']:+.3f} ± "
              f"{d['se']:.3f} | [{d['lo']:+.3f}, {d['hi']:+.3f}] |")


if __name__ == "__main__":
    main()
