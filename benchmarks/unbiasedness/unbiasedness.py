"""Bias and variance of policy-gradient estimators with different baselines, by Monte Carlo against the exact gradient.

    python benchmarks/unbiasedness/unbiasedness.py --draws 400000 --out results/unbiasedness.json

Policy: for each of P prompts, a categorical pi(y|x) = softmax(theta_x) over K responses, theta ~ N(0, 1); the reward
r(x, y) in {0, 1} is a fixed random table. The exact gradient of J = sum_x sum_y pi(y|x) r(x, y) is known in closed
form: dJ/dtheta_x = pi_x * (r_x - V_x), V_x = pi_x . r_x. Each draw samples G responses per prompt and forms
(1/G) sum_i A_i grad log pi(y_i|x) with A_i from one of these baselines:

    none      A_i = r_i
    rloo      A_i = r_i - mean_{j != i} r_j                       (POISE's warm-up; unbiased)
    dr_grpo   A_i = r_i - mean_j r_j                              (includes i: gradient scaled by (G - 1) / G)
    cross     A_i = r_i - mean_{j != i} g(z_j)                    (POISE; unbiased for any fixed g)
    self      A_i = r_i - g(z_i)                                  (a baseline from the rollout's own features)
    prompt    A_i = r_i - h(x)                                    (poise_single: a probe on the prompt alone; any G)
    batch_loo A_i = r_i - mean of the draw's other P * G - 1 rewards   (reinforce_loo; any G)

The probe g is a fixed function of (x, y) (features are a function of the prompt and the response); three are tried:
    value     g = V_x, the prompt's true value (what POISE's probe is trained to predict)
    noisy     g = V_x + N(0, 0.15^2), fixed per (x, y)
    outcome   g = 0.8 r(x, y) + 0.1, a probe that sees the rollout's own outcome (the case the cross construction
              exists for)
and the prompt probe h, a function of x alone, is that probe's prompt-level counterpart: V_x; V_x + N(0, 0.15^2) fixed
per prompt; 0.8 V_x + 0.1. Group sizes may include 1, where only none, prompt and batch_loo apply.

Reported per (G, probe, estimator): relative bias |E[est] - grad| / |grad|, next to the noise floor (the relative
error an unbiased estimator shows after this many draws, sqrt(trace(Cov) / draws) / |grad|) and the largest
coordinate z-score (bias / standard error; about 3.3 is the largest of P*K = 512 standard normals); the total
variance (trace of the covariance of one draw's estimate) relative to `none`; and that variance times G, the variance
per sampled response, which compares group sizes at an equal number of samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from poise.algo.advantages import poise_advantages, prompt_baseline_advantages, rloo_advantages

P, K = 64, 8


def problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(P, K, generator=g, dtype=torch.float64)
    reward = (torch.rand(P, K, generator=g, dtype=torch.float64) < 0.5).double()
    pi = torch.softmax(theta, -1)
    value = (pi * reward).sum(-1, keepdim=True)
    exact = pi * (reward - value)
    probes = {"value": value.expand(P, K).clone(),
              "noisy": value + 0.15 * torch.randn(P, K, generator=g, dtype=torch.float64),
              "outcome": 0.8 * reward + 0.1}
    prompt_probes = {"value": value.flatten(), "noisy": value.flatten() + 0.15 * torch.randn(P, generator=g,
                                                                                            dtype=torch.float64),
                     "outcome": 0.8 * value.flatten() + 0.1}  # (P,) each: functions of the prompt alone
    return pi, reward, exact, probes, prompt_probes


def advantages(name: str, r: torch.Tensor, g: torch.Tensor, G: int, h: torch.Tensor) -> torch.Tensor:
    """(P, M, G) advantages of one estimator from rewards r and probe values g of the sampled responses, and the
    prompt probe's values h (P,)."""
    flat_r, flat_g = r.reshape(-1, G), g.reshape(-1, G)
    if name == "none":
        return r
    if name == "prompt":
        return prompt_baseline_advantages(r.flatten(), h[:, None, None].expand_as(r).flatten()).view_as(r)
    if name == "batch_loo":  # every draw's P * G rows are one batch
        total = r.sum(dim=(0, 2), keepdim=True)
        return r - (total - r) / (r.shape[0] * G - 1)
    if name == "rloo":
        return rloo_advantages(flat_r).view_as(r)
    if name == "dr_grpo":
        return r - r.mean(-1, keepdim=True)
    if name == "cross":
        return poise_advantages(flat_r, flat_g).view_as(r)
    if name == "self":
        return r - g
    raise ValueError(name)


ESTIMATORS = ("none", "rloo", "dr_grpo", "cross", "self", "prompt", "batch_loo")
GROUP_ONLY = ("rloo", "dr_grpo", "cross")  # need a sibling


def run(G: int, draws: int, seed: int, chunk: int = 20_000) -> list[dict]:
    pi, reward, exact, probes, prompt_probes = problem(seed)
    estimators = [e for e in ESTIMATORS if G > 1 or e not in GROUP_ONLY]
    gen = torch.Generator().manual_seed(seed + 1)
    sums = {(p, e): torch.zeros(P, K, dtype=torch.float64) for p in probes for e in estimators}
    sq = {key: torch.zeros(P, K, dtype=torch.float64) for key in sums}
    done = 0
    while done < draws:
        m = min(chunk, draws - done)
        y = torch.multinomial(pi, m * G, replacement=True, generator=gen).view(P, m, G)
        r = reward.gather(1, y.view(P, -1)).view(P, m, G)
        score = torch.nn.functional.one_hot(y, K).double() - pi[:, None, None, :]  # (P, m, G, K)
        for pname, table in probes.items():
            g = table.gather(1, y.view(P, -1)).view(P, m, G)
            for e in estimators:
                est = (advantages(e, r, g, G, prompt_probes[pname]).unsqueeze(-1) * score).mean(dim=2)  # (P, m, K): one draw's estimate
                sums[(pname, e)] += est.sum(1)
                sq[(pname, e)] += (est ** 2).sum(1)
        done += m
    rows, norm = [], float(exact.norm())
    for (pname, e), s in sums.items():
        mean = s / draws
        var = sq[(pname, e)] / draws - mean ** 2
        se = (var / draws).sqrt().clamp(min=1e-300)
        rows.append({"G": G, "probe": pname, "estimator": e, "rel_bias": float((mean - exact).norm()) / norm,
                     "noise_floor": float(var.sum() / draws) ** 0.5 / norm,  # E|error| of an unbiased estimator
                     "max_z": float(((mean - exact).abs() / se).max()), "total_var": float(var.sum())})
    base = {r["probe"]: r["total_var"] for r in rows if r["estimator"] == "none"}
    for r in rows:
        r["var_vs_none"] = r["total_var"] / base[r["probe"]]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=400_000, help="Monte-Carlo draws per group size")
    ap.add_argument("--group-sizes", default="1,2,4,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/unbiasedness.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = [row for G in map(int, args.group_sizes.split(",")) for row in run(G, args.draws, args.seed)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"draws": args.draws, "P": P, "K": K, "seed": args.seed, "rows": rows,
                                          "seconds": time.perf_counter() - t0}, indent=1))
    print(f"P = {P} prompts, K = {K} responses, {args.draws:,} draws per G ({time.perf_counter() - t0:.0f} s)")
    print("| G | probe | estimator | relative bias | noise floor | max z | variance vs none | variance x G |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['G']} | {r['probe']} | {r['estimator']} | {r['rel_bias']:.4f} | {r['noise_floor']:.4f} | "
              f"{r['max_z']:.1f} | {r['var_vs_none']:.3f} | {r['total_var'] * r['G']:.4f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
