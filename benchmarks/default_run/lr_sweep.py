"""Learning-rate sweep with the per-step diagnostics that say why a rate fails: reward, entropy, clip fraction,
approximate KL between the policy before and after a step, gradient norm (before clipping) and the fraction of
optimizer steps whose gradient was clipped.

    python benchmarks/default_run/lr_sweep.py --lrs 5e-5,1e-4,2e-4,5e-4 --max-steps 100 --out runs/lr_sweep \
        [-- extra train args]

Each rate runs `poise train` (the default config plus the extra arguments) into OUT/lr<rate>; a run whose
metrics.jsonl already has max-steps rows is reused. The table gives, per rate, means over the first and the last
`--window` steps, and the largest value over the run. Writes OUT/lr_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from poise.io.tracking import read_metrics  # noqa: E402

KEYS = ("reward/mean", "entropy/mean", "clip_ratio", "kl/approx", "grad_norm", "completion/mean_length")


def summarise(rows: list[dict], window: int, grad_clip: float = 1.0) -> dict:
    """{key: {first, last, max}} over the per-step values of KEYS; `clipped`: fraction of steps with grad_norm above
    the clip (the logged norm is the mean over a step's mini-batches, so this is a lower bound on clipped batches)."""
    out = {}
    for k in KEYS:
        v = [r[k] for r in rows if r.get(k) is not None]
        if v:
            out[k] = {"first": st.mean(v[:window]), "last": st.mean(v[-window:]), "max": max(v)}
    norms = [r["grad_norm"] for r in rows if r.get("grad_norm") is not None]
    out["clipped_fraction"] = sum(n > grad_clip for n in norms) / max(1, len(norms))
    out["steps"] = len(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", default="5e-5,1e-4,2e-4,5e-4")
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--out", default="runs/lr_sweep")
    ap.add_argument("extra", nargs="*", help="more `poise train` arguments (after --)")
    a = ap.parse_args()
    results = {}
    for lr in a.lrs.split(","):
        run = Path(a.out) / f"lr{lr}"
        if not ((run / "metrics.jsonl").is_file() and len(read_metrics(run)) >= a.max_steps):
            subprocess.run([sys.executable, "-m", "poise.commands.cli", "train", "--optim.lr", lr, "--max-steps",
                            str(a.max_steps), "--output-dir", str(run), "--checkpoint.every", "0", *a.extra],
                           check=True)
        results[lr] = summarise(read_metrics(run), a.window)
    Path(a.out, "lr_sweep.json").write_text(json.dumps(results, indent=2))
    w = a.window
    print(f"| lr | reward first {w} | reward last {w} | entropy first / last | clip frac first / last / max | "
          f"approx KL first / last / max | grad norm first / last / max | steps clipped | length first / last |")
    print("|---|---:|---:|---|---|---|---|---:|---|")
    for lr, r in results.items():
        def f(k, parts=("first", "last"), fmt="{:.3f}"):
            return " / ".join(fmt.format(r[k][p]) for p in parts)
        print(f"| {lr} | {r['reward/mean']['first']:.3f} | {r['reward/mean']['last']:.3f} | {f('entropy/mean')} | "
              f"{f('clip_ratio', ('first', 'last', 'max'))} | "
              f"{f('kl/approx', ('first', 'last', 'max'), '{:.4f}')} | "
              f"{f('grad_norm', ('first', 'last', 'max'), '{:.2f}')} | {r['clipped_fraction']:.2f} | "
              f"{f('completion/mean_length', fmt='{:.1f}')} |")


if __name__ == "__main__":
    main()
