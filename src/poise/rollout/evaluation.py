"""The evaluator: Avg@k and pass@k of sampled responses, shared by `poise eval`, `poise sft`, `poise compare` and
the held-out evaluation during training (`poise.train.heldout`, `--eval.every`).

Each problem's prompt is repeated k times in a row and sampled through the one sampling interface
(`poise.rollout.sampler`, driven by a seeded torch.Generator); the responses are scored by the task's reward in
the sandboxed verifier worker (`Task.score_batch`).

The one definition of a correct sample (`is_correct`): its reward is >= 1. The built-in tasks' rewards are 0/1; a
user's reward function that gives partial credit (0.5) counts only its full-credit samples as correct, so Avg@k and
pass@k stay accuracies. A None reward (unscorable) counts as not correct and is counted separately.

With c_i of the k samples of problem i correct, over N problems:

    Avg@k  = 1/N sum_i c_i / k                       (the mean correct fraction; also the unbiased pass@1)
    pass@k = 1/N sum_i [c_i >= 1]                    (at least one of the k samples is correct)
    pass@j = 1/N sum_i pass_at_k(k, c_i, j)          (unbiased estimate for j <= k; Chen et al. 2021, arXiv 2107.03374)

`select_problems` picks the held-out problems the same way for every caller. The command-line side of `poise eval`
(files, tables, its config) is `poise.commands.evaluate`, which re-exports these functions.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from tqdm import tqdm

from poise.rollout.sampler import KVCacheSampler, SamplingParams, sample_and_score

# =====================================================================================================================
# Metrics: pure functions of counts
# =====================================================================================================================


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k).

    The probability that k of the n samples, drawn without replacement, include at least one correct one
    (Chen et al. 2021, arXiv 2107.03374, eq. 1). pass_at_k(n, c, 1) = c / n and pass_at_k(n, c, n) = [c > 0].
    The binomials are exact integers; only their ratio is rounded.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every draw of k contains a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def is_correct(score: float | None) -> bool:
    """A sample is correct when its reward is >= 1 (full credit); None (unscorable) is not correct."""
    return score is not None and score >= 1.0


def pass_ks(k: int) -> list[int]:
    """The j of the reported pass@j: 1, 2, 4, ... below k, and k itself."""
    return sorted({2**i for i in range(k.bit_length()) if 2**i < k} | {k})


def aggregate(n_correct: list[int], k: int) -> dict:
    """Metrics of N problems with n_correct[i] of k samples correct each:
    {"problems": N, "avg_at_k": mean c/k, "pass_at_k": mean [c >= 1], "pass_at": {"j": mean pass_at_k(k, c, j)}}.
    An empty list gives zeros."""
    n = len(n_correct)
    if n == 0:
        return {"problems": 0, "avg_at_k": 0.0, "pass_at_k": 0.0, "pass_at": {str(j): 0.0 for j in pass_ks(k)}}
    return {"problems": n,
            "avg_at_k": sum(c / k for c in n_correct) / n,
            "pass_at_k": sum(c >= 1 for c in n_correct) / n,
            "pass_at": {str(j): sum(pass_at_k(k, c, j) for c in n_correct) / n for j in pass_ks(k)}}


def aggregate_levels(rows: list[dict], k: int, order: list[str] = ()) -> dict:
    """{"overall": aggregate(...), "levels": {level: aggregate(...)}} from per-problem rows holding "level",
    "n_correct" and "unscorable"; levels in `order` first (those present), then the rest sorted."""
    by_level: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_level[r["level"]].append(r)
    names = [lv for lv in order if lv in by_level] + sorted(set(by_level) - set(order))

    def summary(rs: list[dict]) -> dict:
        return {**aggregate([r["n_correct"] for r in rs], k), "unscorable": sum(r["unscorable"] for r in rs)}

    return {"overall": summary(rows), "levels": {lv: summary(by_level[lv]) for lv in names}}


# =====================================================================================================================
# Problems, sampling and scoring
# =====================================================================================================================


def select_problems(task, split: str, n: int, seed: int) -> tuple[list, dict]:
    """Up to `n` distinct problems of `split`, deterministic in (split, n, seed): at most the split's size for a data
    file (`task.split_size`), and each question once (a procedural level with few held-out questions repeats them,
    and a repeat would only re-weight that question). Returns (problems, {"split_size", "repeats_dropped"})."""
    size = task.split_size(split) if hasattr(task, "split_size") else None
    drawn = task.problems(split, n if size is None else min(n, size), seed=seed)
    seen: set[str] = set()
    out = [p for p in drawn if not (p.uid in seen or seen.add(p.uid))]
    return out, {"split_size": size, "repeats_dropped": len(drawn) - len(out)}


def sample_batches(model, tokenizer, task, problems, k: int, max_new_tokens: int, temperature: float = 1.0,
                   top_p: float = 1.0, generator: torch.Generator | None = None, batch_prompts: int = 32):
    """For each batch of `batch_prompts` problems, sample k responses per problem (B = P * k rows, problem p's
    rows p*k .. p*k+k-1; `poise.rollout.sampler`) and score them. Yields (rows, seconds generating, seconds decoding
    and scoring, generated tokens), one row per problem: uid, level, question, answer (gold), responses, scores
    (None = unscorable), n_correct, unscorable, tokens (response lengths, EOS included) and truncated (responses
    that hit the limit without EOS)."""
    was_training = model.training
    sampler, params = KVCacheSampler(model, tokenizer), SamplingParams(max_new_tokens, temperature, top_p)
    try:
        for s in range(0, len(problems), batch_prompts):
            chunk = problems[s:s + batch_prompts]
            out = sample_and_score(sampler, task, chunk, k, params, generator)  # (P*k) rows
            texts, scores = out.texts, out.scores
            lengths, ended = out.batch.response_mask.sum(1).tolist(), out.batch.ended.tolist()
            rows = []
            for i, p in enumerate(chunk):
                sc = scores[i * k:(i + 1) * k]
                rows.append({"uid": p.uid, "level": p.level, "question": p.question, "answer": p.answer,
                             "responses": texts[i * k:(i + 1) * k], "scores": sc,
                             "n_correct": sum(map(is_correct, sc)), "unscorable": sum(x is None for x in sc),
                             "tokens": lengths[i * k:(i + 1) * k],
                             "truncated": sum(not e for e in ended[i * k:(i + 1) * k])})
            yield rows, out.sample_seconds, out.score_seconds, int(out.batch.response_mask.sum())
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model, tokenizer, task, problems, samples: int = 4, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_prompts: int = 64,
             progress: bool = True) -> dict:
    """`poise eval`'s metric in process (used by `poise sft` and `poise compare`): sample `samples` responses per
    problem (`sample_batches`) and count the correct ones (`is_correct`: reward >= 1; unscorable is not correct).

    Returns {"accuracy": Avg@k over all problems, "samples": k, "levels": {level: {"n", "accuracy"}},
             "per_problem": [{"uid", "level", "question", "answer", "rewards": [...], "n_correct", "responses"}]}.
    """
    gen = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    rows = []
    batches = sample_batches(model, tokenizer, task, problems, samples, max_new_tokens, temperature, top_p, gen,
                             batch_prompts)
    for chunk, *_ in tqdm(batches, desc="eval", total=-(-len(problems) // batch_prompts), disable=not progress,
                          leave=False):
        rows += chunk
    metrics = aggregate_levels(rows, samples, list(getattr(task, "levels", [])))
    levels = {lv: {"n": m["problems"], "accuracy": m["avg_at_k"]} for lv, m in metrics["levels"].items()}
    per_problem = [{"uid": r["uid"], "level": r["level"], "question": r["question"], "answer": r["answer"],
                    "rewards": r["scores"], "n_correct": r["n_correct"], "responses": r["responses"]} for r in rows]
    return {"accuracy": metrics["overall"]["avg_at_k"], "samples": samples, "levels": levels,
            "per_problem": per_problem}
