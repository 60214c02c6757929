"""`poise compare`: methods x seeds at one compute budget, each run's checkpoints evaluated on held-out problems.

Every run is `poise train` with its preset, the same task and model, and `budget.<budget_key> = budget`, so the
methods differ only in the algorithm and stop at the same cost. Checkpoints every `eval_every` steps (and at the
budget stop), and the initial model, are then evaluated with Avg@k on the same held-out problems (a paired design;
the test split of `eval_levels`, or of the runs' own task levels), keeping each problem's correct fraction. That
gives held-out accuracy against three costs: generated tokens, wall time (the runs' summed step times, start-up
excluded) and estimated FLOPs (`compute.estimated_flops`: 2 x parameters per forward token, 4 x per backward token,
over the policy, the reference and the critic). Outputs in `output_dir`:

    <method>/seed<s>/          the runs (poise train's run directories) and their eval.json (per-problem accuracies)
    initial_eval.json          the initial model's per-problem accuracies
    compare.json               every point of every curve, and the summary: final accuracies, the target, costs to
                               reach it and the POISE/DAPO cost ratios, each with its 95% bootstrap interval, and
                               each method's seed-mean curve with its band
    compare.md                 the report
    accuracy_vs_tokens.png, accuracy_vs_time.png, accuracy_vs_flops.png, reward_vs_tokens.png

The target accuracy is the reference method's final seed-mean accuracy when it is among the methods (the reference is
DAPO unless `reference` names another; the question: does POISE reach DAPO's final accuracy at less cost?),
otherwise the best seed-mean accuracy every method reaches. Every other method's costs to it are divided by the
reference's. The cost to reach it is where the method's seed-mean accuracy curve first gets there, interpolated
linearly between checkpoints (the initial model is the point at cost 0). Intervals come from one bootstrap that
resamples every method's seeds and the held-out problems (the same problem draw for every method and checkpoint)
and recomputes everything; a replicate that never reaches the target counts as not reached. The statistics are in
`compare_report.py`.

Finished runs found in `output_dir` are reused (one trained with another config is refused), interrupted ones
resumed, and evaluations are cached (an eval.json written for other problems, k or response limit, or by an older
version that kept only the scalar accuracy, is recomputed), so the command can be run again after a kill.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_model

from poise.commands.compare_report import plot, report, reward_bands, summarise
from poise.config.errors import ConfigError
from poise.config.loading import apply_overrides, build_config, load_yaml
from poise.config.train_config import TrainConfig
from poise.train.compute import COUNTERS, estimated_flops
from poise.parallel.distributed import resolve_device
from poise.commands.evaluate import evaluate, select_problems
from poise.io.checkpoint import config_changes
from poise.rollout.models import load_policy
from poise.data.tasks.dataset import build_task
from poise.io.tracking import read_metrics


def run_budget(cfg, method: str) -> float:
    """The budget a method's runs stop at: `reference_budget` for the reference method when it is set, else
    `budget`."""
    return cfg.reference_budget if method == cfg.reference and cfg.reference_budget else cfg.budget


def run_dir(cfg, method: str, seed: int) -> Path:
    """A run's directory: output_dir/<method>/seed<s>, or output_dir/<method>@<budget>/seed<s> for a reference run at
    its own budget, so runs at different budgets never share a directory."""
    budget = run_budget(cfg, method)
    name = method if budget == cfg.budget else f"{method}@{format(budget, 'f').rstrip('0').rstrip('.')}"
    return Path(cfg.output_dir) / name / f"seed{seed}"


def run_values(cfg, method: str, seed: int) -> dict:
    """The flat TrainConfig values of one run: preset, then the comparison's fixed settings, then overrides."""
    try:
        values = load_yaml(method)
    except ConfigError as e:  # name the comparison's own key
        raise ConfigError(f"methods: {method!r} is not a preset or config file ({str(e).removeprefix('config: ')})") \
            from None
    budget = run_budget(cfg, method)
    values.update({"seed": seed, "output_dir": str(run_dir(cfg, method, seed)),
                   f"budget.{cfg.budget_key}": budget if cfg.budget_key == "seconds" else int(budget),
                   "max_steps": cfg.max_steps, "resume": True,
                   "checkpoint.every": cfg.eval_every, "checkpoint.keep_last": 1_000_000, "threads": cfg.threads})
    return apply_overrides(values, cfg.overrides)


def train_run(values: dict) -> Path:
    """Train one run unless a finished one is there (marked by done.json); returns its directory. A finished run
    trained with another config (a budget, an override; compared like a resume, budget.* included) is a
    ConfigError: reusing it would compare runs that are not the ones asked for."""
    from poise.train.loop import train

    run, cfg = Path(values["output_dir"]), build_config(TrainConfig, values)
    if (run / "done.json").is_file():
        changed, diffs = config_changes(run / "config.yaml", cfg, ("checkpoint.",))
        if changed:
            raise ConfigError(f"{changed[0]}: the finished run {run} differs from this comparison's ({diffs}); choose "
                              f"another --output-dir or remove the run")
        print(f"compare: reusing the finished run {run}")
        return run
    last = train(cfg)
    (run / "done.json").write_text(json.dumps({"last_step": last.get("step")}))
    return run


def eval_key(problems, cfg, **extra) -> dict:
    """What an evaluation depends on: the held-out problems (by uid), k and the response limit (and `extra`)."""
    return {"uids": [p.uid for p in problems], "eval_k": cfg.eval_k,
            "eval_max_new_tokens": cfg.eval_max_new_tokens, **extra}


def load_eval_cache(path: Path, key: dict) -> dict[int, dict]:
    """{step: {"accuracy", "per_problem"}} from an eval.json written with the same `key`; {} (recompute) when the
    file is missing, was written for other problems or settings, or is an old cache of scalar accuracies only."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "steps" not in data:
        print(f"compare: {path} holds scalar accuracies only (no per-problem values); re-evaluating")
        return {}
    if data.get("key") != key:
        print(f"compare: {path} was evaluated on other problems, k or response limit; re-evaluating")
        return {}
    return {int(k): v for k, v in data["steps"].items()}


def evaluate_checkpoint(model, tokenizer, task, problems, cfg) -> dict:
    """{"accuracy": Avg@k, "per_problem": [each problem's fraction of correct samples]}: `evaluate()`'s accuracy
    (the one definition of a correct sample, `evaluate.is_correct`), which is the mean of per_problem."""
    res = evaluate(model, tokenizer, task, problems, cfg.eval_k, cfg.eval_max_new_tokens, seed=0,
                   batch_prompts=cfg.eval_batch_prompts, progress=False)
    per_problem = [r["n_correct"] / len(r["rewards"]) for r in res["per_problem"]]
    return {"accuracy": res["accuracy"], "per_problem": per_problem}


def evaluate_initial(out: Path, model, tokenizer, task, problems, cfg, model_name: str) -> dict:
    """The initial model's evaluation (`evaluate_checkpoint`), cached in out/initial_eval.json."""
    with torch.no_grad():  # the weights' checksum too: a rebuilt model of the same name is evaluated anew
        checksum = float(sum(p.double().sum() for p in model.parameters()))
    path, key = out / "initial_eval.json", eval_key(problems, cfg, model=model_name, weights_sum=checksum)
    cache = load_eval_cache(path, key)
    if 0 not in cache:
        cache[0] = evaluate_checkpoint(model, tokenizer, task, problems, cfg)
        path.write_text(json.dumps({"key": key, "steps": cache}))
    return cache[0]


def evaluate_run(run: Path, base_model, tokenizer, task, problems, cfg, n_params: int) -> list[dict]:
    """Avg@k and per-problem accuracies of every checkpoint of a run (cached in run/eval.json), with the run's
    costs at that step: generated tokens, samples, training seconds and estimated FLOPs (`compute.estimated_flops`,
    the critic, when there is one, counted with the policy's `n_params`)."""
    cache_path, key = run / "eval.json", eval_key(problems, cfg)
    cache = load_eval_cache(cache_path, key)
    metrics = {m["step"]: m for m in read_metrics(run)}
    points = []
    for ckpt in sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(ckpt.name.split("-")[1])
        if step not in cache:
            load_model(base_model, str(ckpt / "policy.safetensors"))
            cache[step] = evaluate_checkpoint(base_model, tokenizer, task, problems, cfg)
            cache_path.write_text(json.dumps({"key": key, "steps": cache}))
        m = metrics[step]
        totals = {c: m[f"compute/total_{c}"] for c in COUNTERS}
        points.append({"step": step, **cache[step],
                       "generated_tokens": m["compute/total_generated_tokens"],
                       "samples": m["compute/total_samples"], "seconds": m["time_total/step_s"],
                       "flops": estimated_flops(totals, n_params, n_params)})
    return points


def count_parameters(model) -> int:
    """Distinct parameters of the policy (tied embeddings once). The FLOPs estimate uses it for the critic too: the
    critic copies the policy's body (no LM head) and adds a Linear(H, 1) value head, so with untied embeddings this
    overstates the critic by the LM head's V x H and ignores the head's H + 1."""
    return sum(p.numel() for p in model.parameters())


def reward_curve(run: Path, window: int = 10) -> list[dict]:
    """Training reward of a run: the mean of `reward/mean` over windows of `window` steps (half-overlapping), at
    the generated tokens of each window's last step."""
    rows = [r for r in read_metrics(run) if r["step"] > 0]  # step 0: the held-out evaluation's row (eval.every)
    out = []
    for i in range(0, len(rows) - window + 1, max(1, window // 2)):
        chunk = rows[i:i + window]
        out.append({"generated_tokens": chunk[-1]["compute/total_generated_tokens"],
                    "reward": statistics.mean(r["reward/mean"] for r in chunk)})
    return out


def held_out_task(first: TrainConfig, eval_levels: list[str]):
    """The task the held-out problems come from: the runs' task (scored with the reward they trained on), at
    `eval_levels` when set. A bad level is a ConfigError naming eval_levels."""
    if not eval_levels:
        return build_task(first.task, first.reward.function)
    try:
        return build_task(dataclasses.replace(first.task, levels=list(eval_levels)), first.reward.function)
    except ConfigError as e:
        raise ConfigError(f"eval_levels: {str(e).removeprefix('task.levels: ')}") from None


def run_compare(cfg) -> dict:
    """`poise compare`: train (or reuse) every run, evaluate the initial model and every checkpoint, then write
    compare.json, compare.md and the plots (see the module docstring). Returns compare.json's content."""
    if cfg.bootstrap < 1:
        raise ConfigError(f"bootstrap: must be at least 1 replicate, got {cfg.bootstrap}")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    specs = [(m, s, run_values(cfg, m, s)) for s in cfg.seeds for m in cfg.methods]
    for _, _, values in specs:  # every config is checked before the first run starts
        build_config(TrainConfig, values)
    first = build_config(TrainConfig, specs[0][2])
    task = held_out_task(first, cfg.eval_levels)  # checked before the first run starts too
    runs = {(m, s): train_run(v) for m, s, v in specs}
    problems, _ = select_problems(task, "test", cfg.eval_problems, 0)
    model, tokenizer = load_policy(first.model.name, first.task.name, first.seed, first.model.dtype,
                                   first.model.trust_remote_code)
    model.to(resolve_device(first.device))  # checkpoints are evaluated where the runs trained
    n_params = count_parameters(model)
    initial = evaluate_initial(out, model, tokenizer, task, problems, cfg, first.model.name)  # before any checkpoint
    curves: dict = {m: {} for m in cfg.methods}
    rewards: dict = {m: {} for m in cfg.methods}
    for (m, s), run in runs.items():
        print(f"compare: evaluating {run}")
        curves[m][s] = evaluate_run(run, model, tokenizer, task, problems, cfg, n_params)
        rewards[m][s] = reward_curve(run)
    summary = summarise(curves, initial["per_problem"], cfg.bootstrap, cfg.bootstrap_seed, cfg.reference)
    summary["policy_params"] = n_params
    bands = reward_bands(rewards, cfg.bootstrap, cfg.bootstrap_seed)
    result = {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "summary": summary,
              "curves": {m: {str(s): [{k: v for k, v in p.items() if k != "per_problem"} for p in pts]
                             for s, pts in by.items()} for m, by in curves.items()},
              "rewards": {m: {str(s): pts for s, pts in by.items()} for m, by in rewards.items()},
              "reward_bands": bands, "eval_problems": len(problems)}
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    text = report(summary, cfg)
    (out / "compare.md").write_text(text)
    plot(summary, bands, out)
    print(text)
    return result
