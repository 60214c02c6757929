"""Prompt screening on the default testbed: POISE without screening (mode none), with probe screening and with history
skipping, each trained for the same number of steps from the embedded default, then evaluated on the same held-out
problems.

    python benchmarks/screening/screening.py --out runs/screening --steps 150 [--modes none probe history] \
        [-- train args]

For each mode (skipped when its output is already there):
    poise train --max-steps STEPS --screen.mode MODE --output-dir OUT/MODE
    poise eval --model.name OUT/MODE/policy --output OUT/MODE.jsonl        (500 held-out problems, k = 8, seed 0)
Reports per mode: the fraction of groups with unequal rewards (1 - reward/frac_zero_std_groups) over all steps and
over the last 50, the mean screen/auroc_varied (probe mode: the AUROC of the predicted p(1 - p) for the groups
whose rewards turned out unequal), the compute totals (policy forward tokens include the screening prefill),
generated tokens and the seconds of the steps, and the held-out Avg@8 paired per problem against mode `none`
(`paired_eval.paired`: difference with its 95% bootstrap interval). Writes results/screening.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "default_run"))  # default_gain.py, paired_eval.py
from default_gain import cpu_flags, poise  # noqa: E402
from paired_eval import paired  # noqa: E402


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def summarise(run: Path) -> dict:
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    varied = [1 - r["reward/frac_zero_std_groups"] for r in rows]
    last = rows[-1]
    return {"steps": len(rows), "varied_fraction": _mean(varied), "varied_fraction_last50": _mean(varied[-50:]),
            "auroc_varied": _mean([r.get("screen/auroc_varied") for r in rows]),
            "prefill_tokens": sum(r.get("screen/prefill_tokens", 0) for r in rows),
            "forward_tokens_policy": last["compute/total_forward_tokens_policy"],
            "generated_tokens": last["compute/total_generated_tokens"],
            "step_seconds": sum(r["time/step_s"] for r in rows),
            "train_reward_last50": _mean([r["reward/mean"] for r in rows[-50:]])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/screening")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--num-problems", type=int, default=500)
    ap.add_argument("--modes", nargs="+", default=["none", "probe", "history"])
    ap.add_argument("--results", default="results/screening.json")
    ap.add_argument("extra", nargs="*", help="more `poise train` arguments for every mode (after --)")
    a = ap.parse_args()
    out = Path(a.out)
    ev = ["--k", "8", "--num-problems", str(a.num_problems), "--seed", "0"]
    result = {"steps": a.steps, "cpu_flags": cpu_flags(), "extra_train_args": a.extra, "modes": {}}
    for mode in a.modes:
        run = out / mode
        if not (run / "policy").is_dir():
            poise("train", "--max-steps", str(a.steps), "--screen.mode", mode, "--output-dir", str(run), *a.extra)
        if not (out / f"{mode}.jsonl").is_file():
            poise("eval", "--model.name", str(run / "policy"), "--output", str(out / f"{mode}.jsonl"), *ev)
        result["modes"][mode] = summarise(run)
    rows = {m: [json.loads(line) for line in open(out / f"{m}.jsonl")] for m in a.modes}
    for mode in a.modes:
        d = paired(rows["none"], rows[mode])["all"] if "none" in rows else None
        result["modes"][mode]["heldout_avg8"] = d["mean_after"] if d else None
        if d and mode != "none":
            result["modes"][mode]["vs_none"] = {k: d[k] for k in ("mean", "se", "lo", "hi", "n")}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(result, indent=2))
    print("| mode | varied groups | last 50 | AUROC(p(1-p)) | held-out Avg@8 | vs none [95% CI] | policy fwd tokens "
          "| prefill | steps s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, s in result["modes"].items():
        vs = s.get("vs_none")
        print(f"| {mode} | {s['varied_fraction']:.3f} | {s['varied_fraction_last50']:.3f} | {s['auroc_varied']:.3f} | "
              f"{s['heldout_avg8']:.3f} | " + (f"{vs['mean']:+.3f} [{vs['lo']:+.3f}, {vs['hi']:+.3f}]" if vs else "—")
              + f" | {s['forward_tokens_policy']:,.0f} | {s['prefill_tokens']:,} | {s['step_seconds']:.0f} |")
    print(f"CPU flags: {result['cpu_flags']}")


if __name__ == "__main__":
    main()
