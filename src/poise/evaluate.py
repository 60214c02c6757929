"""Held-out evaluation: Avg@k (mean reward over k samples per problem) overall and per difficulty level."""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm import tqdm

from poise.rollout import encode_prompts, generate


@torch.no_grad()
def evaluate(model, tokenizer, task, problems, samples: int = 4, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_prompts: int = 64,
             progress: bool = True) -> dict:
    """Sample `samples` responses per problem and score them.

    Returns {"accuracy": Avg@k over all problems, "levels": {level: {"n", "accuracy"}},
             "per_problem": [{"uid", "level", "rewards": [...], "responses": [...]}]}.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    per_problem = []
    chunks = range(0, len(problems), batch_prompts)
    for s in tqdm(chunks, desc="eval", disable=not progress, leave=False):
        chunk = problems[s:s + batch_prompts]
        ids, mask = encode_prompts(tokenizer, chunk, samples)
        resp, rmask = generate(model, ids, mask, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
                               temperature, top_p, gen)
        texts = tokenizer.batch_decode(resp, skip_special_tokens=True)
        rewards = task.score_batch(texts, [p for p in chunk for _ in range(samples)])
        for i, p in enumerate(chunk):
            per_problem.append({"uid": p.uid, "level": p.level, "question": p.question, "answer": p.answer,
                                "rewards": rewards[i * samples:(i + 1) * samples],
                                "responses": texts[i * samples:(i + 1) * samples]})
    model.train(was_training)
    by_level = defaultdict(list)
    for r in per_problem:
        by_level[r["level"]].append(sum(r["rewards"]) / samples)
    order = [lv for lv in getattr(task, "levels", []) if lv in by_level] + sorted(set(by_level) - set(task.levels))
    levels = {lv: {"n": len(by_level[lv]), "accuracy": sum(by_level[lv]) / len(by_level[lv])} for lv in order}
    overall = sum(sum(r["rewards"]) / samples for r in per_problem) / max(1, len(per_problem))
    return {"accuracy": overall, "samples": samples, "levels": levels, "per_problem": per_problem}


def level_table(result: dict) -> str:
    """Markdown table of per-level accuracy."""
    lines = ["| level | problems | Avg@%d |" % result["samples"], "|---|---:|---:|"]
    for lv, v in result["levels"].items():
        lines.append(f"| {lv} | {v['n']} | {v['accuracy']:.3f} |")
    lines.append(f"| all | {sum(v['n'] for v in result['levels'].values())} | {result['accuracy']:.3f} |")
    return "\n".join(lines)
