"""How well any linear probe on the prompt states can rank prompts for screening: per decoder layer and pooling,
offline, against the oracle and level screeners of `screening_bound.py`.

    python benchmarks/screening/prompt_probe_auroc.py runs/bound/initial.jsonl --model default [--out results/x.json]

The eval file's problems are rebuilt from the default chain_sum task (`poise eval --split train --num_problems N`,
seed 0, which is what `screening_bound.py`'s commands use) and prefilled once by the model, capturing each layer's
output. For every layer, two poolings (the last 10 prompt-token states, as `probe.k`, and the mean over the prompt)
and all layers' last-10 states side by side, a ridge probe on standardised features predicts the ranking half's
pass rate p with 5-fold cross-fitting (each problem's prediction comes from a fit that did not see it). Its AUROC is
that of the predicted p (1 - p) for the judging half's unequal G = 2 groups, as in `screening_bound.py`, averaged over
the two halves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
import screening_bound as sb  # noqa: E402
from poise.algo.features import last_k_mean  # noqa: E402
from poise.algo.probe import ridge_fit  # noqa: E402


def cross_fitted(X: np.ndarray, y: np.ndarray, alpha: float, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(n,) ridge predictions of y (n,) from X (n, F), each from a fit on the other folds only: the features are
    standardised with the training folds' mean and std, then `poise.algo.probe.ridge_fit` (intercept unpenalised)."""
    n = len(y)
    idx = np.random.default_rng(seed).permutation(n)
    pred = np.empty(n)
    for f in range(folds):
        test = idx[f::folds]
        train = np.setdiff1d(idx, test)
        mu, sd = X[train].mean(0), X[train].std(0) + 1e-8
        w, b = ridge_fit(torch.from_numpy((X[train] - mu) / sd), torch.from_numpy(y[train]), alpha)
        pred[test] = ((X[test] - mu) / sd) @ w.numpy() + float(b)
    return pred


def prompt_features(model, tokenizer, problems: list, k: int = 10, batch: int = 250) -> dict[str, np.ndarray]:
    """{'L{layer} last{k}' and 'L{layer} mean': (P, H) float64} over every decoder layer, and 'all layers last{k}'
    (P, layers x H), from one `prompt_states` prefill per batch with every layer's output captured."""
    from contextlib import ExitStack

    from poise.data.tasks.base import encode_prompts
    from poise.rollout.hf_engine import prompt_states
    from poise.rollout.models import HiddenCapture

    layers = model.config.num_hidden_layers
    last: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    mean: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    with torch.no_grad():
        for i in range(0, len(problems), batch):
            ids, mask = encode_prompts(tokenizer, problems[i:i + batch], 1)
            with ExitStack() as stack:
                caps = [stack.enter_context(HiddenCapture(model, layer)) for layer in range(layers)]
                prompt_states(model, ids, mask, 0)
            for layer, cap in enumerate(caps):
                last[layer].append(last_k_mean(cap.hidden, mask, k))
                mean[layer].append((cap.hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    feats: dict[str, np.ndarray] = {}
    for layer in range(layers):
        feats[f"L{layer} last{k}"] = torch.cat(last[layer]).double().numpy()
        feats[f"L{layer} mean"] = torch.cat(mean[layer]).double().numpy()
    feats[f"all layers last{k}"] = np.concatenate([feats[f"L{i} last{k}"] for i in range(layers)], axis=1)
    return feats


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("eval", help="per-problem `poise eval --split train` JSON Lines (k >= 4)")
    ap.add_argument("--model", default="default", help="the policy that produced the eval (poise model name or dir)")
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 100.0], help="ridge penalties to try")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from poise.commands.evaluate import select_problems
    from poise.config.train_config import TaskConfig
    from poise.data.tasks.dataset import build_task
    from poise.rollout.models import load_policy

    rows = [json.loads(line) for line in Path(args.eval).read_text().splitlines() if line.strip()]
    drawn, _ = select_problems(build_task(TaskConfig()), "train", len(rows), 0)
    by_uid = {p.uid: p for p in drawn}
    missing = [r["uid"] for r in rows if r["uid"] not in by_uid]
    if missing:
        raise SystemExit(f"{args.eval}: {len(missing)} problems (first {missing[0]}) are not the default task's "
                         f"first {len(rows)} training problems; make the file with `poise eval --split train`")
    model, tokenizer = load_policy(args.model, "chain_sum", 0, "float32")
    model.eval()
    feats = prompt_features(model, tokenizer, [by_uid[r["uid"]] for r in rows])
    splits = sb.halves(rows)
    out = {"eval": args.eval, "model": args.model, "problems": len(rows),
           "oracle": float(np.mean([sb.weighted_auroc(p * (1 - p), q) for p, _, q in splits])),
           "level": float(np.mean([sb.weighted_auroc(lv * (1 - lv), q) for _, lv, q in splits])), "probes": {}}
    print(f"{args.eval}: AUROC oracle {out['oracle']:.3f}, level {out['level']:.3f}")
    for name, X in feats.items():
        res = {}
        for alpha in args.alphas:
            aucs = []
            for p, _, q in splits:
                pred = np.clip(cross_fitted(X, p, alpha), 0.0, 1.0)
                aucs.append(sb.weighted_auroc(pred * (1 - pred), q))
            res[f"alpha={alpha:g}"] = float(np.mean(aucs))
        out["probes"][name] = res
        print(f"  {name:20s} " + ", ".join(f"{a} {v:.3f}" for a, v in res.items()), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
