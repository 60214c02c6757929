"""How much any prompt screener could gain: an oracle bound for `screen.mode probe`, from `poise eval` samples.

    python benchmarks/screening/screening_bound.py runs/bound/initial.jsonl [--candidates 2 3 4] [--out results/x.json]

Each eval row holds k independent samples of one problem. They are split in two halves (cross-fitted: each half
ranks, the other half judges, and the two results are averaged), so no sample both picks a problem and scores it:

- the **ranking half** gives each problem a pass-rate estimate p; a screener sees only that (the "oracle", which knows
  p up to k / 2 samples' noise) or only its level's mean p (the "level" screener: what the prompt's length tells);
- the **judging half** gives an unbiased estimate q of the probability that a group of G = 2 rollouts of the problem
  has unequal rewards, 2 c (k' - c) / (k' (k' - 1)) for c correct of k' samples.

For m candidates per kept prompt, pools of m x P problems are drawn at random and P are kept, either by the shipped
rule (`poise.algo.screening_rules.choose`: without replacement, in proportion to p (1 - p) + epsilon) or greedily (the P
largest p (1 - p)); the mean q of the kept problems is the fraction of groups with unequal rewards that screener
would get. The AUROC is that of p (1 - p) for "this group of 2 has unequal rewards", in expectation over the groups'
outcomes: every problem is a positive with weight q and a negative with weight 1 - q, and pairs of a problem with
itself are left out. Intervals are 95% percentile bootstraps over problems.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from poise.algo.screening_rules import screening_weights  # noqa: E402
from poise.commands.evaluate import is_correct  # noqa: E402


def unequal_prob(c: np.ndarray, k: int) -> np.ndarray:
    """(n,) unbiased estimates of P(a group of 2 rollouts has unequal rewards) = 2 p (1 - p) from c (n,) correct of
    k >= 2 samples: 2 c (k - c) / (k (k - 1)), the fraction of the sample pairs that differ."""
    if k < 2:
        raise ValueError(f"need k >= 2 samples per problem to judge a group of 2, got k = {k}")
    c = np.asarray(c, dtype=np.float64)
    return 2.0 * c * (k - c) / (k * (k - 1))


def weighted_auroc(score: np.ndarray, q: np.ndarray) -> float:
    """AUROC of score (n,) for a binary outcome known only in expectation: item i is a positive with probability
    q_i (n,) in [0, 1] and a negative otherwise, items independent. Returns

        sum_{i != j} q_i (1 - q_j) ([s_i > s_j] + [s_i = s_j] / 2) / sum_{i != j} q_i (1 - q_j),

    the expected pairwise AUROC over the outcomes (to first order), in O(n log n). With q in {0, 1} it is the usual
    AUROC of positives against negatives."""
    s, q = np.asarray(score, dtype=np.float64), np.asarray(q, dtype=np.float64)
    neg = 1.0 - q
    order = np.argsort(s, kind="stable")
    s_sorted, neg_sorted = s[order], neg[order]
    cum = np.concatenate([[0.0], np.cumsum(neg_sorted)])
    lo = np.searchsorted(s_sorted, s, side="left")  # negatives' weight strictly below each score: cum[lo]
    hi = np.searchsorted(s_sorted, s, side="right")
    below, tied = cum[lo], cum[hi] - cum[lo]
    tied = tied - neg  # leave out the pair of i with itself (always a tie)
    num = float(np.sum(q * (below + 0.5 * tied)))
    den = float(q.sum() * neg.sum() - np.sum(q * neg))
    return num / den if den > 0 else float("nan")


def kept_unequal(p: np.ndarray, q: np.ndarray, m: int, prompts: int, rule: str, epsilon: float,
                 rng: np.random.Generator, pools: int, power: float = 1.0) -> float:
    """Mean q (n,) of the prompts a screener keeps: `pools` times, draw m x `prompts` of the n problems without
    replacement, keep `prompts` of them by `rule` on the pass rates p (n,) it sees ('shipped': without replacement
    with probabilities proportional to `poise.algo.screening_rules.screening_weights(p, epsilon, power)` through Gumbel
    top-k, the distribution of `screen.power`'s rule; 'greedy': the largest p (1 - p), ties broken at random; m = 1 keeps the pool),
    and average q over everything kept."""
    n = len(p)
    if m * prompts > n:
        raise ValueError(f"a pool of {m} x {prompts} candidates needs that many problems, got {n}")
    w = screening_weights(torch.from_numpy(np.asarray(p, dtype=np.float64)), 0.0, power).numpy()  # epsilon below
    total = 0.0
    for _ in range(pools):
        pool = rng.choice(n, size=m * prompts, replace=False)
        if rule == "shipped":
            key = np.log(w[pool] + epsilon) + rng.gumbel(size=len(pool))
        elif rule == "greedy":
            key = w[pool] + 1e-12 * rng.random(len(pool))
        else:
            raise ValueError(f"rule must be 'shipped' or 'greedy', got {rule!r}")
        total += q[pool[np.argsort(-key)[:prompts]]].mean()
    return total / pools


def halves(rows: list[dict]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The two cross-fitted splits of per-problem eval rows: [(p_rank (n,), p_level (n,), q_judge (n,))] with the
    first half of each row's samples ranking and the second judging, then the other way round. p_level is the mean
    of p_rank over the row's level."""
    scores = np.array([[is_correct(s) for s in r["scores"]] for r in rows], dtype=np.float64)
    k = scores.shape[1]
    if k < 4:
        raise ValueError(f"need k >= 4 samples per problem (two halves of at least 2), got k = {k}")
    levels = np.array([r["level"] for r in rows])
    a, b = scores[:, : k // 2], scores[:, k // 2:]
    out = []
    for rank, judge in ((a, b), (b, a)):
        p = rank.mean(axis=1)
        p_level = np.empty_like(p)
        for lv in np.unique(levels):
            p_level[levels == lv] = p[levels == lv].mean()
        out.append((p, p_level, unequal_prob(judge.sum(axis=1), judge.shape[1])))
    return out


def bound(rows: list[dict], candidates: list[int], prompts: int, epsilon: float, pools: int, seed: int,
          power: float = 1.0) -> dict:
    """{'unequal': random choice's unequal fraction, 'auroc': {screener: AUROC}, 'kept': {screener: {rule: {m: mean
    q}}}} averaged over the two cross-fitted splits, for the 'oracle' and 'level' screeners."""
    rng = np.random.default_rng(seed)
    splits = halves(rows)
    out = {"unequal": float(np.mean([q.mean() for _, _, q in splits])), "auroc": {}, "kept": {}}
    for name, i in (("oracle", 0), ("level", 1)):
        out["auroc"][name] = float(np.mean([weighted_auroc(s[i] * (1 - s[i]), s[2]) for s in splits]))
        out["kept"][name] = {rule: {m: float(np.mean([kept_unequal(s[i], s[2], m, prompts, rule, epsilon, rng, pools,
                                                                   power)
                                                      for s in splits])) for m in candidates}
                             for rule in ("shipped", "greedy")}
    return out


def flat(b: dict) -> dict:
    """The figures of one `bound` result as {name: value}, for the bootstrap."""
    out = {"unequal": b["unequal"]}
    out.update({f"auroc/{k}": v for k, v in b["auroc"].items()})
    for s, rules in b["kept"].items():
        for rule, ms in rules.items():
            out.update({f"kept/{s}/{rule}/{m}": v for m, v in ms.items()})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evals", nargs="+", help="per-problem `poise eval` JSON Lines (k >= 4)")
    ap.add_argument("--candidates", type=int, nargs="+", default=[2, 3, 4], help="m: candidates per kept prompt")
    ap.add_argument("--prompts", type=int, default=64, help="P: prompts kept per step (the default config's)")
    ap.add_argument("--epsilon", type=float, default=0.05, help="the shipped rule's floor (screen.epsilon)")
    ap.add_argument("--power", type=float, default=1.0,
                    help="a sharper rule to try: weights (4 p (1 - p))^power / 4 + epsilon; 1 is the shipped rule")
    ap.add_argument("--pools", type=int, default=200, help="pools drawn per estimate")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates over problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args(argv)
    results = {}
    for path in args.evals:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        point = flat(bound(rows, args.candidates, args.prompts, args.epsilon, args.pools, args.seed, args.power))
        reps = defaultdict(list)
        rng = np.random.default_rng(args.seed + 1)
        for b in range(args.bootstrap):
            sample = [rows[i] for i in rng.integers(0, len(rows), len(rows))]
            for key, v in flat(bound(sample, args.candidates, args.prompts, args.epsilon, max(20, args.pools // 10),
                                     args.seed + 2 + b, args.power)).items():
                reps[key].append(v)
            print(f"\r{path}: bootstrap {b + 1}/{args.bootstrap}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        ci = {key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for key, v in reps.items()}
        results[path] = {"problems": len(rows), "k": len(rows[0]["scores"]), "point": point, "ci": ci}
        print(f"{path}: {len(rows)} problems, k = {len(rows[0]['scores'])}; random choice: unequal "
              f"{point['unequal']:.3f} [{ci['unequal'][0]:.3f}, {ci['unequal'][1]:.3f}]")
        for s in ("oracle", "level"):
            a = point[f"auroc/{s}"]
            lo, hi = ci[f"auroc/{s}"]
            kept = ", ".join(f"m={m} {rule} {point[f'kept/{s}/{rule}/{m}']:.3f}" for rule in ("shipped", "greedy")
                             for m in args.candidates)
            print(f"  {s:6s}: AUROC {a:.3f} [{lo:.3f}, {hi:.3f}]; kept unequal: {kept}")
    out = {"args": vars(args), "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
