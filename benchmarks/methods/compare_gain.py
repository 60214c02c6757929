"""Per method of a `poise compare` output directory: the held-out gain of the final checkpoints over the initial
model, paired per problem, with a 95% interval from the two-level bootstrap over seeds and problems; the training
reward early and late; and the mean step time, generation share and DAPO's rounds over each whole run.

    python benchmarks/methods/compare_gain.py runs/compare_long_lr2e-5 [--out results/compare_long_gain.json]

Reads <dir>/initial_eval.json and <dir>/<method>/seed<s>/{eval.json, metrics.jsonl} as `poise compare` writes them
(a run without an eval.json is skipped and named). For seed s the gain on problem n is
    d[s, n] = final_s[n] - initial[n]          (each a fraction of k correct samples)
and the reported gain is mean_{s,n} d with `stats.hierarchical_bootstrap`'s interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "screening"))  # spread.py
from spread import run_spread  # noqa: E402

from poise.algo.stats import hierarchical_bootstrap  # noqa: E402
from poise.io.tracking import read_metrics  # noqa: E402


def final_per_problem(run: Path) -> tuple[int, list[float]]:
    """(step, per-problem accuracies) of the last evaluated checkpoint of a run."""
    steps = json.loads((run / "eval.json").read_text())["steps"]
    last = max(steps, key=int)
    return int(last), steps[last]["per_problem"]


def run_stats(run: Path, window: int = 8) -> dict:
    """`spread.run_spread`'s whole-run figures (unequal groups, mean step, generation share, DAPO's rounds), with
    the training reward over the first and last `window` steps and the mean generated tokens per response."""
    rows = read_metrics(run)
    rew = [r["reward/mean"] for r in rows]
    return {"steps": len(rows), **run_spread(rows), "reward_first": statistics.mean(rew[:window]),
            "reward_last": statistics.mean(rew[-window:]),
            "tokens_per_response": sum(r["compute/generated_tokens"] for r in rows)
            / sum(r["compute/samples"] for r in rows)}


def method_gain(out_dir: Path, method: str, initial: np.ndarray) -> dict:
    """{"seeds", "gain", "gain_ci", "runs"}: the mean final-minus-initial per-problem accuracy over the evaluated
    seeds (S, N), its `hierarchical_bootstrap` interval, and each run's final accuracy and `run_stats`."""
    runs = sorted((out_dir / method).glob("seed*"), key=lambda p: int(p.name[4:]))
    rows, per_run = [], {}
    for run in runs:
        if not (run / "eval.json").is_file():
            print(f"compare_gain: {run} has no eval.json (not evaluated yet); skipped", file=sys.stderr)
            continue
        step, final = final_per_problem(run)
        if len(final) != len(initial):
            raise ValueError(f"{run}/eval.json has {len(final)} problems, initial_eval.json {len(initial)}")
        rows.append(np.asarray(final) - initial)
        per_run[run.name] = {"final_step": step, "final_accuracy": float(np.mean(final)), **run_stats(run)}
    if not rows:
        return {"seeds": 0}
    mean, lo, hi = hierarchical_bootstrap(np.stack(rows))
    return {"seeds": len(rows), "gain": mean, "gain_ci": [lo, hi], "runs": per_run}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    init = json.loads((args.dir / "initial_eval.json").read_text())["steps"]["0"]
    initial = np.asarray(init["per_problem"])
    methods = sorted(p.name for p in args.dir.iterdir() if p.is_dir() and any(p.glob("seed*")))
    result = {"dir": str(args.dir), "initial_accuracy": float(initial.mean()), "problems": len(initial),
              "methods": {m: method_gain(args.dir, m, initial) for m in methods}}
    for m, g in result["methods"].items():
        if not g["seeds"]:
            continue
        r = list(g["runs"].values())
        avg = {k: statistics.mean(x[k] for x in r) for k in r[0] if k != "final_step"}
        print(f"{m}: {g['seeds']} seeds, held-out {result['initial_accuracy']:.3f} -> {avg['final_accuracy']:.3f}, "
              f"gain {g['gain']:+.3f} [{g['gain_ci'][0]:+.3f}, {g['gain_ci'][1]:+.3f}]; training reward "
              f"{avg['reward_first']:.3f} -> {avg['reward_last']:.3f}; unequal groups {avg['unequal_all']:.1%}; step "
              f"{avg['step_s']:.1f} s, generation "
              f"{avg['generate_share']:.0%}, {avg['tokens_per_response']:.0f} tokens/response"
              + (f", {avg['rounds']:.2f} rounds" if "rounds" in avg else ""))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
