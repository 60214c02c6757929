"""The probe's freshness: POISE on the default config with the feature buffer holding 2, 4, 8, 16 or 32 steps of rows.

    python benchmarks/buffer_ablation.py --steps 2,4,8,16,32 --out runs/buffer [--reuse 8=runs/gain/run]
        [--before runs/gain/before.jsonl] [-- extra poise train arguments]

Each setting trains `poise train --probe.buffer_steps S --probe.min_fit_steps min(8, S)` (the buffer_size cap,
4,096 rows, is 32 steps of 64 x 2) into OUT/steps<S>, or reuses a finished run given with --reuse S=DIR, then
evaluates the final policy on the held-out problems (`poise eval`, 500 problems, k = 8, seed 0), paired with
--before (the initial model's evaluation on the same problems). Reported per setting: the online probe's mean Pearson
r over the steps where POISE used it (17-300: the cross-rollout baseline against the step's rewards, before the probe
has seen the step), its mean absolute error there, and the final held-out Avg@8 with its paired change and 95%
bootstrap interval. Extra `--task.*` arguments go to the evaluations too. Writes OUT/buffer_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_gain import poise, task_args  # noqa: E402
from paired_eval import paired  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="2,4,8,16,32")
    ap.add_argument("--out", default="runs/buffer")
    ap.add_argument("--reuse", action="append", default=[], help="S=RUN_DIR: a finished run of that setting")
    ap.add_argument("--before", default="runs/gain/before.jsonl")
    ap.add_argument("extra", nargs="*", help="more `poise train` arguments (after --)")
    a = ap.parse_args()
    out, reuse = Path(a.out), dict(r.split("=", 1) for r in a.reuse)
    ev_args = ["--k", "8", "--num-problems", "500", "--seed", "0", *task_args(a.extra)]
    if not Path(a.before).is_file():
        poise("eval", "--model.name", "default", *ev_args, "--output", a.before)
    before = [json.loads(line) for line in open(a.before)]
    results = {}
    for s in a.steps.split(","):
        run = Path(reuse.get(s, out / f"steps{s}"))
        if not (run / "policy").is_dir():
            poise("train", "--output-dir", str(run), "--probe.buffer_steps", s, "--probe.min_fit_steps",
                  str(min(8, int(s))), "--checkpoint.every", "0", *a.extra)
        ev = out / f"steps{s}.jsonl"
        if not ev.is_file():
            poise("eval", "--model.name", str(run / "policy"), *ev_args, "--output", str(ev))
        rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
        used = [r for r in rows if r.get("probe/used")]
        change = paired(before, [json.loads(line) for line in open(ev)])["all"]
        results[s] = {"run": str(run), "probe_pearson_mean": st.mean(r["probe/pearson"] for r in used),
                      "probe_mae_mean": st.mean(r["probe/mae"] for r in used), "probe_steps": len(used),
                      "buffer_rows_last": rows[-1]["probe/buffer_rows"], "heldout": change}
    out.mkdir(parents=True, exist_ok=True)
    (out / "buffer_ablation.json").write_text(json.dumps(results, indent=2))
    print("| steps of rows | rows held | probe r (steps 17-300) | probe MAE | held-out Avg@8 after | change | 95% "
          "interval |\n|---:|---:|---:|---:|---:|---:|---|")
    for s, r in results.items():
        h = r["heldout"]
        print(f"| {s} | {r['buffer_rows_last']} | {r['probe_pearson_mean']:.3f} | {r['probe_mae_mean']:.3f} | "
              f"{h['mean_after']:.3f} | {h['mean']:+.3f} | [{h['lo']:+.3f}, {h['hi']:+.3f}] |")


if __name__ == "__main__":
    main()
