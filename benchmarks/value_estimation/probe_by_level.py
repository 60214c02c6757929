"""How much of a probe's skill is the level alone? From a `poise probe-eval` JSON's per-prompt predictions: every
estimator's MAE, Pearson r and AUROC within each level, with bootstrap intervals over that level's prompts, beside
the same over all prompts and a "level mean" estimator (each prompt predicted by its level's mean target, an oracle
that knows the held-out levels' pass rates: the most the level alone can give).

    python benchmarks/value_estimation/probe_by_level.py results/probe_real/smollm2_135m_t2d1_t4d1.json \
        --out results/probe_real/smollm2_135m_t2d1_t4d1_by_level.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from poise.commands.probe_eval import BOOT, value_metrics


def by_level(res: dict, n_boot: int = BOOT) -> dict:
    """{'all' | level: {estimator: value_metrics}} from res['per_prompt'] (a probe-eval result)."""
    pp = res["per_prompt"]
    target = torch.tensor(pp["target"], dtype=torch.float64)
    solved = torch.tensor(pp["solved"], dtype=torch.bool)
    levels = pp["level"]
    level_mean = torch.tensor([float(target[[i for i, x in enumerate(levels) if x == lv]].mean()) for lv in levels])
    preds = {k: torch.tensor(v, dtype=torch.float64) for k, v in pp["predictions"].items()}
    preds["level mean (oracle)"] = level_mean
    train_mean = res["train_mean_reward"]
    out = {"all": {k: value_metrics(p, target, solved, train_mean, n_boot) for k, p in preds.items()}}
    for lv in sorted(set(levels)):
        idx = torch.tensor([x == lv for x in levels])
        out[lv] = {k: value_metrics(p[idx], target[idx], solved[idx], train_mean, n_boot)
                   for k, p in preds.items() if k != "level mean (oracle)"}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path, help="a poise probe-eval JSON (with per_prompt)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    res = by_level(json.loads(args.result.read_text()))
    for part, ests in res.items():
        n = next(iter(ests.values()))["n"]
        print(f"{part} ({n} prompts):")
        for k, m in ests.items():
            print(f"  {k}: r {m['pearson']:.3f} {_ci(m, 'pearson')}, AUROC {m['auroc_solved']:.3f} "
                  f"{_ci(m, 'auroc_solved')}, MAE {m['mae']:.3f}, target mean {m['target_mean']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"result": str(args.result), "by_level": res}, indent=1))
    return res


def _ci(m: dict, k: str) -> str:
    lo, hi = m.get(f"{k}_ci", [float("nan")] * 2)
    return f"[{lo:.3f}, {hi:.3f}]"


if __name__ == "__main__":
    main()
