"""What dynamic sampling and screening did in each method of a `poise compare` output directory: per run, from its
metrics.jsonl, the steps, the groups trained, the prompts skipped, the mean kept fraction and sampling rounds per
step, the generated tokens and the seconds spent (all, generating, updating); reported as the mean and range over
seeds, with seconds per trained group.

    python benchmarks/screening/sampling_stats.py runs/compare_history_dapo_1200k --methods dapo \
        screening/dapo_history --out results/history_dapo/sampling_stats.json

A run without dynamic sampling logs no groups_trained: it reads 0 here (seconds_per_group NaN), with a kept fraction
of 1 and 1 round; one without screening skipped 0 prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from poise.io.tracking import read_metrics


def run_stats(rows: list[dict]) -> dict:
    """One run's totals and per-step means (rows: its metrics.jsonl, one dict per step)."""
    last = rows[-1]
    trained = sum(r.get("dynamic_sampling/groups_trained", 0) or 0 for r in rows)
    return {"steps": len(rows), "groups_trained": trained,
            "skipped": sum(r.get("screen/skipped", 0) or 0 for r in rows),
            "kept_fraction": statistics.mean(r.get("dynamic_sampling/kept_fraction", 1.0) for r in rows),
            "rounds": statistics.mean(r.get("dynamic_sampling/rounds", 1) for r in rows),
            "generated_tokens": last["compute/total_generated_tokens"], "seconds": last["time_total/step_s"],
            "generate_seconds": last["time_total/generate_s"], "update_seconds": last["time_total/update_s"],
            "seconds_per_group": last["time_total/step_s"] / trained if trained else float("nan")}


def method_stats(out_dir: Path, method: str) -> dict:
    """{'seeds': [...], stat: {'mean', 'min', 'max'}} over the method's runs that have metrics."""
    runs = sorted((out_dir / method).glob("seed*"), key=lambda p: int(p.name[4:]))
    per = {int(p.name[4:]): run_stats(rows) for p in runs if (rows := read_metrics(p))}
    if not per:
        return {"seeds": []}
    out = {"seeds": sorted(per)}
    for k in next(iter(per.values())):
        v = [s[k] for s in per.values()]
        out[k] = {"mean": statistics.mean(v), "min": min(v), "max": max(v)}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    res = {"dir": str(args.dir), "methods": {m: method_stats(args.dir, m) for m in args.methods}}
    for m, st in res["methods"].items():
        if st["seeds"]:
            print(f"{m} ({len(st['seeds'])} seeds): " + ", ".join(
                f"{k} {v['mean']:.3g} ({v['min']:.3g}-{v['max']:.3g})" for k, v in st.items() if k != "seeds"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
