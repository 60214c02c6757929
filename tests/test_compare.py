"""`poise compare` on the micro model: runs, evaluation of every checkpoint, summary, report, plots, reuse."""

import json
import math
from types import SimpleNamespace

import pytest

from poise.commands.cli import main
from poise.commands.compare import load_eval_cache, run_values, train_run
from poise.commands.compare_report import first_crossing, report, summarise
from poise.config.command_configs import CompareConfig
from poise.config.errors import ConfigError
from poise.train.compute import COUNTERS, estimated_flops
from poise.io.tracking import read_metrics


def pts(accs, tokens=100, n=4):
    """Hand-made checkpoints: every one of n problems at the accuracy, costs growing linearly with the index."""
    return [{"accuracy": a, "per_problem": [a] * n, "generated_tokens": tokens * (i + 1),
             "seconds": tokens / 10 * (i + 1), "flops": tokens * 10 * (i + 1)} for i, a in enumerate(accs)]


def test_first_crossing_interpolates_between_checkpoints():
    x, y = [0.0, 100.0, 200.0, 300.0], [0.1, 0.2, 0.4, 0.5]
    assert first_crossing(x, y, 0.3) == pytest.approx(150.0)  # halfway from 0.2 to 0.4
    assert first_crossing(x, y, 0.4) == 200.0 and first_crossing(x, y, 0.05) == 0.0  # the initial point: cost 0
    assert first_crossing(x, y, 0.6) == math.inf
    batch = first_crossing([x, x], [y, [0.1, 0.5, 0.5, 0.5]], [0.3, 0.3])  # (2, K) curves, one target each
    assert batch == pytest.approx([150.0, 50.0])


def test_summary_target_without_dapo_is_the_best_accuracy_every_method_reaches():
    curves = {"a": {0: pts([0.2, 0.4, 0.5]), 1: pts([0.2, 0.4, 0.5])},
              "b": {0: pts([0.1, 0.2, 0.3]), 1: pts([0.1, 0.2, 0.3])}}
    s = summarise(curves, initial=[0.1] * 4, n_boot=200)
    assert s["target_rule"] == "best_every_method_reaches" and s["target_accuracy"] == pytest.approx(0.3)
    a, b = s["methods"]["a"], s["methods"]["b"]
    assert a["tokens_to_target"] == pytest.approx(150) and a["seconds_to_target"] == pytest.approx(15)
    assert a["flops_to_target"] == pytest.approx(1500) and b["tokens_to_target"] == pytest.approx(300)
    # identical seeds and problems: every replicate is the point estimate
    assert a["tokens_to_target_ci"] == pytest.approx([150, 150]) and a["final_accuracy_ci"] == pytest.approx([0.5, 0.5])
    assert a["seeds_reaching_target"] == 2 and a["tokens_to_target_per_seed"] == pytest.approx([150, 150])
    assert a["curve"]["generated_tokens"] == [0, 100, 200, 300] and a["curve"]["accuracy"][0] == pytest.approx(0.1)
    assert "poise_over_dapo" not in s


def test_summary_target_is_dapos_final_accuracy_with_intervals_over_seeds():
    """DAPO's seed 0 stops a checkpoint early (padded with its last point). Seed resamples {0,0}, {0,1}, {1,1} put
    the target at 0.4, 0.5, 0.6 and DAPO's cost at 200, 250, 300; POISE reaches them at 75, 100, 150 tokens."""
    curves = {"poise": {0: pts([0.3, 0.5, 0.6], tokens=50), 1: pts([0.3, 0.5, 0.6], tokens=50)},
              "dapo": {0: pts([0.2, 0.4]), 1: pts([0.3, 0.5, 0.6])},
              "grpo": {0: pts([0.1, 0.2, 0.3])}}
    s = summarise(curves, initial=[0.1] * 4)
    assert s["target_rule"] == "dapo_final" and s["target_accuracy"] == pytest.approx(0.5)
    assert s["target_accuracy_ci"] == pytest.approx([0.4, 0.6])
    p, d, g = (s["methods"][m] for m in ("poise", "dapo", "grpo"))
    assert d["final_accuracy_mean"] == pytest.approx(0.5) and d["final_accuracies"] == [0.4, 0.6]
    assert d["tokens_to_target"] == pytest.approx(250) and d["tokens_to_target_ci"] == pytest.approx([200, 300])
    assert d["seeds_reaching_target"] == 1 and d["tokens_to_target_per_seed"][0] is None  # seed 0 peaks at 0.4
    assert p["tokens_to_target"] == pytest.approx(100) and p["tokens_to_target_ci"] == pytest.approx([75, 150])
    assert g["tokens_to_target"] is None and g["tokens_to_target_ci"] == [None, None]
    assert g["replicates_reaching_target"] == 0.0 and p["replicates_reaching_target"] == 1.0
    # paired final-accuracy difference: DAPO's seed draw {0,0}, {0,1}, {1,1} gives 0.4, 0.5, 0.6
    assert p["final_minus"]["dapo"] == pytest.approx([0.1, 0.0, 0.2])
    assert g["final_minus"]["dapo"] == pytest.approx([-0.2, -0.3, -0.1]) and "dapo" not in d["final_minus"]
    assert p["final_minus"]["grpo"] == pytest.approx([0.3, 0.3, 0.3])  # neither resample moves these two
    r = s["poise_over_dapo"]
    assert r["tokens"] == pytest.approx(0.4) and r["tokens_ci"] == pytest.approx([0.375, 0.5])
    assert r["seconds"] == pytest.approx(0.4) and r["flops_ci"] == pytest.approx([0.375, 0.5])
    assert s["over_dapo"]["poise"] is r and set(s["over_dapo"]) == {"poise", "grpo"}  # every method over DAPO
    assert s["over_dapo"]["grpo"]["tokens"] is None  # GRPO never reaches the target
    text = report(s, SimpleNamespace(methods=list(curves), seeds=[0, 1], budget_key="generated_tokens",
                                     budget=300, eval_k=4, overrides=[]))
    assert "| grpo | 0.300 [0.300, 0.300] |" in text and "not reached [not reached, not reached]" in text
    assert "0.40x [0.38, 0.50] generated tokens" in text and "DAPO's final seed-mean accuracy" in text
    assert "poise +0.100 [+0.000, +0.200], grpo -0.200 [-0.300, -0.100]" in text
    assert "POISE / DAPO cost to reach 0.500" in text and "grpo / DAPO cost to reach 0.500" in text
    slow = summarise({"poise": {0: pts([0.1, 0.2])}, "dapo": {0: pts([0.3, 0.5])}}, initial=[0.1] * 4, n_boot=100)
    assert slow["poise_over_dapo"]["tokens"] is None and slow["poise_over_dapo"]["tokens_ci"] == [None, None]
    assert "not reached [inf, inf] generated tokens" in report(slow, SimpleNamespace(
        methods=["poise", "dapo"], seeds=[0], budget_key="generated_tokens", budget=200, eval_k=4, overrides=[]))


def test_summary_with_another_reference_targets_its_final_accuracy_and_divides_by_its_costs():
    """reference="poise": the target is POISE's final accuracy, every other method's cost is over POISE's, and DAPO
    is just another method."""
    curves = {"poise": {0: pts([0.2, 0.3, 0.4])}, "fast": {0: pts([0.3, 0.4, 0.5])}, "dapo": {0: pts([0.5, 0.6])}}
    s = summarise(curves, initial=[0.1] * 4, n_boot=100, reference="poise")
    assert s["reference"] == "poise" and s["target_rule"] == "reference_final"
    assert s["target_accuracy"] == pytest.approx(0.4) and s["methods"]["poise"]["tokens_to_target"] == 300
    assert s["methods"]["fast"]["tokens_to_target"] == pytest.approx(200)
    assert set(s["over_reference"]) == {"fast", "dapo"} and "over_dapo" not in s and "poise_over_dapo" not in s
    assert s["over_reference"]["fast"]["tokens"] == pytest.approx(2 / 3)
    assert s["over_reference"]["dapo"]["tokens"] == pytest.approx(0.75 / 3)  # 0.4 is 3/4 of the way to 0.5
    text = report(s, SimpleNamespace(methods=list(curves), seeds=[0], budget_key="generated_tokens", budget=300,
                                     eval_k=4, overrides=[]))
    assert "POISE's final seed-mean accuracy" in text and "fast / POISE cost to reach 0.400: 0.67x" in text
    assert "Final accuracy minus POISE's" in text and "dapo +0.200" in text
    missing = summarise({"a": {0: pts([0.2, 0.3])}}, initial=[0.1] * 4, n_boot=10, reference="poise")
    assert missing["target_rule"] == "best_every_method_reaches" and "over_reference" not in missing


def test_summary_refuses_runs_evaluated_on_other_problems():
    with pytest.raises(ValueError, match="other problems"):
        summarise({"a": {0: pts([0.2], n=3)}}, initial=[0.1] * 4)


def test_an_old_scalar_eval_cache_is_recomputed(tmp_path):
    key = {"uids": ["p1", "p2"], "eval_k": 2, "eval_max_new_tokens": 8}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"10": 0.25, "20": 0.5}))  # the format before per-problem accuracies
    assert load_eval_cache(path, key) == {}
    path.write_text(json.dumps({"key": {**key, "eval_k": 4}, "steps": {"10": {"accuracy": 0.5}}}))
    assert load_eval_cache(path, key) == {}  # evaluated with another k
    path.write_text(json.dumps({"key": key, "steps": {"10": {"accuracy": 0.5, "per_problem": [0.5, 0.5]}}}))
    assert load_eval_cache(path, key) == {10: {"accuracy": 0.5, "per_problem": [0.5, 0.5]}}


def test_reference_budget_gives_the_reference_alone_its_own_budget_and_directory(tmp_path):
    cfg = CompareConfig(methods=["poise", "dapo"], output_dir=str(tmp_path), reference_budget=1_200_000)
    poise, dapo = run_values(cfg, "poise", 3), run_values(cfg, "dapo", 3)
    assert (poise["budget.generated_tokens"], dapo["budget.generated_tokens"]) == (400_000, 1_200_000)
    assert poise["output_dir"] == str(tmp_path / "poise/seed3")
    assert dapo["output_dir"] == str(tmp_path / "dapo@1200000/seed3")
    same = run_values(CompareConfig(output_dir=str(tmp_path)), "dapo", 3)  # 0: the reference at `budget` too
    assert same["budget.generated_tokens"] == 400_000 and same["output_dir"] == str(tmp_path / "dapo/seed3")


def test_a_finished_run_at_another_budget_is_refused_not_reused(tmp_path):
    run = tmp_path / "dapo/seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("budget:\n  generated_tokens: 400000\n")
    (run / "done.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"budget.generated_tokens: the finished run .* differs .*400000 -> 1200000"):
        train_run({"output_dir": str(run), "budget.generated_tokens": 1_200_000})
    assert train_run({"output_dir": str(run), "budget.generated_tokens": 400_000}) == run  # the same budget: reused
    with pytest.raises(ConfigError, match=r"optim.lr: the finished run .* differs"):  # so is a changed override
        train_run({"output_dir": str(run), "budget.generated_tokens": 400_000, "optim.lr": 0.5})


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
    for png in ("accuracy_vs_tokens.png", "accuracy_vs_time.png", "accuracy_vs_flops.png", "reward_vs_tokens.png"):
        assert (out / png).stat().st_size > 1000
    s = res["summary"]
    n = s["policy_params"]
    metrics = {m["step"]: m for m in read_metrics(out / "poise/seed0")}
    for p in res["curves"]["poise"]["0"]:  # FLOPs from the step's counters, the critic counted policy-sized
        totals = {c: metrics[p["step"]][f"compute/total_{c}"] for c in COUNTERS}
        assert p["flops"] == estimated_flops(totals, n, n) and p["flops"] > 2 * n * p["generated_tokens"]
    cache = json.loads((out / "poise/seed0/eval.json").read_text())["steps"]
    assert len(cache["3"]["per_problem"]) == 6 == s["bootstrap"]["problems"]
    assert sum(cache["3"]["per_problem"]) / 6 == pytest.approx(cache["3"]["accuracy"])  # evaluate()'s accuracy
    assert s["target_rule"] == "best_every_method_reaches"
    lo, hi = s["initial_accuracy_ci"]
    assert lo <= s["initial_accuracy"] <= hi
    for m in s["methods"].values():
        lo, hi = m["final_accuracy_ci"]
        assert lo <= m["final_accuracy_mean"] <= hi and lo < hi  # 6 problems that differ: a real interval
        for name in ("tokens", "seconds", "flops"):  # the target is reached by every method by construction
            lo, hi = m[f"{name}_to_target_ci"]
            assert m[f"{name}_to_target"] is not None and lo is not None and lo <= hi
        curve = m["curve"]
        assert len(curve["accuracy"]) == 4 and all(a <= b for a, b in zip(curve["lo"], curve["hi"]))
    assert "FLOPs to target [95% CI]" in (out / "compare.md").read_text()
    (out / "rloo/seed0/eval.json").write_text(json.dumps({"1": 0.0, "2": 0.0, "3": 0.0}))  # an old scalar cache
    assert main(args) == 0  # the finished runs and their evaluations are reused, not redone; the old cache redone
    again = json.loads((out / "compare.json").read_text())
    assert again["curves"] == res["curves"] and again["summary"] == res["summary"]
    longer = args + ["--reference", "rloo", "--reference-budget", "64"]  # the reference alone trains further
    assert main(longer) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["curves"]["poise"] == again["curves"]["poise"]  # POISE's finished run at 48 samples is reused
    assert [p["samples"] for p in res["curves"]["rloo"]["0"]] == [16, 32, 48, 64]  # rloo's new run, in its own dir
    assert (out / "rloo@64/seed0/done.json").is_file() and res["summary"]["target_rule"] == "reference_final"
    assert "(rloo's runs: 64)" in (out / "compare.md").read_text()


def test_the_gpu_reproduction_config_builds_a_valid_run_for_every_method():
    """configs/compare/gpu.yaml cannot run here (no GPU, no Qwen3 download), but every key in it and in each run it
    makes must exist and hold a valid value."""
    from poise.commands.compare import run_values
    from poise.config.command_configs import CompareConfig
    from poise.config.loading import build_config, load_yaml
    from poise.config.train_config import TrainConfig

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
            "reward.function=reward_functions:trl_always_one"]
    assert main(["compare", "--methods", "[rloo]", "--seeds", "[0]", "--budget-key", "samples", "--budget", "16",
                 "--eval-every", "1", "--eval-problems", "4", "--eval-k", "2", "--eval-max-new-tokens", "8",
                 "--output-dir", str(out), "--threads", "1", "--overrides", json.dumps(over)]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["summary"]["initial_accuracy"] == 1.0 and [p["accuracy"] for p in res["curves"]["rloo"]["0"]] == [1.0]


def test_eval_levels_choose_the_held_out_problems_apart_from_the_training_levels(micro_dir, tmp_path):
    """eval_levels: the held-out problems are the test split of those levels, not of the runs' task.levels."""
    from poise.commands.evaluate import select_problems
    from poise.config.train_config import TaskConfig
    from poise.data.tasks.dataset import build_task

    out = tmp_path / "cmp"
    over = ["task.name=parity_test", f"model.name={micro_dir}", "task.train_size=64", "task.levels=[t3d1]",
            "rollout.prompts_per_step=8", "rollout.max_new_tokens=8", "optim.mini_batch_prompts=4"]
    args = ["compare", "--methods", "[rloo]", "--seeds", "[0]", "--budget-key", "samples", "--budget", "16",
            "--eval-every", "1", "--eval-problems", "6", "--eval-k", "2", "--eval-max-new-tokens", "8",
            "--output-dir", str(out), "--threads", "1", "--overrides", json.dumps(over)]
    assert main(args + ["--eval-levels", "[t2d1, t4d1]"]) == 0
    uids = json.loads((out / "initial_eval.json").read_text())["key"]["uids"]
    want, _ = select_problems(build_task(TaskConfig(name="parity_test", levels=["t2d1", "t4d1"])), "test", 6, 0)
    trained, _ = select_problems(build_task(TaskConfig(name="parity_test", levels=["t3d1"])), "test", 6, 0)
    assert uids == [p.uid for p in want] and {p.level for p in want} == {"t2d1", "t4d1"}
    assert not set(uids) & {p.uid for p in trained}
    assert json.loads((out / "rloo/seed0/eval.json").read_text())["key"]["uids"] == uids


def test_compare_help_lists_the_bootstrap_options(capsys):
    """Every CompareConfig docstring becomes --help text (argparse %-formats it: a bare % would crash --help)."""
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--bootstrap INT Bootstrap replicates" in text and "--bootstrap-seed" in text


def config_runs(name: str):
    """A packaged `poise compare` config and the TrainConfig of each of its methods' runs (seed 0)."""
    from poise.commands.compare import run_values
    from poise.config.command_configs import CompareConfig
    from poise.config.loading import build_config, load_yaml
    from poise.config.train_config import TrainConfig

    cfg = build_config(CompareConfig, load_yaml(name))
    return cfg, {method: build_config(TrainConfig, run_values(cfg, method, 0)) for method in cfg.methods}


def test_the_long_response_config_builds_a_valid_run_for_every_method():
    """configs/compare/long.yaml needs a warm start built by the command in its header; its keys and values must be
    valid for every run it makes."""
    cfg, runs = config_runs("compare/long")
    assert cfg.methods == ["poise", "dapo"] and cfg.eval_max_new_tokens == 256
    for run in runs.values():
        assert run.model.name == "runs/sft_long" and run.task.levels == ["t20d1", "t24d1", "t28d1"]
        assert run.rollout.max_new_tokens == 256


def test_the_long_response_config_at_a_lower_rate_changes_only_the_rate_and_the_directory():
    """configs/compare/long_lr2e-5.yaml is long.yaml with every run at optim.lr 2e-5 (the default rate drifts there)."""
    base_cfg, base_runs = config_runs("compare/long")
    cfg, runs = config_runs("compare/long_lr2e-5")
    assert cfg.output_dir == "runs/compare_long_lr2e-5" != base_cfg.output_dir
    assert {k: v for k, v in vars(cfg).items() if k not in ("output_dir", "overrides")} == \
        {k: v for k, v in vars(base_cfg).items() if k not in ("output_dir", "overrides")}
    assert cfg.overrides == [*base_cfg.overrides, "optim.lr=2e-5"]
    for method, run in runs.items():
        assert run.optim.lr == 2e-5 and base_runs[method].optim.lr == 5e-5
        assert run.model.name == "runs/sft_long" and run.task.levels == ["t20d1", "t24d1", "t28d1"]


def test_the_screening_mixture_config_builds_a_valid_run_for_every_method():
    """configs/compare/screening_mixed.yaml: every run it makes trains on the mixture with the hopeless two-digit
    levels, and only the screened preset screens."""
    cfg, runs = config_runs("compare/screening_mixed")
    assert cfg.methods == ["poise", "screening/poise_probe", "dapo"] and len(cfg.seeds) == 5
    for run in runs.values():
        assert run.task.levels == ["t3d1", "t4d1", "t5d1", "t6d1", "t2d2", "t3d2"]
    assert {m: run.screen.mode for m, run in runs.items()} == {"poise": "none", "screening/poise_probe": "probe",
                                                               "dapo": "none"}


def test_the_half_hopeless_screening_config_trains_on_the_mixture_and_evaluates_on_the_default_levels():
    """configs/compare/screening_half.yaml: every run trains on the default levels plus two hopeless two-digit ones,
    held-out problems come from the default levels, and only the screened preset screens (from 4 candidates)."""
    cfg, runs = config_runs("compare/screening_half")
    assert cfg.methods == ["poise", "screening/poise_probe4", "dapo", "rloo", "screening/rloo_probe4"]
    assert cfg.eval_levels == ["t4d1", "t5d1"] and len(cfg.seeds) == 5
    for run in runs.values():
        assert run.task.levels == ["t4d1", "t5d1", "t2d2", "t3d2"]
    assert {m: (run.algorithm.name, run.screen.mode, run.screen.candidates) for m, run in runs.items()} == {
        "poise": ("poise", "none", 2), "screening/poise_probe4": ("poise", "probe", 4), "dapo": ("dapo", "none", 2),
        "rloo": ("rloo", "none", 2), "screening/rloo_probe4": ("rloo", "probe", 4)}


def test_the_two_thirds_hopeless_config_screens_sharply_and_runs_dapo_to_three_times_the_tokens():
    """configs/compare/screening_hopeless.yaml: the default levels plus four hopeless multi-digit ones, held-out
    problems from the default levels, 10 seeds; only the screened preset screens (4 candidates, power 4, floor
    0.01), and DAPO, the reference, runs to 1,200,000 generated tokens in its own directory."""
    cfg, runs = config_runs("compare/screening_hopeless")
    assert cfg.methods == ["poise", "screening/poise_probe4_sharp", "dapo"] and cfg.seeds == list(range(10))
    assert cfg.eval_levels == ["t4d1", "t5d1"] and cfg.reference == "dapo"
    for run in runs.values():
        assert run.task.levels == ["t4d1", "t5d1", "t2d2", "t3d2", "t4d2", "t5d2"]
    assert {m: (run.screen.mode, run.screen.candidates, run.screen.power, run.screen.epsilon)
            for m, run in runs.items()} == {"poise": ("none", 2, 1.0, 0.05), "dapo": ("none", 2, 1.0, 0.05),
                                            "screening/poise_probe4_sharp": ("probe", 4, 4.0, 0.01)}
    assert {m: run.budget.generated_tokens for m, run in runs.items()} == {
        "poise": 400_000, "screening/poise_probe4_sharp": 400_000, "dapo": 1_200_000}
    assert runs["dapo"].output_dir == "runs/compare_hopeless/dapo@1200000/seed0"


def test_the_history_dapo_config_compares_dapo_with_and_without_history_skipping_on_a_pool_that_repeats():
    """configs/compare/screening_history_dapo.yaml (issue 43): DAPO against DAPO with history skipping on the
    hopeless mixture, both to 1,200,000 tokens, from a pool of 500 problems (so prompts come back)."""
    cfg, runs = config_runs("compare/screening_history_dapo")
    assert cfg.methods == ["dapo", "screening/dapo_history"] and len(cfg.seeds) == 4 and not cfg.reference_budget
    assert cfg.eval_levels == ["t4d1", "t5d1"]
    assert {m: (r.algorithm.name, r.algorithm.dynamic_sampling, r.screen.mode, r.task.train_size,
                r.budget.generated_tokens) for m, r in runs.items()} == {
        "dapo": ("dapo", True, "none", 500, 1_200_000),
        "screening/dapo_history": ("dapo", True, "history", 500, 1_200_000)}
    for run in runs.values():
        assert run.task.levels == ["t4d1", "t5d1", "t2d2", "t3d2", "t4d2", "t5d2"]


def test_the_single_rollout_config_compares_every_method_at_128_samples_a_step():
    """configs/compare/single_rollout.yaml (issue 43): poise_single and reinforce_loo at 128 x 1 against POISE and RLOO
    at 64 x 2 and DAPO, over 10 seeds on the default task."""
    cfg, runs = config_runs("compare/single_rollout")
    assert cfg.methods == ["poise_single", "reinforce_loo", "poise", "rloo", "dapo"] and len(cfg.seeds) == 10
    assert {m: (r.rollout.prompts_per_step, r.rollout.group_size) for m, r in runs.items() if m != "dapo"} == {
        "poise_single": (128, 1), "reinforce_loo": (128, 1), "poise": (64, 2), "rloo": (64, 2)}
    assert {m: r.algorithm.advantage for m, r in runs.items()} == {
        "poise_single": "poise_prompt", "reinforce_loo": "batch_loo", "poise": "poise", "rloo": "rloo",
        "dapo": "grpo"}


def test_the_probe_split_config_compares_a_probe_per_task_with_a_shared_one_on_three_tasks():
    """configs/compare/probe_split.yaml (issue 43): the same POISE runs on a three-task mixture with its own warm start,
    one method with probe.split_by task."""
    cfg, runs = config_runs("compare/probe_split")
    assert cfg.methods == ["poise", "probe/poise_by_task"] and cfg.reference == "poise"
    assert {m: r.probe.split_by for m, r in runs.items()} == {"poise": "none", "probe/poise_by_task": "task"}
    for run in runs.values():
        assert run.task.name == "chain_sum+letter_counting+family_relationships"
        assert run.model.name == "runs/sft_mix3" and run.algorithm.advantage == "poise"
