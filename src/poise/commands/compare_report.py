"""The statistics, report and plots of `poise compare` (the runs and their evaluation are in `compare.py`).

Data: for method m, seeds s = 1..S_m and checkpoints c = 1..C_m (aligned by index; a seed with fewer checkpoints is
padded with its last one, the accuracy it stopped with at the cost it stopped at), per-problem held-out accuracies
A_m[s, c, n] on the same N problems for every run, and cumulative costs X_m[s, c] in generated tokens, training
seconds and estimated FLOPs. The initial model's per-problem accuracies a0[n] are the point at cost 0 of every
curve. Seed-mean curve: y_m[c] = mean_s,n A_m[s, c, n], x_m[c] = mean_s X_m[s, c].

Target: the reference method's final seed-mean accuracy y_ref[C] when it is among the methods (the reference is
DAPO unless `reference` names another: the question "does POISE reach DAPO's final accuracy at less cost?");
otherwise the best seed-mean accuracy every method reaches, min_m max(mean a0, max_c y_m[c]).

Cost to target: where the seed-mean curve first reaches the target, linearly interpolated between the checkpoint
below it and the first one at or above it (`first_crossing`); 0 when the initial model is already there, inf
("not reached") when the curve never gets there.

Intervals (95%, percentile bootstrap, `poise.algo.stats`): each replicate resamples every method's seeds and the N
problems, one problem draw shared by every method, checkpoint and the initial model so the design stays paired, and
recomputes the curves, the target, every cost to target and the cost ratios to the reference. A replicate in which a
method never reaches the target counts inf; a ratio that is 0/0 or inf/inf in a replicate is left out of its
interval (`undefined_replicates` counts them).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from poise.algo.stats import bootstrap_mean_ci, hierarchical_means, percentile_interval, resample_weights

LEVEL = 0.95
COSTS = {"generated_tokens": "tokens", "seconds": "seconds", "flops": "flops"}  # point key -> summary name


def first_crossing(x, y, target) -> np.ndarray:
    """Cost at which the curve y(x) first reaches `target`, linear between checkpoints.

    x, y: (..., K) costs and accuracies in training order (x[..., 0] the initial point); target: scalar or (...).
    With i the first index where y_i >= target (1e-12 tolerance): x_0 if i = 0, otherwise
        x_{i-1} + (target - y_{i-1}) / (y_i - y_{i-1}) * (x_i - x_{i-1});
    inf where no y_i reaches the target. Returns shape (...)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    t = np.broadcast_to(np.asarray(target, float), y.shape[:-1])[..., None]
    hit = y >= t - 1e-12
    i = hit.argmax(-1)[..., None]
    j = np.maximum(i - 1, 0)
    y0, y1 = np.take_along_axis(y, j, -1), np.take_along_axis(y, i, -1)
    x0, x1 = np.take_along_axis(x, j, -1), np.take_along_axis(x, i, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(i == 0, 1.0, np.clip((t - y0) / (y1 - y0), 0.0, 1.0))
    cost = (x0 + frac * (x1 - x0))[..., 0]
    return np.where(hit.any(-1), cost, np.inf)


def method_arrays(by_seed: dict, n_problems: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(A (S, C, N) per-problem accuracies, {cost key: X (S, C)}) of one method's runs, shorter seeds padded with
    their last checkpoint. ValueError when a run has no checkpoint or was evaluated on other problems."""
    for s, pts in by_seed.items():
        if not pts:
            raise ValueError(f"seed {s} has no evaluated checkpoint")
        if any(len(p["per_problem"]) != n_problems for p in pts):
            raise ValueError(f"seed {s} was evaluated on other problems than the initial model ({n_problems})")
    c = max(len(pts) for pts in by_seed.values())
    padded = [pts + [pts[-1]] * (c - len(pts)) for pts in by_seed.values()]
    acc = np.array([[p["per_problem"] for p in pts] for pts in padded], dtype=float)
    return acc, {k: np.array([[p[k] for p in pts] for pts in padded], dtype=float) for k in COSTS}


def replicate(arrays: dict, a0: np.ndarray, seed_w: dict, prob_w: np.ndarray, reference: str = "dapo") -> dict:
    """Every statistic of the comparison under one set of resampling weights (B rows; uniform weights, B = 1, give
    the point estimates): initial (B,), target (B,), and per method curve (B, C+1), x {cost: (B, C+1)}, final (B,),
    cost {cost: (B,)}. The target is the `reference` method's final accuracy when it ran."""
    init = prob_w @ a0
    out: dict = {"initial": init, "methods": {}}
    for m, (acc, costs) in arrays.items():
        y = np.concatenate([init[:, None], hierarchical_means(acc, seed_w[m], prob_w)], axis=1)
        x = {k: np.concatenate([np.zeros((len(init), 1)), seed_w[m] @ v], axis=1) for k, v in costs.items()}
        out["methods"][m] = {"curve": y, "x": x, "final": y[:, -1]}
    ms = out["methods"]
    out["target"] = ms[reference]["final"] if reference in ms else np.min([r["curve"].max(1) for r in ms.values()], 0)
    for r in ms.values():
        r["cost"] = {k: first_crossing(r["x"][k], r["curve"], out["target"]) for k in COSTS}
    return out


def _ci(reps) -> list:
    return [_finite(v) for v in percentile_interval(reps, LEVEL)]


def _finite(v: float):
    """JSON-safe number: inf ('not reached') and NaN ('undefined') become None."""
    return float(v) if math.isfinite(v) else None


def summarise(curves: dict[str, dict[int, list[dict]]], initial: list[float], n_boot: int = 2000,
              seed: int = 0, reference: str = "dapo") -> dict:
    """Final accuracy, target and cost to target (tokens, seconds, FLOPs) per method, each with its 95% bootstrap
    interval, every other method's cost ratios to the `reference` method when it ran (`over_reference`; with DAPO
    also `over_dapo` and `poise_over_dapo`), and each method's seed-mean curve with its band.

    curves[method][seed]: points in training order with "per_problem" (N accuracies), "generated_tokens", "seconds"
    and "flops"; initial: the initial model's N per-problem accuracies. Intervals are [lo, hi] lists; None in a
    cost or its bound means not reached (inf)."""
    a0 = np.asarray(initial, dtype=float)
    arrays = {m: method_arrays(by_seed, len(a0)) for m, by_seed in curves.items()}
    point = replicate(arrays, a0, {m: np.full((1, a.shape[0]), 1 / a.shape[0]) for m, (a, _) in arrays.items()},
                      np.full((1, len(a0)), 1 / len(a0)), reference)
    rng = np.random.default_rng(seed)
    prob_w = resample_weights(rng, len(a0), n_boot)  # shared by every method and checkpoint: the design stays paired
    boot = replicate(arrays, a0, {m: resample_weights(rng, a.shape[0], n_boot) for m, (a, _) in arrays.items()},
                     prob_w, reference)
    target = float(point["target"][0])
    out: dict = {"initial_accuracy": float(point["initial"][0]), "initial_accuracy_ci": _ci(boot["initial"]),
                 "reference": reference, "target_rule": (("dapo_final" if reference == "dapo" else "reference_final")
                                                         if reference in curves else "best_every_method_reaches"),
                 "target_accuracy": target, "target_accuracy_ci": _ci(boot["target"]),
                 "bootstrap": {"replicates": n_boot, "seed": seed, "level": LEVEL, "problems": len(a0)},
                 "methods": {}}
    for m, by_seed in curves.items():
        p, b = point["methods"][m], boot["methods"][m]
        finals = [float(pts[-1]["accuracy"]) for pts in by_seed.values()]
        per_seed = {k: [_finite(first_crossing([0.0] + [q[k] for q in pts],
                                               [out["initial_accuracy"]] + [q["accuracy"] for q in pts], target))
                        for pts in by_seed.values()] for k in COSTS}
        row = {"final_accuracy_mean": float(p["final"][0]), "final_accuracy_ci": _ci(b["final"]),
               "final_accuracy_min": min(finals), "final_accuracy_max": max(finals), "final_accuracies": finals,
               **{f"final_{name}_mean": statistics.mean(pts[-1][k] for pts in by_seed.values())
                  for k, name in COSTS.items()},
               "best_seed_mean_accuracy": float(p["curve"].max()), "seeds": len(by_seed),
               "seeds_reaching_target": sum(v is not None for v in per_seed["generated_tokens"]),
               "replicates_reaching_target": float(np.isfinite(b["cost"]["generated_tokens"]).mean())}
        for k, name in COSTS.items():
            row[f"{name}_to_target"] = _finite(p["cost"][k][0])
            row[f"{name}_to_target_ci"] = _ci(b["cost"][k])
            row[f"{name}_to_target_per_seed"] = per_seed[k]
        band = np.array([percentile_interval(b["curve"][:, i], LEVEL) for i in range(b["curve"].shape[1])])
        row["curve"] = {**{k: p["x"][k][0].tolist() for k in COSTS}, "accuracy": p["curve"][0].tolist(),
                        "lo": band[:, 0].tolist(), "hi": band[:, 1].tolist()}
        out["methods"][m] = row
    for m in curves:  # final accuracy minus every other method's, paired: one seed and problem draw per replicate
        out["methods"][m]["final_minus"] = {
            o: [float(point["methods"][m]["final"][0] - point["methods"][o]["final"][0]),
                *_ci(boot["methods"][m]["final"] - boot["methods"][o]["final"])] for o in curves if o != m}
    if reference in curves:  # every other method's cost over the reference's, per replicate
        out["over_reference"] = {m: _cost_ratios(point, boot, m, reference, n_boot) for m in curves if m != reference}
        if reference == "dapo":  # the names earlier results were written with
            out["over_dapo"] = out["over_reference"]
            if "poise" in curves:
                out["poise_over_dapo"] = out["over_dapo"]["poise"]
    return out


def _cost_ratios(point: dict, boot: dict, num_m: str, den_m: str, n_boot: int) -> dict:
    """num_m's cost to target over den_m's, for each cost: the point ratio and its interval over the replicates (a
    0/0 or inf/inf replicate is undefined and left out; their count is kept)."""
    out: dict = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, name in COSTS.items():
            num, den = (point["methods"][m]["cost"][k][0] for m in (num_m, den_m))
            reps = boot["methods"][num_m]["cost"][k] / boot["methods"][den_m]["cost"][k]
            undefined = int(np.isnan(reps).sum())
            out.update({name: _finite(np.divide(num, den)),
                        f"{name}_ci": _ci(reps) if undefined < n_boot else [None, None],
                        f"{name}_undefined_replicates": undefined})
    return out


# =====================================================================================================================
# Report and plots
# =====================================================================================================================


def _fmt(v, kind: str) -> str:
    """A number of `kind` for the report; None is "not reached" (a ratio's None bound: "inf")."""
    if v is None:
        return "inf" if kind == "bound" else "not reached"
    return {"tokens": f"{v:,.0f}", "seconds": f"{v:.0f}", "flops": f"{v:.3g}", "acc": f"{v:.3f}",
            "ratio": f"{v:.2f}x", "bound": f"{v:.2f}"}[kind]


def _with_ci(v, ci, kind: str) -> str:
    """'value [lo, hi]' (a ratio's bounds without the x)."""
    b = "bound" if kind == "ratio" else kind
    return f"{_fmt(v, kind)} [{_fmt(ci[0], b)}, {_fmt(ci[1], b)}]"


def _display(method: str) -> str:
    """A method's name in the report's sentences: POISE and DAPO capitalised, presets and other methods as given."""
    return {"dapo": "DAPO", "poise": "POISE"}.get(method, method)


def report(summary: dict, cfg) -> str:
    """The Markdown report: one row per method (final accuracy, cost at the stop, cost to the target, each interval
    in brackets), then the cost ratios to the reference method (DAPO unless the config names another)."""
    s, boot = summary, summary["bootstrap"]
    ref = s.get("reference", "dapo")
    ref_name = _display(ref)
    rule = (f"{ref_name}'s final seed-mean accuracy" if s["target_rule"] != "best_every_method_reaches"
            else "the best seed-mean accuracy every method reaches")
    t = _with_ci(s["target_accuracy"], s["target_accuracy_ci"], "acc")
    lines = [f"# poise compare: {', '.join(cfg.methods)} x seeds {cfg.seeds}", "",
             f"Budget: {cfg.budget_key} = {cfg.budget:,.0f} per run"
             + (f" ({ref_name}'s runs: {cfg.reference_budget:,.0f})" if getattr(cfg, "reference_budget", 0) else "")
             + f". Held-out Avg@{cfg.eval_k} on "
             f"{boot['problems']} problems; initial model "
             f"{_with_ci(s['initial_accuracy'], s['initial_accuracy_ci'], 'acc')}. Overrides: "
             f"{cfg.overrides or 'none'}.", "",
             f"Target: {t}, {rule}. Cost to it: where the seed-mean curve first reaches it, interpolated between "
             f"checkpoints. Intervals: {boot['level']:.0%} percentile bootstrap, {boot['replicates']} replicates "
             f"resampling each method's seeds and the {boot['problems']} problems (one problem draw shared by every "
             "method and checkpoint). FLOPs: 2N per forward token, 4N per backward token"
             + (f", N = {s['policy_params']:,} policy parameters" if "policy_params" in s else "")
             + " (a critic counted as policy-sized).", "",
             "| method | final Avg@k [95% CI] | seed min–max | tokens at stop | seconds at stop | FLOPs at stop | "
             "tokens to target [95% CI] | seconds to target [95% CI] | FLOPs to target [95% CI] | seeds reaching |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, m in s["methods"].items():
        costs = " | ".join(_with_ci(m[f"{n}_to_target"], m[f"{n}_to_target_ci"], n) for n in COSTS.values())
        lines.append(f"| {method} | {_with_ci(m['final_accuracy_mean'], m['final_accuracy_ci'], 'acc')} | "
                     f"{m['final_accuracy_min']:.3f}–{m['final_accuracy_max']:.3f} | "
                     f"{_fmt(m['final_tokens_mean'], 'tokens')} | {_fmt(m['final_seconds_mean'], 'seconds')} | "
                     f"{_fmt(m['final_flops_mean'], 'flops')} | {costs} | {m['seeds_reaching_target']}/{m['seeds']} |")
    diffs = [f"{m} {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" for m, m_ in s["methods"].items()
             for d in [m_["final_minus"].get(ref)] if d is not None]
    if diffs:
        lines += ["", f"Final accuracy minus {ref_name}'s (paired over problems, {boot['level']:.0%} interval): "
                      + ", ".join(diffs) + "."]
    for method, r in s.get("over_reference", s.get("over_dapo", {})).items():
        reaches = s["methods"][method]["tokens_to_target"] is not None
        parts = [(_with_ci(r[n], r[f"{n}_ci"], "ratio") if r[n] is not None or not reaches
                  else f"undefined (both costs 0) [{_fmt(r[f'{n}_ci'][0], 'bound')}, {_fmt(r[f'{n}_ci'][1], 'bound')}]")
                 + f" {label}" for n, label in
                 (("tokens", "generated tokens"), ("seconds", "wall time"), ("flops", "FLOPs"))]
        undefined = max(r[f"{n}_undefined_replicates"] for n in COSTS.values())
        note = f" ({undefined} replicates with an undefined ratio left out)" if undefined else ""
        lines += ["", f"{_display(method)} / {ref_name} cost to reach {s['target_accuracy']:.3f}: "
                      f"{', '.join(parts)}{note}."]
    return "\n".join(lines) + "\n"


def reward_bands(rewards: dict, n_boot: int, seed: int) -> dict:
    """Per method, the seed-mean training-reward curve with a bootstrap band over seeds: {"generated_tokens",
    "reward", "lo", "hi"} lists, aligned by index and cut to the shortest seed."""
    out = {}
    for method, by_seed in rewards.items():
        n = min(len(p) for p in by_seed.values())
        rows = [bootstrap_mean_ci([p[i]["reward"] for p in by_seed.values()], LEVEL, n_boot, seed) for i in range(n)]
        out[method] = {"generated_tokens": [statistics.mean(p[i]["generated_tokens"] for p in by_seed.values())
                                            for i in range(n)],
                       "reward": [r[0] for r in rows], "lo": [r[1] for r in rows], "hi": [r[2] for r in rows]}
    return out


def plot(summary: dict, rewards: dict, out: Path) -> None:
    """Held-out accuracy against tokens, time and FLOPs (seed-mean curve from the initial model on, shaded 95%
    bootstrap band), and training reward against tokens (seed mean, band over seeds; `reward_bands` output)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(series: dict, xkey: str, ykey: str, xlabel: str, ylabel: str, name: str):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, c in series.items():
            ax.plot(c[xkey], c[ykey], label=method)
            ax.fill_between(c[xkey], c["lo"], c["hi"], alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    curves = {m: r["curve"] for m, r in summary["methods"].items()}
    label = "held-out Avg@k (95% bootstrap band)"
    draw(curves, "generated_tokens", "accuracy", "generated tokens", label, "accuracy_vs_tokens.png")
    draw(curves, "seconds", "accuracy", "training seconds", label, "accuracy_vs_time.png")
    draw(curves, "flops", "accuracy", "estimated training FLOPs", label, "accuracy_vs_flops.png")
    draw(rewards, "generated_tokens", "reward", "generated tokens", "training reward (10-step mean)",
         "reward_vs_tokens.png")
