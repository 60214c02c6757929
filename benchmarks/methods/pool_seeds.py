"""The final-accuracy difference of two methods pooled over the seeds of several `poise compare` outputs (for
example two draws of seeds run on different machines, whose per-run directories are gone): each compare.json's
`summary.methods.<m>.final_accuracies` are concatenated per method, and the difference of the seed means,
    mean(final[b]) - mean(final[a]),
gets a 95% percentile interval from a bootstrap that resamples each method's pooled seeds. The held-out problems are
not resampled (compare.json keeps no per-problem values), so the interval is narrower than `poise compare`'s.

    python benchmarks/methods/pool_seeds.py results/compare_half/vs_poise10.json \
        results/compare_half_dapo3x/vs_poise10.json --a poise --b screening/poise_probe4
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def pooled_difference(files: list[str], a: str, b: str, n_boot: int = 10000, seed: int = 0) -> dict:
    """{"a", "b" (pooled final accuracies), "diff" (mean b - mean a), "ci" (95% seed-bootstrap interval)}."""
    finals = {a: [], b: []}
    for f in files:
        methods = json.loads(open(f).read())["summary"]["methods"]
        for m in finals:
            finals[m] += methods[m]["final_accuracies"]
    xa, xb = np.array(finals[a]), np.array(finals[b])
    rng = np.random.default_rng(seed)
    boot = [rng.choice(xb, len(xb)).mean() - rng.choice(xa, len(xa)).mean() for _ in range(n_boot)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"a": finals[a], "b": finals[b], "diff": float(xb.mean() - xa.mean()), "ci": [float(lo), float(hi)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="compare.json files")
    ap.add_argument("--a", required=True, help="the baseline method")
    ap.add_argument("--b", required=True, help="the method whose difference from --a is reported")
    ap.add_argument("--boot", type=int, default=10000)
    x = ap.parse_args()
    r = pooled_difference(x.files, x.a, x.b, x.boot)
    print(f"{x.b} - {x.a} over {len(r['b'])} and {len(r['a'])} seeds: {r['diff']:+.3f} "
          f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] (95% seed bootstrap; problems not resampled)")


if __name__ == "__main__":
    main()
