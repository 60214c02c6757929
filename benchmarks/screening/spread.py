"""How much signal G = 2 groups carry: per `poise eval` output, per level, the fraction of two-sample groups whose
rewards would differ, and per `poise train` run, the same fraction over its first steps and its phase shares.

    python benchmarks/screening/spread.py runs/gain/before.jsonl [more.jsonl ...] [--runs RUN_DIR ...]

Eval files: a problem with c correct of k samples gives unequal pairs with probability estimated without bias as
2c(k - c) / (k (k - 1)); reported with Avg@k and the fractions of problems never and always solved.
Run dirs: the number of steps, the mean of 1 - reward/frac_zero_std_groups over steps 1-10, 1-20, the last 20 and
all steps, DAPO's mean kept fraction and rounds when present, probe screening's mean screen/auroc_varied and its
prefill's prompt tokens against the generated tokens (totals over the run) when present, the mean generation and
step seconds, and the share of total step time spent generating and updating; with several runs (the seeds of one
method), also the mean of each over them, and for the unequal fractions a 95% percentile-bootstrap interval over the
runs (each run's mean is one value; `poise.algo.stats.bootstrap_mean_ci`).
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from poise.algo.stats import bootstrap_mean_ci  # noqa: E402
from poise.io.tracking import read_metrics  # noqa: E402


def eval_spread(rows: list[dict]) -> dict:
    """{level or 'all': {problems, avg, unequal, never, always}} from per-problem `poise eval` rows."""
    by = defaultdict(list)
    for r in rows:
        by[r["level"]].append(r)
        by["all"].append(r)
    out = {}
    for level, rs in by.items():
        k = len(rs[0]["scores"])
        out[level] = {"problems": len(rs), "avg": sum(r["n_correct"] for r in rs) / (k * len(rs)),
                      "unequal": st.mean(2 * r["n_correct"] * (k - r["n_correct"]) / (k * (k - 1)) for r in rs),
                      "never": st.mean(r["n_correct"] == 0 for r in rs),
                      "always": st.mean(r["n_correct"] == k for r in rs)}
    return out


def run_spread(rows: list[dict]) -> dict:
    unequal = [1 - r["reward/frac_zero_std_groups"] for r in rows]
    last = rows[-1]
    out = {"steps": len(rows), "unequal_steps_1_10": st.mean(unequal[:10]), "unequal_steps_1_20": st.mean(unequal[:20]),
           "unequal_last_20": st.mean(unequal[-20:]), "unequal_all": st.mean(unequal),
           "generate_s": st.mean(r["time/generate_s"] for r in rows), "step_s": st.mean(r["time/step_s"] for r in rows),
           "generate_share": last["time_total/generate_s"] / last["time_total/step_s"],
           "update_share": last["time_total/update_s"] / last["time_total/step_s"]}
    if "dynamic_sampling/kept_fraction" in last:
        out["kept_fraction"] = st.mean(r["dynamic_sampling/kept_fraction"] for r in rows)
        out["rounds"] = st.mean(r["dynamic_sampling/rounds"] for r in rows)
    if "screen/prefill_tokens" in last:  # the screening prefill's prompt tokens against the tokens generated
        out["prefill_tokens"] = sum(r["screen/prefill_tokens"] for r in rows)
        out["generated_tokens"] = sum(r["tokens/generated"] for r in rows)
    auroc = [r["screen/auroc_varied"] for r in rows if "screen/auroc_varied" in r]
    auroc = [v for v in auroc if v == v]  # NaN: a step whose groups all varied, or none did
    if auroc:
        out["screen_auroc"] = st.mean(auroc)
    return out


def runs_mean(spreads: list[dict]) -> dict:
    """The mean over runs of each `run_spread` figure the first run has; each `unequal_*` figure also gets
    `<key>_ci`, the 95% bootstrap interval of that mean with the runs resampled (2,000 replicates, seed 0)."""
    out = {}
    for k in spreads[0]:
        vals = [s[k] for s in spreads]
        out[k] = st.mean(vals)
        if k.startswith("unequal"):
            out[f"{k}_ci"] = bootstrap_mean_ci(vals)[1:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="*")
    ap.add_argument("--runs", nargs="*", default=[])
    a = ap.parse_args()
    for path in a.evals:
        for level, s in eval_spread([json.loads(line) for line in open(path)]).items():
            print(f"{path} {level}: {s['problems']} problems, Avg@k {s['avg']:.3f}, unequal G = 2 {s['unequal']:.3f}, "
                  f"never {s['never']:.2f}, always {s['always']:.2f}")
    spreads = [run_spread(read_metrics(run)) for run in a.runs]
    for run, s in zip(a.runs, spreads):
        print(run, {k: round(v, 3) for k, v in s.items()})
    if len(spreads) > 1:
        mean = runs_mean(spreads)
        rounded = {k: tuple(round(x, 3) for x in v) if isinstance(v, tuple) else round(v, 3) for k, v in mean.items()}
        print(f"mean over {len(spreads)} runs", rounded)


if __name__ == "__main__":
    main()
