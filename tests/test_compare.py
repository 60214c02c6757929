"""`poise compare` on the micro model: runs, evaluation of every checkpoint, summary, report, plots, reuse."""

import json

from poise.cli import main
from poise.compare import first_reaching, summarise


def test_summary_target_is_the_best_accuracy_every_method_reaches():
    def pts(accs):
        return [{"accuracy": a, "generated_tokens": 100 * (i + 1), "seconds": 10.0 * (i + 1)}
                for i, a in enumerate(accs)]

    curves = {"a": {0: pts([0.2, 0.4, 0.5]), 1: pts([0.3, 0.5, 0.5])},
              "b": {0: pts([0.1, 0.2, 0.3]), 1: pts([0.2, 0.3, 0.4])}}
    s = summarise(curves, initial=0.1)
    assert s["target_accuracy"] == 0.35  # b's best seed mean; a's is 0.5
    a, b = s["methods"]["a"], s["methods"]["b"]
    assert a["tokens_to_target"] == 200 and a["seeds_reaching_target"] == 2  # seed 0 at 0.4, seed 1 at 0.5
    assert b["seeds_reaching_target"] == 1 and b["tokens_to_target"] == 300 and b["seconds_to_target"] == 30
    assert a["final_accuracy_mean"] == 0.5 and b["final_accuracy_min"] == 0.3
    assert first_reaching(pts([0.1, 0.2]), 0.5) is None


def test_compare_runs_evaluates_reports_and_reuses(micro_dir, tmp_path):
    out = tmp_path / "cmp"
    over = ["task.name=parity_test", f"model.name={micro_dir}", "task.train_size=64", "rollout.prompts_per_step=8",
            "rollout.max_new_tokens=12", "optim.mini_batch_prompts=4", "probe.k=3", "probe.min_fit_steps=1",
            "probe.warmup_steps=1", "probe.buffer_size=64", "probe.prompt_dim=4", "probe.trajectory_dim=4",
            "rollout.group_size=2", "algorithm.dynamic_sampling=false"]
    args = ["compare", "--methods", "[poise, rloo]", "--seeds", "[0]", "--budget-key", "samples", "--budget", "48",
            "--eval-every", "1", "--eval-problems", "6", "--eval-k", "2", "--eval-max-new-tokens", "12",
            "--output-dir", str(out), "--threads", "1", "--overrides", json.dumps(over)]
    assert main(args) == 0
    res = json.loads((out / "compare.json").read_text())
    for m in ("poise", "rloo"):
        pts = res["curves"][m]["0"]
        assert [p["step"] for p in pts] == [1, 2, 3]  # 16 samples per step, budget 48
        assert [p["samples"] for p in pts] == [16, 32, 48]
        assert all(0.0 <= p["accuracy"] <= 1.0 for p in pts)
    assert (out / "poise/seed0/done.json").is_file() and (out / "compare.md").read_text().startswith("# poise compare")
    for png in ("accuracy_vs_tokens.png", "accuracy_vs_time.png", "reward_vs_tokens.png"):
        assert (out / png).stat().st_size > 1000
    assert main(args) == 0  # the finished runs and their evaluations are reused, not redone
    assert json.loads((out / "compare.json").read_text())["curves"] == res["curves"]


def test_the_gpu_reproduction_config_builds_a_valid_run_for_every_method():
    """configs/compare/gpu.yaml cannot run here (no GPU, no Qwen3 download), but every key in it and in each run it
    makes must exist and hold a valid value."""
    from poise.compare import run_values
    from poise.config import CompareConfig, TrainConfig, build_config, load_yaml

    cfg = build_config(CompareConfig, load_yaml("compare/gpu"))
    assert cfg.methods == ["poise", "dapo", "grpo", "rloo"] and cfg.eval_batch_prompts == 16
    for method in cfg.methods:
        run = build_config(TrainConfig, run_values(cfg, method, 0))
        assert run.model.name == "models/Qwen3-0.6B" and run.task.name == "countdown"
        assert run.rollout.max_new_tokens == 1024 and run.optim.lr == 1e-6 and run.model.dtype == "float32"
        assert run.rollout.prompts_per_step % run.optim.mini_batch_prompts == 0


def test_held_out_accuracy_uses_the_reward_the_runs_trained_on(micro_dir, tmp_path):
    out = tmp_path / "cmp"
    over = ["task.name=parity_test", f"model.name={micro_dir}", "task.train_size=64", "rollout.prompts_per_step=8",
            "rollout.max_new_tokens=8", "optim.mini_batch_prompts=4",
            "reward.function=test_rewards_light:trl_always_one"]
    assert main(["compare", "--methods", "[rloo]", "--seeds", "[0]", "--budget-key", "samples", "--budget", "16",
                 "--eval-every", "1", "--eval-problems", "4", "--eval-k", "2", "--eval-max-new-tokens", "8",
                 "--output-dir", str(out), "--threads", "1", "--overrides", json.dumps(over)]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["summary"]["initial_accuracy"] == 1.0 and [p["accuracy"] for p in res["curves"]["rloo"]["0"]] == [1.0]
