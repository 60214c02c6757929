"""`poise compare`: methods x seeds at one compute budget, each run's checkpoints evaluated on held-out problems.

Every run is `poise train` with its preset, the same task and model, and `budget.<budget_key> = budget`, so the
methods differ only in the algorithm and stop at the same cost. Checkpoints every `eval_every` steps (and at the
budget stop) are then evaluated with Avg@k on the same held-out problems, which gives held-out accuracy against
generated tokens and against wall time (the runs' summed step times, start-up excluded). Outputs in `output_dir`:

    <method>/seed<s>/          the runs (poise train's run directories) and their eval.json
    compare.json               every point of every curve, final accuracies, costs to reach the target
    compare.md                 the report: final accuracy (mean, spread over seeds) and cost to reach the target
    accuracy_vs_tokens.png, accuracy_vs_time.png, reward_vs_tokens.png

The target accuracy is the best seed-mean held-out accuracy that every method reaches; the cost to reach it is the
first checkpoint at or above it, per seed, averaged over the seeds that reach it. Finished runs found in
`output_dir` are reused, interrupted ones resumed, so the command can be run again after a kill.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_model

from poise.config import TrainConfig, build_config, load_yaml, parse_cli_value
from poise.distributed import resolve_device
from poise.evaluate import evaluate, select_problems
from poise.models import load_policy
from poise.tasks.dataset import build_task
from poise.tracking import read_metrics


def run_values(cfg, method: str, seed: int) -> dict:
    """The flat TrainConfig values of one run: preset, then the comparison's fixed settings, then overrides."""
    values = load_yaml(method)
    values.update({"seed": seed, "output_dir": str(Path(cfg.output_dir) / method / f"seed{seed}"),
                   f"budget.{cfg.budget_key}": cfg.budget if cfg.budget_key == "seconds" else int(cfg.budget),
                   "max_steps": cfg.max_steps, "resume": True,
                   "checkpoint.every": cfg.eval_every, "checkpoint.keep_last": 1_000_000, "threads": cfg.threads})
    for o in cfg.overrides:
        key, _, text = o.partition("=")
        values[key.strip()] = parse_cli_value(text.strip())
    return values


def train_run(values: dict) -> Path:
    """Train one run unless a finished one is there (marked by done.json); returns its directory."""
    from poise.trainer import train

    run = Path(values["output_dir"])
    if (run / "done.json").is_file():
        print(f"compare: reusing the finished run {run}")
        return run
    last = train(build_config(TrainConfig, values))
    (run / "done.json").write_text(json.dumps({"last_step": last.get("step")}))
    return run


def evaluate_run(run: Path, base_model, tokenizer, task, problems, cfg) -> list[dict]:
    """Avg@k of every checkpoint of a run (cached in run/eval.json), with the run's costs at that step."""
    cache_path = run / "eval.json"
    cache = {int(k): v for k, v in json.loads(cache_path.read_text()).items()} if cache_path.is_file() else {}
    metrics = {m["step"]: m for m in read_metrics(run)}
    points = []
    for ckpt in sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(ckpt.name.split("-")[1])
        if step not in cache:
            load_model(base_model, str(ckpt / "policy.safetensors"))
            res = evaluate(base_model, tokenizer, task, problems, cfg.eval_k, cfg.eval_max_new_tokens, seed=0,
                           batch_prompts=cfg.eval_batch_prompts, progress=False)
            cache[step] = res["accuracy"]
            cache_path.write_text(json.dumps(cache))
        m = metrics[step]
        points.append({"step": step, "accuracy": cache[step],
                       "generated_tokens": m["compute/total_generated_tokens"],
                       "samples": m["compute/total_samples"], "seconds": m["time_total/step_s"]})
    return points


def first_reaching(points: list[dict], target: float) -> dict | None:
    """The first point (in training order) whose accuracy is at least `target`."""
    return next((p for p in points if p["accuracy"] >= target - 1e-12), None)


def summarise(curves: dict[str, dict[int, list[dict]]], initial: float) -> dict:
    """Final accuracy per method (mean, min, max over seeds), the target and each method's cost to reach it."""
    out: dict = {"initial_accuracy": initial, "methods": {}}
    best_mean = {}
    for method, by_seed in curves.items():
        n = min(len(pts) for pts in by_seed.values())  # checkpoints every seed has (aligned by index)
        mean_curve = [statistics.mean(pts[i]["accuracy"] for pts in by_seed.values()) for i in range(n)]
        best_mean[method] = max([initial, *mean_curve])
        finals = [pts[-1]["accuracy"] for pts in by_seed.values()]
        out["methods"][method] = {
            "final_accuracy_mean": statistics.mean(finals), "final_accuracy_min": min(finals),
            "final_accuracy_max": max(finals), "final_accuracies": finals,
            "final_tokens_mean": statistics.mean(pts[-1]["generated_tokens"] for pts in by_seed.values()),
            "final_seconds_mean": statistics.mean(pts[-1]["seconds"] for pts in by_seed.values()),
            "best_seed_mean_accuracy": best_mean[method]}
    target = min(best_mean.values())
    out["target_accuracy"] = target
    for method, by_seed in curves.items():
        hits = [first_reaching(pts, target) for pts in by_seed.values()]
        reached = [h for h in hits if h is not None]
        out["methods"][method].update({
            "seeds_reaching_target": len(reached), "seeds": len(hits),
            "tokens_to_target": statistics.mean(h["generated_tokens"] for h in reached) if reached else None,
            "seconds_to_target": statistics.mean(h["seconds"] for h in reached) if reached else None})
    return out


def report(summary: dict, cfg) -> str:
    """The Markdown report."""
    lines = [f"# poise compare: {', '.join(cfg.methods)} x seeds {cfg.seeds}", "",
             f"Budget: {cfg.budget_key} = {cfg.budget:,.0f} per run. Held-out Avg@{cfg.eval_k} on "
             f"{cfg.eval_problems} problems; initial model {summary['initial_accuracy']:.3f}. Overrides: "
             f"{cfg.overrides or 'none'}.", "",
             "| method | final Avg@k, mean | min | max | tokens at stop | train seconds at stop | "
             f"tokens to {summary['target_accuracy']:.3f} | seconds to it | seeds reaching it |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, m in summary["methods"].items():
        tok = f"{m['tokens_to_target']:,.0f}" if m["tokens_to_target"] is not None else "not reached"
        sec = f"{m['seconds_to_target']:.0f}" if m["seconds_to_target"] is not None else "not reached"
        lines.append(f"| {method} | {m['final_accuracy_mean']:.3f} | {m['final_accuracy_min']:.3f} | "
                     f"{m['final_accuracy_max']:.3f} | {m['final_tokens_mean']:,.0f} | {m['final_seconds_mean']:.0f} "
                     f"| {tok} | {sec} | {m['seeds_reaching_target']}/{m['seeds']} |")
    ratio = summary.get("poise_over_dapo")
    if ratio:
        lines += ["", f"POISE / DAPO cost to reach {summary['target_accuracy']:.3f}: "
                      f"{ratio['tokens']:.2f}x generated tokens, {ratio['seconds']:.2f}x wall time."]
    return "\n".join(lines) + "\n"


def plot(curves: dict, rewards: dict, initial: float, out: Path) -> None:
    """Accuracy against tokens and time, training reward against tokens: seed mean line and min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(series: dict, xkey: str, ykey: str, xlabel: str, ylabel: str, name: str, start=None):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, by_seed in series.items():
            n = min(len(p) for p in by_seed.values())
            xs = [statistics.mean(p[i][xkey] for p in by_seed.values()) for i in range(n)]
            ys = [[p[i][ykey] for p in by_seed.values()] for i in range(n)]
            if start is not None:
                xs, ys = [0.0, *xs], [[start], *ys]
            ax.plot(xs, [statistics.mean(y) for y in ys], label=method)
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    draw(curves, "generated_tokens", "accuracy", "generated tokens", "held-out Avg@k", "accuracy_vs_tokens.png",
         initial)
    draw(curves, "seconds", "accuracy", "training seconds", "held-out Avg@k", "accuracy_vs_time.png", initial)
    draw(rewards, "generated_tokens", "reward", "generated tokens", "training reward (10-step mean)",
         "reward_vs_tokens.png")


def reward_curve(run: Path, window: int = 10) -> list[dict]:
    rows = read_metrics(run)
    out = []
    for i in range(0, len(rows) - window + 1, max(1, window // 2)):
        chunk = rows[i:i + window]
        out.append({"generated_tokens": chunk[-1]["compute/total_generated_tokens"],
                    "reward": statistics.mean(r["reward/mean"] for r in chunk)})
    return out


def run_compare(cfg) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    specs = [(m, s, run_values(cfg, m, s)) for s in cfg.seeds for m in cfg.methods]
    for _, _, values in specs:  # every config is checked before the first run starts
        build_config(TrainConfig, values)
    runs = {(m, s): train_run(v) for m, s, v in specs}
    first = build_config(TrainConfig, specs[0][2])
    task = build_task(first.task, first.reward.function)  # held-out accuracy uses the reward the runs trained on
    problems, _ = select_problems(task, "test", cfg.eval_problems, 0)
    model, tokenizer = load_policy(first.model.name, first.task.name, first.seed, first.model.dtype)
    model.to(resolve_device(first.device))  # checkpoints are evaluated where the runs trained
    initial = evaluate(model, tokenizer, task, problems, cfg.eval_k, cfg.eval_max_new_tokens, seed=0,
                       batch_prompts=cfg.eval_batch_prompts, progress=False)["accuracy"]
    curves: dict = {m: {} for m in cfg.methods}
    rewards: dict = {m: {} for m in cfg.methods}
    for (m, s), run in runs.items():
        print(f"compare: evaluating {run}")
        curves[m][s] = evaluate_run(run, model, tokenizer, task, problems, cfg)
        rewards[m][s] = reward_curve(run)
    summary = summarise(curves, initial)
    pm, dm = summary["methods"].get("poise"), summary["methods"].get("dapo")
    if pm and dm and pm["tokens_to_target"] and dm["tokens_to_target"]:
        summary["poise_over_dapo"] = {"tokens": pm["tokens_to_target"] / dm["tokens_to_target"],
                                      "seconds": pm["seconds_to_target"] / dm["seconds_to_target"]}
    result = {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "summary": summary,
              "curves": {m: {str(s): pts for s, pts in by.items()} for m, by in curves.items()},
              "rewards": {m: {str(s): pts for s, pts in by.items()} for m, by in rewards.items()},
              "eval_problems": len(problems)}
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    text = report(summary, cfg)
    (out / "compare.md").write_text(text)
    plot(curves, rewards, initial, out)
    print(text)
    return result
