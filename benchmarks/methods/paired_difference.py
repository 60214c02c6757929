"""Two methods of a `poise compare` output directory, paired by seed and held-out problem: the final-accuracy
difference with its 95% interval, the ratio of their gradient-variance proxies with its interval, and, for methods
with a probe, how well the probe's baseline tracked the rewards.

    python benchmarks/methods/paired_difference.py runs/compare_single --pairs poise:rloo poise_single:reinforce_loo \
        --out results/single_rollout/paired.json

Reads <dir>/<method>/seed<s>/{eval.json, metrics.jsonl} as `poise compare` writes them, pooling the seeds of several
directories (the same comparison run again for more seeds, perhaps evaluating fewer checkpoints: only the last one is
read; a seed found twice is an error); only seeds evaluated for both methods of a pair enter it (the others are
named).

- Final accuracy: d[s, n] = final_a[s, n] - final_b[s, n], the last checkpoint's per-problem Avg@k of seed s on
  problem n; the mean over (s, n) with `stats.hierarchical_bootstrap`'s interval (seeds and problems resampled).
  Beside it, the half-widths of the bootstrap over seeds alone (of the seed means mean_n d[s, n]) and over problems
  alone (of the problem means mean_s d[s, n]): more seeds shrink the first, while the second is mostly the spread of
  the difference across problems, which only more held-out problems shrink.
- Gradient variance: per run, the median of `optim/grad_var_proxy` (sum of Adam's v_hat - m_hat^2) over the steps
  after `--after` (the probe's warm-up); per seed the ratio a / b; reported as the geometric mean of the ratios over
  seeds with a 95% percentile interval from resampling seeds.
- Probe: per run, the mean over steps whose advantages used the probe (`probe/used` > 0) of probe/pearson,
  probe/mae and probe/auroc (the out-of-sample baseline against the step's rewards), and of each task's
  probe/<task>/* on a mixture; mean and range over seeds.
The JSON also keeps every run's final per-problem accuracies (`finals`), so later seeds can be paired with these after
the run directories are gone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from poise.algo.stats import bootstrap_mean_ci, hierarchical_bootstrap
from poise.io.tracking import read_metrics


def final_per_problem(run: Path) -> list[float]:
    """Per-problem accuracies of the last evaluated checkpoint of a run."""
    steps = json.loads((run / "eval.json").read_text())["steps"]
    return steps[max(steps, key=int)]["per_problem"]


def _finite(x) -> bool:
    """A logged number that is not NaN or inf (metrics.jsonl writes NaN as null)."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def grad_variance(rows: list[dict], after: int) -> float:
    """Median optim/grad_var_proxy over the steps after `after` (nan when none logged it)."""
    v = [r["optim/grad_var_proxy"] for r in rows
         if r.get("step", 0) > after and _finite(r.get("optim/grad_var_proxy"))]
    return statistics.median(v) if v else float("nan")


def probe_quality(rows: list[dict]) -> dict:
    """Mean of every probe/*pearson, probe/*mae, probe/*auroc (per task too: probe/<task>/pearson) over the steps that
    used the probe, keyed without the 'probe/' prefix; {} without any."""
    used = [r for r in rows if r.get("probe/used", 0) > 0]
    keys = sorted({k for r in used for k in r if k.startswith("probe/") and k.rsplit("/", 1)[-1] in STATS})
    out = {}
    for k in keys:
        v = [r[k] for r in used if _finite(r.get(k))]
        if v:
            out[k[len("probe/"):]] = statistics.mean(v)
    return out


STATS = ("pearson", "mae", "auroc")


def seeds_of(out_dirs: list[Path], method: str) -> dict[int, Path]:
    """{seed: run directory} of `method`'s evaluated runs in every directory of `out_dirs`."""
    found: dict[int, Path] = {}
    for out_dir in out_dirs:
        for p in (out_dir / method).glob("seed*"):
            if (p / "eval.json").is_file():
                if int(p.name[4:]) in found:
                    raise SystemExit(f"paired_difference: {method} seed {p.name[4:]} is in {found[int(p.name[4:])]} "
                                     f"and {p}")
                found[int(p.name[4:])] = p
    return found


def pair(out_dir: list[Path], a: str, b: str, after: int, n_boot: int = 2000) -> dict:
    ra, rb = seeds_of(out_dir, a), seeds_of(out_dir, b)
    seeds = sorted(set(ra) & set(rb))
    left = sorted(set(ra) ^ set(rb))
    if left:
        print(f"paired_difference: {a} vs {b}: seeds {left} are evaluated for one method only; left out",
              file=sys.stderr)
    if not seeds:
        return {"seeds": []}
    d = np.stack([np.asarray(final_per_problem(ra[s])) - np.asarray(final_per_problem(rb[s])) for s in seeds])
    mean, lo, hi = hierarchical_bootstrap(d, n_boot=n_boot)
    _, s_lo, s_hi = bootstrap_mean_ci(d.mean(axis=1), n_boot=n_boot)  # seeds alone: the part more seeds shrink
    _, p_lo, p_hi = bootstrap_mean_ci(d.mean(axis=0), n_boot=n_boot)  # problems alone: what more seeds leave
    ratios = np.array([grad_variance(read_metrics(ra[s]), after) / grad_variance(read_metrics(rb[s]), after)
                       for s in seeds])
    logs = np.log(ratios[np.isfinite(ratios) & (ratios > 0)])
    rng = np.random.default_rng(0)
    boot = [np.exp(rng.choice(logs, len(logs)).mean()) for _ in range(n_boot)] if len(logs) else [float("nan")]
    return {"seeds": seeds, "problems": int(d.shape[1]), "diff": mean, "diff_ci": [lo, hi], "diff_halfwidth":
            (hi - lo) / 2, "seeds_only_halfwidth": (s_hi - s_lo) / 2, "problems_only_halfwidth": (p_hi - p_lo) / 2,
            "grad_var_ratio": float(np.exp(logs.mean())) if len(logs) else float("nan"),
            "grad_var_ratio_ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "grad_var_ratio_per_seed": ratios.tolist()}


def method_probe(out_dir: list[Path], method: str) -> dict:
    """{'seeds', and for each statistic of probe_quality: its mean over seeds and '<name>_range' [min, max]}."""
    per_seed = {s: probe_quality(read_metrics(run)) for s, run in sorted(seeds_of(out_dir, method).items())}
    per_seed = {s: q for s, q in per_seed.items() if q}
    if not per_seed:
        return {}
    out = {"seeds": len(per_seed)}
    for k in sorted({k for q in per_seed.values() for k in q}):
        v = [q[k] for q in per_seed.values() if k in q]
        out[k] = statistics.mean(v)
        out[f"{k}_range"] = [min(v), max(v)]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, nargs="+", help="poise compare output directories (their seeds pooled)")
    ap.add_argument("--pairs", nargs="+", required=True, help="a:b pairs of method directories")
    ap.add_argument("--after", type=int, default=16, help="gradient variance over steps after this one")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    pairs = [p.split(":") for p in args.pairs]
    result = {"dir": [str(d) for d in args.dir], "after": args.after,
              "pairs": {f"{a} - {b}": pair(args.dir, a, b, args.after) for a, b in pairs},
              "probes": {m: method_probe(args.dir, m) for m in sorted({m for p in pairs for m in p})},
              "finals": {m: {s: final_per_problem(run) for s, run in sorted(seeds_of(args.dir, m).items())}
                         for m in sorted({m for p in pairs for m in p})}}  # kept, to pool with later seeds
    for name, r in result["pairs"].items():
        if r["seeds"]:
            print(f"{name}: {len(r['seeds'])} seeds x {r['problems']} problems: final accuracy {r['diff']:+.3f} "
                  f"[{r['diff_ci'][0]:+.3f}, {r['diff_ci'][1]:+.3f}] (half-width {r['diff_halfwidth']:.3f}; seeds alone "
                  f"{r['seeds_only_halfwidth']:.3f}, problems alone {r['problems_only_halfwidth']:.3f}); "
                  f"gradient-variance proxy ratio {r['grad_var_ratio']:.2f}x [{r['grad_var_ratio_ci'][0]:.2f}, "
                  f"{r['grad_var_ratio_ci'][1]:.2f}]")
    for m, q in result["probes"].items():
        if q:
            print(f"{m}: probe over steps using it, mean over {q['seeds']} seeds: " + ", ".join(
                f"{k} {q[k]:.3f} ({q[k + '_range'][0]:.3f}-{q[k + '_range'][1]:.3f})"
                for k in q if k != "seeds" and not k.endswith("_range")))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
