"""What each method cost per step, next to what it learned: one row per run directory.

    python benchmarks/methods/cost_table.py RUN_DIR [RUN_DIR ...] [--json OUT]

Per run, from `metrics.jsonl`: the method (`algorithm.name` of the run's config.yaml), steps, reward over the first
and the last fifth of steps and the difference in standard errors (as in learning_signal.py), and per-step means
of the compute counters (prompts, samples, generated tokens, forward and backward tokens; see
src/poise/train/compute.py), the median wall time of a step and of its phases, and the run's total step time.
"""

from __future__ import annotations

import argparse
import statistics as st
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "default_run"))  # learning_signal.py
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from learning_signal import learning_signal, write_json  # noqa: E402
from poise.io.tracking import read_metrics  # noqa: E402

PHASES = ("generate", "score", "update", "critic")


def cost(run: str) -> dict:
    rows = read_metrics(run)
    cfg = yaml.safe_load((Path(run) / "config.yaml").read_text())
    out = {"method": cfg["algorithm"].get("name", cfg["algorithm"]["advantage"]), **learning_signal(rows)}

    def per_step(key):
        return st.mean(r.get(f"compute/{key}", 0.0) for r in rows)

    out["prompts_per_step"] = per_step("prompts")
    out["samples_per_step"] = per_step("samples")
    out["generated_tokens_per_step"] = per_step("generated_tokens")
    out["forward_tokens_per_step"] = sum(per_step(f"forward_tokens_{m}") for m in ("policy", "reference", "critic"))
    out["backward_tokens_per_step"] = sum(per_step(f"backward_tokens_{m}") for m in ("policy", "critic"))
    for ph in PHASES:
        vals = [r[f"time/{ph}_s"] for r in rows if f"time/{ph}_s" in r]
        out[f"median_{ph}_s"] = st.median(vals) if vals else 0.0
    if "dynamic_sampling/rounds" in rows[0]:
        out["mean_sampling_rounds"] = st.mean(r["dynamic_sampling/rounds"] for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {run: cost(run) for run in args.runs}
    print("| method | steps | reward first 1/5 | reward last 1/5 | diff/SE | prompts/step | samples/step | "
          "gen. tokens/step | fwd tokens/step | bwd tokens/step | median step s (gen / score / update / critic) "
          "| total s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results.values():
        phases = " / ".join(f"{r[f'median_{ph}_s']:.2f}" for ph in PHASES)
        print(f"| {r['method']} | {r['steps']} | {r['reward_first_fifth']:.3f} | {r['reward_last_fifth']:.3f} | "
              f"{r['difference_over_se']:+.1f} | {r['prompts_per_step']:.0f} | {r['samples_per_step']:.0f} | "
              f"{r['generated_tokens_per_step']:,.0f} | {r['forward_tokens_per_step']:,.0f} | "
              f"{r['backward_tokens_per_step']:,.0f} | {r['median_step_s']:.2f} ({phases}) | "
              f"{r['total_time_s']:.0f} |")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
