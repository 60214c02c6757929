"""Would a fused baseline help POISE at G >= 2? From a `poise probe-eval` JSON's per-prompt predictions: the sibling's
full-probe prediction f (POISE's baseline at G = 2: the probe fitted on cross-rollout targets, reading the other
response), the prompt-only probe's g(x) at each layer, and their fusion b = a + w_f f + w_g g, scored against the
held-out prompts' Avg@k.

    python benchmarks/value_estimation/fused_baseline.py results/probe_real/smollm2_135m_t2d1_t4d1.json \
        --out results/probe_real/smollm2_135m_t2d1_t4d1_fused.json

Both f and g are independent of a row's own response, so any fixed weighting of them keeps the gradient unbiased,
and a baseline b's advantage variance is Var(r | x) + E (b - V)^2: the better baseline is the one with the smaller
squared error against V(x). Here every estimator is a least-squares fit of the target on its columns ([1] for the
constant, [1, f], [1, g], [1, f, g]), cross-fitted over `--folds` folds of the held-out prompts (each prompt is
predicted by weights fitted on the other folds), so the fusion does not win by calibration alone or by seeing its own
targets. Reported per estimator: MSE against the target, and MSE minus the target's sampling noise (an unbiased
estimate of mean t(1 - t) / (k - 1), k = the samples behind each target), which estimates E (b - V)^2, and the
advantage variance it implies, mean Var(r | x) + E (b - V)^2 (mean Var(r | x) = mean V (1 - V) estimated by
mean t (1 - t) k / (k - 1)), relative to the sibling baseline's; per prompt layer, the paired difference of squared
errors fused - sibling and fused - prompt, with bootstrap intervals over prompts (the noise of the fold fits is not
resampled); and the weights fitted on all prompts. RLOO's baseline at
G = 2, the sibling's own reward, is listed for scale: its E (b - V)^2 is Var(r | x) itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from poise.algo.probe import ridge_fit
from poise.algo.stats import paired_difference

SIBLING = "probe"  # probe-eval's full probe with cross-rollout targets
PROMPT = "prompt_probe/"  # probe-eval's prompt-only probes, one key per layer


def least_squares(columns: list[np.ndarray], target: np.ndarray) -> np.ndarray:
    """(1 + C,) weights [a, w_1 .. w_C] minimising sum_n (t_n - a - sum_c w_c x_cn)^2 over N prompts; columns: C
    arrays (N,), target (N,). `poise.algo.probe.ridge_fit` at alpha 0 (with no columns, a is the mean target)."""
    X = torch.from_numpy(np.stack(columns, axis=1) if columns else np.zeros((len(target), 0)))  # (N, C)
    w, a = ridge_fit(X, torch.from_numpy(target), 0.0)
    return np.concatenate([[float(a)], w.numpy()])


def cross_fitted(columns: list[np.ndarray], target: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """(N,) out-of-fold predictions: the prompts are split at random into `folds` folds, and each fold is predicted
    by `least_squares` fitted on the others."""
    n = len(target)
    fold = np.random.default_rng(seed).permutation(n) % folds  # (N,) each prompt's fold
    out = np.empty(n)
    for k in range(folds):
        test = fold == k
        w = least_squares([c[~test] for c in columns], target[~test])
        out[test] = w[0] + sum(wc * c[test] for wc, c in zip(w[1:], columns))
    return out


def fused_study(res: dict, folds: int = 10) -> dict:
    """From res['per_prompt'] and res['samples'] (a probe-eval result) -> {'n', 'samples', 'folds', 'noise',
    'reward_variance', 'estimators': {name: {'mse', 'excess_mse', 'advantage_variance_vs_sibling'}}, 'layers': {layer:
    {'fused_minus_sibling', 'fused_minus_prompt' (stats.paired_difference of squared errors), 'weights' [a, w_f,
    w_g]}}}."""
    pp = res["per_prompt"]
    t = np.asarray(pp["target"], dtype=np.float64)
    k = int(res["samples"])
    noise = float((t * (1 - t) / (k - 1)).mean())  # unbiased for mean Var(Avg@k | x) = mean V (1 - V) / k
    reward_var = noise * k  # unbiased for mean Var(r | x) = mean V (1 - V)
    preds = {name: np.asarray(v, dtype=np.float64) for name, v in pp["predictions"].items()}
    if SIBLING not in preds or not any(n.startswith(PROMPT) for n in preds):
        raise SystemExit(f"needs the predictions '{SIBLING}' and '{PROMPT}<layer>'; found {sorted(preds)}")
    f = preds[SIBLING]
    sq = {"constant": (cross_fitted([], t, folds) - t) ** 2, "sibling": (cross_fitted([f], t, folds) - t) ** 2}
    layers = {}
    for name in sorted((n for n in preds if n.startswith(PROMPT)), key=lambda n: int(n[len(PROMPT):])):
        layer, g = name[len(PROMPT):], preds[name]
        sq[f"prompt@{layer}"] = (cross_fitted([g], t, folds) - t) ** 2
        sq[f"fused@{layer}"] = (cross_fitted([f, g], t, folds) - t) ** 2
        layers[layer] = {"fused_minus_sibling": paired_difference(sq["sibling"], sq[f"fused@{layer}"]),
                         "fused_minus_prompt": paired_difference(sq[f"prompt@{layer}"], sq[f"fused@{layer}"]),
                         "weights": least_squares([f, g], t).tolist()}
    excess = {name: float(e.mean()) - noise for name, e in sq.items()}
    excess["sibling reward (RLOO)"] = reward_var  # b = r_j, independent of r_i given x: E (r_j - V)^2 = Var(r | x)
    estimators = {name: {"mse": noise + x, "excess_mse": x,
                         "advantage_variance_vs_sibling": (reward_var + x) / (reward_var + excess["sibling"])}
                  for name, x in excess.items()}
    return {"n": len(t), "samples": k, "folds": folds, "noise": noise, "reward_variance": reward_var,
            "estimators": estimators, "layers": layers}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path, help="a poise probe-eval JSON (with per_prompt)")
    ap.add_argument("--folds", type=int, default=10, help="cross-fitting folds over the held-out prompts")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    res = fused_study(json.loads(args.result.read_text()), args.folds)
    print(f"{res['n']} held-out prompts, Avg@{res['samples']} targets, sampling noise {res['noise']:.4f}, "
          f"mean Var(r | x) {res['reward_variance']:.4f}")
    for name, e in res["estimators"].items():
        print(f"  {name}: MSE {e['mse']:.4f}, minus noise {e['excess_mse']:.4f}, advantage variance "
              f"{e['advantage_variance_vs_sibling']:.3f}x the sibling baseline's")
    for layer, d in res["layers"].items():
        fs, fp = d["fused_minus_sibling"], d["fused_minus_prompt"]
        print(f"  layer {layer}: fused - sibling {fs['mean']:+.4f} [{fs['lo']:+.4f}, {fs['hi']:+.4f}], fused - prompt "
              f"{fp['mean']:+.4f} [{fp['lo']:+.4f}, {fp['hi']:+.4f}]; weights a, w_f, w_g "
              + ", ".join(f"{w:.3f}" for w in d["weights"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"result": str(args.result), **res}, indent=1))
    return res


if __name__ == "__main__":
    main()
