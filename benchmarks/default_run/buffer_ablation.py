"""The probe's freshness: POISE on the default config with the feature buffer holding 2, 4, 8, 16 or 32 steps of rows.

    python benchmarks/default_run/buffer_ablation.py --steps 2,4,8,16,32 --out runs/buffer [--reuse 8=runs/gain/run]
        [--before runs/gain/before.jsonl] [--seeds 0,1,2] [-- extra poise train arguments]

Each setting trains `poise train --probe.buffer_steps S --probe.min_fit_steps min(8, S)` (the buffer_size cap,
4,096 rows, is 32 steps of 64 x 2) into OUT/steps<S>, or reuses a finished run given with --reuse S=DIR, then
evaluates the final policy on the held-out problems (`poise eval`, 500 problems, k = 8, seed 0), paired with
--before (the initial model's evaluation on the same problems). Reported per setting: the online probe's mean Pearson
r over the steps where POISE used it (17-300: the cross-rollout baseline against the step's rewards, before the probe
has seen the step), its mean absolute error there, and the final held-out Avg@8 with its paired change and 95%
bootstrap interval. Extra `--task.*` arguments go to the evaluations too. Writes OUT/buffer_ablation.json.

With --seeds, every setting also trains with `--seed S` for each further training seed S (into OUT/seed<S>/steps<N>;
seed 0 is the run above, --reuse applies to it only), and the report adds, per setting, the final Avg@8 averaged
over seeds and its difference from the last setting in --steps, paired per seed and problem, each with a 95%
interval from the two-level bootstrap over seeds and problems (`poise.algo.stats.hierarchical_bootstrap`). Runs
that already finished are reused, so several calls with disjoint --seeds can run side by side and a last call with
all of them reads the result. Writes OUT/buffer_seeds.json.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_gain import poise, task_args  # noqa: E402
from paired_eval import correct_fractions, paired  # noqa: E402

from poise.algo.stats import hierarchical_bootstrap  # noqa: E402


def over_seeds(evals: dict[str, dict[int, list[dict]]], against: str, n_boot: int = 2000) -> dict:
    """Per setting: the final accuracy averaged over seeds and problems, and its difference from setting `against`.

    evals[setting][seed] holds that run's per-problem eval rows (the same problems in the same order everywhere).
    With A (S seeds, N problems) a setting's correct fractions and R the same for `against`, the figures are
        mean = mean(A), difference = mean(A - R) (paired per seed and problem),
    each with the 95% interval of `hierarchical_bootstrap` (S seeds and N problems resampled); every setting needs
    the same seeds as `against`."""
    ref_seeds = sorted(evals[against])
    ref = [correct_fractions(evals[against][s]) for s in ref_seeds]
    out = {}
    for setting, runs in evals.items():
        if sorted(runs) != ref_seeds:
            raise SystemExit(f"setting {setting} has seeds {sorted(runs)}, {against} has {ref_seeds}")
        a = [correct_fractions(runs[s]) for s in ref_seeds]
        mean, lo, hi = hierarchical_bootstrap(a, n_boot=n_boot)
        res = {"seeds": ref_seeds, "n_problems": len(a[0]), "mean": mean, "ci": [lo, hi],
               "per_seed": [sum(row) / len(row) for row in a]}
        if setting != against:
            d = [[x - y for x, y in zip(ra, rr)] for ra, rr in zip(a, ref)]
            dm, dlo, dhi = hierarchical_bootstrap(d, n_boot=n_boot)
            res.update({"against": against, "difference": dm, "difference_ci": [dlo, dhi]})
        out[setting] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="2,4,8,16,32")
    ap.add_argument("--out", default="runs/buffer")
    ap.add_argument("--reuse", action="append", default=[], help="S=RUN_DIR: a finished run of that setting")
    ap.add_argument("--before", default="runs/gain/before.jsonl")
    ap.add_argument("--seeds", default="", help="training seeds besides 0, comma-separated (e.g. 1,2,3)")
    ap.add_argument("extra", nargs="*", help="more `poise train` arguments (after --)")
    a = ap.parse_args()
    out, reuse = Path(a.out), dict(r.split("=", 1) for r in a.reuse)
    ev_args = ["--k", "8", "--num-problems", "500", "--seed", "0", *task_args(a.extra)]
    if not Path(a.before).is_file():
        poise("eval", "--model.name", "default", *ev_args, "--output", a.before)
    before = [json.loads(line) for line in open(a.before)]
    results, evals, probe_r = {}, {}, {}
    seeds = [0] + [int(x) for x in a.seeds.split(",") if x]
    for seed in seeds:
        for s in a.steps.split(","):
            if seed == 0:
                run, ev, extra = Path(reuse.get(s, out / f"steps{s}")), out / f"steps{s}.jsonl", a.extra
            else:
                run, ev = out / f"seed{seed}" / f"steps{s}", out / f"seed{seed}" / f"steps{s}.jsonl"
                extra = [*a.extra, "--seed", str(seed)]
            if not (run / "policy").is_dir():
                poise("train", "--output-dir", str(run), "--probe.buffer_steps", s, "--probe.min_fit_steps",
                      str(min(8, int(s))), "--checkpoint.every", "0", *extra)
            if not ev.is_file():
                poise("eval", "--model.name", str(run / "policy"), *ev_args, "--output", str(ev))
            rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
            used = [r for r in rows if r.get("probe/used")]
            evals.setdefault(s, {})[seed] = [json.loads(line) for line in open(ev)]
            probe_r.setdefault(s, []).append(st.mean(r["probe/pearson"] for r in used))
            if seed == 0:
                results[s] = {"run": str(run), "probe_pearson_mean": probe_r[s][0],
                              "probe_mae_mean": st.mean(r["probe/mae"] for r in used), "probe_steps": len(used),
                              "buffer_rows_last": rows[-1]["probe/buffer_rows"],
                              "heldout": paired(before, evals[s][0])["all"]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "buffer_ablation.json").write_text(json.dumps(results, indent=2))
    print("| steps of rows | rows held | probe r (steps 17-300) | probe MAE | held-out Avg@8 after | change | 95% "
          "interval |\n|---:|---:|---:|---:|---:|---:|---|")
    for s, r in results.items():
        h = r["heldout"]
        print(f"| {s} | {r['buffer_rows_last']} | {r['probe_pearson_mean']:.3f} | {r['probe_mae_mean']:.3f} | "
              f"{h['mean_after']:.3f} | {h['mean']:+.3f} | [{h['lo']:+.3f}, {h['hi']:+.3f}] |")
    if len(seeds) > 1:
        against = a.steps.split(",")[-1]
        multi = over_seeds(evals, against)
        for s, r in multi.items():
            r["probe_pearson_per_seed"] = probe_r[s]
        (out / "buffer_seeds.json").write_text(json.dumps(multi, indent=2))
        print(f"\nover training seeds {seeds}, paired per seed and problem against {against} steps:\n"
              "| steps of rows | probe r (mean over seeds) | held-out Avg@8 after [95% CI] | per seed | "
              f"against {against} steps [95% CI] |\n|---:|---:|---|---|---|")
        for s, r in multi.items():
            diff = (f"{r['difference']:+.3f} [{r['difference_ci'][0]:+.3f}, {r['difference_ci'][1]:+.3f}]"
                    if "difference" in r else "–")
            print(f"| {s} | {st.mean(probe_r[s]):.3f} | {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                  f"{', '.join(f'{x:.3f}' for x in r['per_seed'])} | {diff} |")


if __name__ == "__main__":
    main()
