"""Are two runs the same run? `python scripts/compare_metrics.py BASE NEW` compares BASE/metrics.jsonl with
NEW/metrics.jsonl row by row, every key except the wall-clock ones, exactly (==; NaN equals NaN), and the two runs'
final weights (policy/*.safetensors, critic/*.safetensors) byte for byte where both runs wrote them. Prints what it
compared and every difference (the first 20); exit status 1 if anything differs. BASE and NEW are run directories
(or metrics.jsonl files, then no weights are compared).

Wall-clock keys, left out: `time/*` (phase times), `time_total/*` (their running sums) and `reward/code_seconds`
(the sandbox's time, code tasks). Used for behaviour-preserving refactors (the bit-identity check of issue 42)."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

WALL_CLOCK_PREFIXES = ("time/", "time_total/")
WALL_CLOCK_KEYS = ("reward/code_seconds",)


def wall_clock(key: str) -> bool:
    return key.startswith(WALL_CLOCK_PREFIXES) or key in WALL_CLOCK_KEYS


def same(a, b) -> bool:
    """Exact equality; NaN equals NaN (a run that logs NaN twice logged the same thing)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metrics_file(run: Path) -> Path:
    return run if run.is_file() else run / "metrics.jsonl"


def compare_metrics(base: list[dict], new: list[dict]) -> tuple[list[str], set[str], set[str]]:
    """-> (differences, keys compared, wall-clock keys left out)."""
    diffs, compared, excluded = [], set(), set()
    if len(base) != len(new):
        diffs.append(f"row count: {len(base)} in BASE, {len(new)} in NEW")
    for i, (b, n) in enumerate(zip(base, new)):
        step = b.get("step", i)
        for key in sorted(set(b) | set(n)):
            if wall_clock(key):
                excluded.add(key)
                continue
            compared.add(key)
            if key not in b or key not in n:
                diffs.append(f"step {step}: {key} only in {'BASE' if key in b else 'NEW'}")
            elif not same(b[key], n[key]):
                diffs.append(f"step {step}: {key} {b[key]!r} (BASE) != {n[key]!r} (NEW)")
    return diffs, compared, excluded


def compare_weights(base: Path, new: Path) -> tuple[list[str], list[str]]:
    """-> (differences, files compared): the final weights of both runs, by SHA-256."""
    diffs, compared = [], []
    if not (base.is_dir() and new.is_dir()):
        return diffs, compared
    for f in sorted(base.glob("*/*.safetensors")):
        other = new / f.relative_to(base)
        if not other.exists():
            diffs.append(f"{f.relative_to(base)} only in BASE")
            continue
        compared.append(str(f.relative_to(base)))
        if hashlib.sha256(f.read_bytes()).digest() != hashlib.sha256(other.read_bytes()).digest():
            diffs.append(f"{f.relative_to(base)} differs")
    return diffs, compared


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[0])
        return 2
    base, new = Path(argv[0]), Path(argv[1])
    base_rows, new_rows = rows(metrics_file(base)), rows(metrics_file(new))
    diffs, compared, excluded = compare_metrics(base_rows, new_rows)
    weight_diffs, weights = compare_weights(base, new)
    diffs += weight_diffs
    print(f"{base} vs {new}: {min(len(base_rows), len(new_rows))} rows, {len(compared)} keys compared exactly; "
          f"left out (wall clock): {', '.join(sorted(excluded)) or 'none'}")
    if weights:
        print(f"final weights compared byte for byte: {', '.join(weights)}")
    if diffs:
        print(f"DIFFERENT: {len(diffs)} differences")
        for d in diffs[:20]:
            print("  " + d)
        return 1
    print("IDENTICAL")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
