"""`poise eval` (`run_eval(cfg)`): Avg@k and pass@k, overall and per difficulty level, written per problem and as a
summary, with the tables printed.

The measurement itself (the metrics, the one definition of a correct sample `is_correct`, the problem selection,
sampling and scoring, and `evaluate()` in process for `poise sft` and `poise compare`) lives one layer down, in
`poise.rollout.evaluation`, where the trainer's held-out evaluation (`--eval.every`) uses it too; it is re-exported
here, so `from poise.commands.evaluate import evaluate` keeps working.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

from poise.config.errors import ConfigError
from poise.config.loading import to_dict
from poise.data.tasks import drop_long_prompts
from poise.data.code.runners import make_runner
from poise.data.tasks.dataset import build_task, check_reward_function
from poise.data.verifier import SafeVerifier
from poise.parallel.distributed import resolve_device
from poise.rollout.evaluation import (aggregate, aggregate_levels, evaluate, is_correct, pass_at_k,  # noqa: F401
                                      pass_ks, sample_batches, select_problems)
from poise.rollout.limits import check_fits
from poise.rollout.models import load_policy

# =====================================================================================================================
# Tables
# =====================================================================================================================


def summary_table(metrics: dict, k: int) -> str:
    """Markdown table `level | problems | Avg@k | pass@k` with an `all` row, from `aggregate_levels`' output (a data
    file without levels has the single level 'all': one row)."""
    lines = [f"| level | problems | Avg@{k} | pass@{k} |", "|---|---:|---:|---:|"]
    levels = [] if list(metrics["levels"]) == ["all"] else list(metrics["levels"].items())
    for lv, m in [*levels, ("all", metrics["overall"])]:
        lines.append(f"| {lv} | {m['problems']} | {m['avg_at_k']:.3f} | {m['pass_at_k']:.3f} |")
    return "\n".join(lines)


def level_table(result: dict) -> str:
    """Markdown table of per-level accuracy."""
    lines = ["| level | problems | Avg@%d |" % result["samples"], "|---|---:|---:|"]
    for lv, v in result["levels"].items():
        lines.append(f"| {lv} | {v['n']} | {v['accuracy']:.3f} |")
    lines.append(f"| all | {sum(v['n'] for v in result['levels'].values())} | {result['accuracy']:.3f} |")
    return "\n".join(lines)


# =====================================================================================================================
# `poise eval`
# =====================================================================================================================


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "x"


def default_output(model_name: str, task_name: str, task_path: str = "") -> Path:
    """runs/eval/<model>-<task>.jsonl; a model directory is named by its last two path parts (runs/x/policy ->
    x_policy), a data file by its stem."""
    parts = Path(model_name).parts
    model = "_".join(parts[-2:]) if len(parts) > 1 else model_name
    task = Path(task_path).stem if task_name == "dataset" and task_path else task_name
    return Path("runs") / "eval" / f"{_slug(model)}-{_slug(task)}.jsonl"


def _build(cfg):
    """(task with its verifier, problems, info, model, tokenizer); bad names become ConfigErrors naming the key."""

    task = build_task(cfg.task, cfg.reward_function, "reward_function")  # checked before the model loads
    if task.uses_code:  # code tasks, their sandbox started now: pass@k counts the samples that pass every test
        task.code_runner = make_runner(cfg.code_backend, cfg.code_sandbox, cfg.sandbox_url, cfg.code_timeout, key="")
        task.code_score = "all"
    problems, info = select_problems(task, cfg.split, cfg.num_problems, cfg.seed)
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model, tokenizer = load_policy(cfg.model.name, cfg.task.name, cfg.seed, cfg.model.dtype,  # MissingModelError
                                   cfg.model.trust_remote_code)
    problems, info["long_prompts_dropped"] = drop_long_prompts(problems, tokenizer, cfg.task.max_prompt_tokens)
    if not problems:
        raise ConfigError(f"task.max_prompt_tokens: every selected prompt is longer than {cfg.task.max_prompt_tokens} "
                          "tokens; raise the limit")
    check_fits(model, tokenizer, problems, cfg.max_new_tokens, "max_new_tokens")  # prompt + response within positions
    task.verifier = SafeVerifier(timeout=cfg.reward_timeout)  # answer checking in a sandboxed worker process
    check_reward_function(task, problems, "reward_function")
    return task, problems, info, model.to(device), tokenizer


def run_eval(cfg, progress: bool = True) -> dict:
    """`poise eval`: sample cfg.k responses for each selected problem, score them, write one JSON object per problem
    to the output file and the summary (config, per-level and overall metrics, timings) beside it; print the table.
    Returns the summary."""
    import transformers

    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task, problems, info, model, tokenizer = _build(cfg)
    out = Path(cfg.output) if cfg.output else default_output(cfg.model.name, cfg.task.name, cfg.task.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    note = f" ({info['repeats_dropped']} repeated questions dropped)" if info["repeats_dropped"] else ""
    print(f"eval: {cfg.model.name} on {task.name} ({cfg.split}): {len(problems)} problems x k={cfg.k}{note}")

    gen = torch.Generator(next(model.parameters()).device).manual_seed(cfg.seed)  # on the model's device
    kept, t_gen, t_score, tokens, truncated = [], 0.0, 0.0, 0, 0
    t_loop = time.perf_counter()
    bar = tqdm(total=len(problems), desc="eval", unit="problem", disable=not progress, mininterval=2)
    with open(out, "w") as f:
        for rows, dt_gen, dt_score, n_tok in sample_batches(model, tokenizer, task, problems, cfg.k,
                                                            cfg.max_new_tokens, cfg.temperature, cfg.top_p, gen,
                                                            cfg.batch_size):
            f.writelines(json.dumps(r) + "\n" for r in rows)
            f.flush()
            kept += [{"level": r["level"], "n_correct": r["n_correct"], "unscorable": r["unscorable"]} for r in rows]
            t_gen, t_score, tokens = t_gen + dt_gen, t_score + dt_score, tokens + n_tok
            truncated += sum(r["truncated"] for r in rows)
            bar.update(len(rows))
            bar.set_postfix(avg=f"{sum(r['n_correct'] for r in kept) / (cfg.k * len(kept)):.3f}")
    bar.close()
    task.verifier.close()
    loop_s = time.perf_counter() - t_loop
    metrics = aggregate_levels(kept, cfg.k, list(getattr(task, "levels", [])))
    samples = len(problems) * cfg.k
    summary = {
        "model": cfg.model.name, "task": task.name, "split": cfg.split, "k": cfg.k,
        "problems": len(problems), "requested": cfg.num_problems, **info,
        "samples": samples, "unscorable": metrics["overall"]["unscorable"],
        "verifier": dict(task.verifier.stats), **({"code": dict(task.code_stats)} if task.uses_code else {}), **metrics,
        "generated_tokens": tokens, "truncated": truncated,
        "wall_time_s": time.perf_counter() - t_start, "loop_s": loop_s, "generate_s": t_gen, "score_s": t_score,
        "samples_per_s": samples / loop_s, "output": str(out),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "config": to_dict(cfg),
    }
    Path(f"{out}.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    passes = ", ".join(f"pass@{j} {v:.3f}" for j, v in metrics["overall"]["pass_at"].items())
    print(summary_table(metrics, cfg.k))
    print(f"{passes}; unscorable {summary['unscorable']} of {samples} samples; {truncated} truncated at "
          f"{cfg.max_new_tokens} tokens\n{samples} samples in {loop_s:.1f} s ({summary['samples_per_s']:.1f} "
          f"samples/s; {summary['wall_time_s']:.1f} s with loading); wrote {out} and {out}.summary.json")
    return summary
