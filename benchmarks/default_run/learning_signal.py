"""Did a run learn? Compares mean `reward/mean` over the last fifth of steps with the first fifth.

    python benchmarks/default_run/learning_signal.py RUN_DIR [RUN_DIR ...] [--json OUT]

Per run: first-fifth and last-fifth means of the per-step reward, their difference, its standard error
sqrt(var_first / n_first + var_last / n_last) over per-step values, the ratio difference / SE (the issue's bar is
> 2), and the mean out-of-sample `probe/pearson` over steps after the probe warm-up (steps where the probe was used).
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from poise.io.tracking import read_metrics  # noqa: E402


def learning_signal(rows: list[dict]) -> dict:
    rewards = [r["reward/mean"] for r in rows]
    n = max(2, len(rewards) // 5)
    first, last = rewards[:n], rewards[-n:]
    diff = st.mean(last) - st.mean(first)
    se = (st.variance(first) / n + st.variance(last) / n) ** 0.5
    pearson = [r["probe/pearson"] for r in rows if r.get("probe/used") and r.get("probe/pearson") is not None]
    return {"steps": len(rows), "fifth": n, "reward_first_fifth": st.mean(first), "reward_last_fifth": st.mean(last),
            "difference": diff, "se": se, "difference_over_se": diff / se if se > 0 else float("inf"),
            "probe_pearson_after_warmup": st.mean(pearson) if pearson else None,
            "probe_pearson_steps": len(pearson),
            "median_step_s": st.median(r["time/step_s"] for r in rows),
            "total_time_s": sum(r["time/step_s"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {run: learning_signal(read_metrics(run)) for run in args.runs}
    print("| run | steps | reward first 1/5 | reward last 1/5 | diff | SE | diff/SE | probe r (after warm-up) |"
          " median step s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run, r in results.items():
        pr = "n/a" if r["probe_pearson_after_warmup"] is None else f"{r['probe_pearson_after_warmup']:.3f}"
        print(f"| {run} | {r['steps']} | {r['reward_first_fifth']:.3f} | {r['reward_last_fifth']:.3f} | "
              f"{r['difference']:+.3f} | {r['se']:.3f} | {r['difference_over_se']:.1f} | {pr} | "
              f"{r['median_step_s']:.2f} |")
    write_json(args.json, results)


def write_json(path: str | None, results: dict) -> None:
    """Write `results` to `path` (parents created); nothing when `path` is None."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
