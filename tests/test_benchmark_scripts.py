"""The benchmark scripts' statistics (benchmarks/*/*.py, imported as modules) on hand-made run and eval directories:
compare_gain, spread, screening_bound, prompt_probe_auroc and buffer_ablation; and the benchmarks' README lists every
script."""

import json
from pathlib import Path

import numpy as np
import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/<question>/<name>.py imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    [path] = BENCHMARKS.glob(f"*/{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_gain_pairs_each_seeds_final_with_the_initial_model_per_problem(tmp_path):
    """benchmarks/methods/compare_gain.py on a hand-made compare directory: 2 seeds x 4 problems, k = 4. The gain is the
    mean over seeds and problems of final - initial, inside its bootstrap interval; the step phases are averaged
    over the whole run, and a run not yet evaluated is skipped."""
    mod = load_benchmark("compare_gain")
    initial = [0.0, 0.25, 0.5, 0.0]
    (tmp_path / "initial_eval.json").write_text(json.dumps({"steps": {"0": {"per_problem": initial}}}))
    finals = {0: [0.25, 0.25, 0.75, 0.0], 1: [0.0, 0.5, 0.5, 0.25]}  # gains 0.5 / 4 and 0.5 / 4 per problem
    for s, final in finals.items():
        run = tmp_path / "poise" / f"seed{s}"
        run.mkdir(parents=True)
        steps = {"10": {"per_problem": [0.0] * 4}, "12": {"per_problem": final}}  # the last step is the final
        (run / "eval.json").write_text(json.dumps({"steps": steps}))
        rows = [{"reward/mean": 0.1 * (i + 1), "reward/frac_zero_std_groups": 0.5, "time/step_s": 2.0,
                 "time/generate_s": 0.5, "time_total/step_s": 2.0 * (i + 1), "time_total/generate_s": 0.5 * (i + 1),
                 "time_total/update_s": 1.0 * (i + 1), "compute/generated_tokens": 300, "compute/samples": 2}
                for i in range(12)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "poise" / "seed2").mkdir()  # trained, not evaluated
    res = mod.main([str(tmp_path)])["methods"]["poise"]
    assert res["seeds"] == 2 and res["gain"] == pytest.approx(0.125)
    assert res["gain_ci"][0] <= 0.125 <= res["gain_ci"][1] and res["gain_ci"][0] < res["gain_ci"][1]
    r = res["runs"]["seed0"]
    assert r["final_step"] == 12 and r["final_accuracy"] == pytest.approx(0.3125)
    assert r["reward_first"] == pytest.approx(0.45) and r["reward_last"] == pytest.approx(0.85)
    assert r["generate_share"] == pytest.approx(0.25) and r["tokens_per_response"] == pytest.approx(150)
    assert "rounds" not in r


def test_default_gain_passes_the_task_options_of_the_training_arguments_to_the_evaluations():
    """benchmarks/default_run/default_gain.py's task_args keeps each `--task.*` option with its value, in either
    spelling, and drops the training-only ones, so that before and after are scored on the task that was trained on."""
    mod = load_benchmark("default_gain")
    extra = ["--task.levels", "[t4d1, t5d1]", "--seed", "1", "--task.name=chain_sum", "--threads", "1",
             "--task.eval_size", "64"]
    assert mod.task_args(extra) == ["--task.levels", "[t4d1, t5d1]", "--task.name=chain_sum", "--task.eval_size", "64"]
    assert mod.task_args(["--max-steps", "20"]) == []


def test_spread_over_runs_gives_the_mean_and_an_interval_for_the_unequal_fractions():
    """benchmarks/screening/spread.py's runs_mean on hand-made figures: the unequal fractions get a bootstrap
    interval over runs that holds the mean and lies within the runs' range; the other figures only a mean."""
    mod = load_benchmark("spread")
    spreads = [{"unequal_steps_1_20": u, "step_s": 2.0} for u in (0.30, 0.36, 0.40, 0.42, 0.52)]
    m = mod.runs_mean(spreads)
    assert m["unequal_steps_1_20"] == pytest.approx(0.40) and m["step_s"] == 2.0 and "step_s_ci" not in m
    lo, hi = m["unequal_steps_1_20_ci"]
    assert 0.30 <= lo < 0.40 < hi <= 0.52
    same = mod.runs_mean([{"unequal_all": 0.25}] * 3)
    assert same["unequal_all_ci"] == (0.25, 0.25)


def test_spread_of_a_run_counts_its_steps_and_a_screening_prefill_against_the_tokens_generated():
    """benchmarks/screening/spread.py's run_spread on hand-made metrics rows: steps, unequal fractions, and for a
    screened run the prefill's prompt tokens and the generated tokens summed over the run (absent without screening)."""
    mod = load_benchmark("spread")

    def row(i, **extra):
        return {"reward/frac_zero_std_groups": 0.5 if i % 2 else 0.7, "time/generate_s": 1.0, "time/step_s": 2.0,
                "time_total/generate_s": 3.0, "time_total/step_s": 6.0, "time_total/update_s": 1.5,
                "tokens/generated": 100 + i, **extra}

    plain = mod.run_spread([row(i) for i in range(4)])
    assert plain["steps"] == 4 and plain["unequal_all"] == pytest.approx(0.4) and "prefill_tokens" not in plain
    screened = mod.run_spread([row(i, **{"screen/prefill_tokens": 0 if i == 0 else 250}) for i in range(4)])
    assert (screened["prefill_tokens"], screened["generated_tokens"]) == (750, 406)
    assert screened["generate_share"] == 0.5 and screened["update_share"] == 0.25


def test_screening_bound_estimates_unequal_pairs_without_bias_and_needs_two_samples():
    """benchmarks/screening/screening_bound.py: c of k correct gives 2c(k - c)/(k(k - 1)), the share of sample
    pairs that differ (all pairs of 2 of 2 with one correct differ; 2 of 4 correct: 4 of 6 pairs)."""
    mod = load_benchmark("screening_bound")
    assert mod.unequal_prob([0, 1, 2], 2).tolist() == [0.0, 1.0, 0.0]
    assert mod.unequal_prob([2, 4], 4) == pytest.approx([4 / 6, 0.0])
    with pytest.raises(ValueError, match="k >= 2"):
        mod.unequal_prob([1], 1)


def test_screening_bound_auroc_weights_each_problem_by_its_chance_to_be_a_positive():
    """Binary outcomes give the usual AUROC (positives 2, 4 against negatives 1, 3: 3 of 4 pairs ordered), a constant
    score 1/2; fractional ones match the pairwise sum by hand, pairs of a problem with itself left out."""
    mod = load_benchmark("screening_bound")
    assert mod.weighted_auroc([1, 2, 3, 4], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert mod.weighted_auroc([5, 5, 5], [0.2, 0.9, 0.4]) == pytest.approx(0.5)
    assert mod.weighted_auroc([1, 2], [0.5, 1.0]) == pytest.approx(1.0)
    assert mod.weighted_auroc([1, 2], [1.0, 0.5]) == pytest.approx(0.0)
    # i > j pairs: 0.5 * 0.8 + 0.8 * 0.8 + 0.8 * 0.5 = 1.44, over 1.5 * 1.5 - (0.16 + 0.25 + 0.16) = 1.68
    assert mod.weighted_auroc([1, 2, 3], [0.2, 0.5, 0.8]) == pytest.approx(1.44 / 1.68)
    assert mod.weighted_auroc([1, 1, 3], [0.2, 0.5, 0.8]) == pytest.approx((0.5 * 0.2 * 0.5 + 0.5 * 0.5 * 0.8
                                                                            + 0.8 * 0.8 + 0.8 * 0.5) / 1.68)
    import torch
    from poise.algo.stats import auroc  # binary labels with ties: the project's Mann-Whitney AUROC
    s, y = np.random.default_rng(3).integers(0, 5, 60), np.random.default_rng(4).random(60) < 0.4
    assert mod.weighted_auroc(s, y.astype(float)) == pytest.approx(auroc(torch.from_numpy(s), torch.from_numpy(y)))


def test_screening_bound_keeps_the_most_uncertain_prompts_greedily_and_near_uniformly_with_a_large_floor():
    """A pool of every problem: greedy keeps the 2 largest p(1 - p) (p 0.5 and 0.4, q 0.9 and 0.7); the shipped
    rule with a floor far above 1/4 keeps close to a uniform 2 of 4 (mean q 0.425); a pool larger than the problems
    is refused."""
    mod = load_benchmark("screening_bound")
    p, q = np.array([0.5, 0.1, 0.4, 0.0]), np.array([0.9, 0.1, 0.7, 0.0])
    rng = np.random.default_rng(0)
    assert mod.kept_unequal(p, q, 2, 2, "greedy", 0.05, rng, 10) == pytest.approx(0.8)
    assert mod.kept_unequal(p, q, 2, 2, "shipped", 1e6, rng, 4000) == pytest.approx(0.425, abs=0.01)
    soft = mod.kept_unequal(p, q, 2, 2, "shipped", 1e-6, rng, 4000)
    assert 0.425 < soft < 0.8
    sharp = mod.kept_unequal(p, q, 2, 2, "shipped", 1e-6, rng, 4000, power=8.0)  # weights 0.25, 7e-5, 0.18, 0
    assert soft < sharp == pytest.approx(0.8, abs=0.01)
    assert mod.kept_unequal(p, q, 1, 4, "greedy", 0.05, rng, 3) == pytest.approx(0.425)
    with pytest.raises(ValueError, match="2 x 3 candidates"):
        mod.kept_unequal(p, q, 2, 3, "greedy", 0.05, rng, 1)


def test_screening_bound_ranks_on_one_half_of_the_samples_and_judges_on_the_other(tmp_path):
    """halves: the first half's pass rate ranks and the second half judges, then the other way round; the level
    screener sees its level's mean. main writes every figure with a bootstrap interval around it."""
    mod = load_benchmark("screening_bound")
    rows = [{"level": "a", "scores": [1, 1, 1, 1, 1, 0, 0, 0]}, {"level": "a", "scores": [0, 0, 0, 0, 1, 1, 0, 0]},
            {"level": "b", "scores": [1, 0, 0, 0, 1, 1, 1, 1]}]
    (p1, lv1, q1), (p2, lv2, q2) = mod.halves(rows)
    assert p1.tolist() == [1.0, 0.0, 0.25] and lv1.tolist() == [0.5, 0.5, 0.25]
    assert q1 == pytest.approx([0.5, 4 / 6, 0.0])  # 1 of 4, 2 of 4, 4 of 4 correct in the second half
    assert p2.tolist() == [0.25, 0.5, 1.0] and q2 == pytest.approx([0.0, 0.0, 0.5])
    path = tmp_path / "eval.jsonl"
    rng = np.random.default_rng(1)
    path.write_text("".join(json.dumps({"level": f"l{i % 3}", "scores": (rng.random(8) < i / 40).astype(int).tolist()})
                            + "\n" for i in range(40)))
    res = mod.main([str(path), "--candidates", "1", "2", "--prompts", "8", "--pools", "20", "--bootstrap", "30",
                    "--out", str(tmp_path / "b.json")])["results"][str(path)]
    assert res["problems"] == 40 and res["k"] == 8
    assert res["point"]["kept/oracle/greedy/1"] == pytest.approx(res["point"]["unequal"], abs=0.05)
    for key, v in res["point"].items():
        lo, hi = res["ci"][key]
        assert lo <= hi and lo - 0.1 <= v <= hi + 0.1, key
    assert json.loads((tmp_path / "b.json").read_text())["results"][str(path)]["point"] == res["point"]


def test_prompt_probe_auroc_predicts_each_problem_from_a_fit_that_did_not_see_it():
    """benchmarks/screening/prompt_probe_auroc.py's cross_fitted: an exact linear target is recovered, and changing the
    targets of one fold leaves that fold's own predictions unchanged while the other folds' move."""
    mod = load_benchmark("prompt_probe_auroc")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) * [1.0, 10.0, 0.1]
    y = X @ np.array([1.0, -0.2, 5.0]) + 3.0
    assert mod.cross_fitted(X, y, 1e-9) == pytest.approx(y, abs=1e-6)
    fold = np.random.default_rng(0).permutation(200)[0::5]
    y2 = y.copy()
    y2[fold] += rng.normal(size=len(fold)) * 100
    before, after = mod.cross_fitted(X, y, 10.0), mod.cross_fitted(X, y2, 10.0)
    assert after[fold] == pytest.approx(before[fold], abs=1e-9)
    others = np.setdiff1d(np.arange(200), fold)
    assert np.abs(after[others] - before[others]).max() > 1e-3


def test_buffer_ablation_over_seeds_pairs_each_setting_with_the_reference_per_seed_and_problem():
    """benchmarks/default_run/buffer_ablation.py's over_seeds on hand-made eval rows (k = 4): a constant
    per-problem gap gives that difference with a zero-width interval; a varying one an interval that holds the mean within the range of
    the per-problem gaps; a setting run on other seeds than the reference is refused, naming it."""
    mod = load_benchmark("buffer_ablation")

    def rows(counts):
        return [{"n_correct": c, "scores": [1.0] * c + [0.0] * (4 - c)} for c in counts]

    evals = {"16": {0: rows([3, 3, 3]), 1: rows([3, 3, 3])}, "32": {0: rows([2, 2, 2]), 1: rows([2, 2, 2])}}
    res = mod.over_seeds(evals, "32", n_boot=200)
    assert res["16"]["mean"] == pytest.approx(0.75) and res["16"]["difference"] == pytest.approx(0.25)
    assert res["16"]["difference_ci"] == pytest.approx([0.25, 0.25]) and res["16"]["seeds"] == [0, 1]
    assert "difference" not in res["32"] and res["32"]["per_seed"] == [0.5, 0.5]
    evals["16"] = {0: rows([4, 2, 3]), 1: rows([0, 0, 0])}   # per-seed gaps +0.25 and -0.5
    r = mod.over_seeds(evals, "32", n_boot=500)["16"]
    assert r["difference"] == pytest.approx(-0.125) and r["per_seed"] == pytest.approx([0.75, 0.0])
    lo, hi = r["difference_ci"]
    assert -0.5 <= lo < -0.125 < hi <= 0.5   # within the range of the per-seed, per-problem gaps
    evals["16"] = {0: rows([3, 3, 3])}
    with pytest.raises(SystemExit, match="setting 16 has seeds"):
        mod.over_seeds(evals, "32")


def test_pool_seeds_concatenates_every_files_seeds_and_brackets_the_difference(tmp_path):
    pool = load_benchmark("pool_seeds")
    files = []
    for i, (a, b) in enumerate([([0.50, 0.52], [0.56, 0.58]), ([0.54, 0.56, 0.58], [0.57, 0.59, 0.61])]):
        f = tmp_path / f"c{i}.json"
        f.write_text(json.dumps({"summary": {"methods": {"a": {"final_accuracies": a},
                                                         "b": {"final_accuracies": b}}}}))
        files.append(str(f))
    r = pool.pooled_difference(files, "a", "b", n_boot=2000)
    assert r["a"] == [0.50, 0.52, 0.54, 0.56, 0.58] and len(r["b"]) == 5
    assert r["diff"] == pytest.approx(np.mean(r["b"]) - np.mean(r["a"])) == pytest.approx(0.042)
    assert r["ci"][0] < r["diff"] < r["ci"][1] and r["ci"][1] - r["ci"][0] < 0.1
    one = pool.pooled_difference(files[:1], "a", "b", n_boot=2000)  # the first file alone: its own two seeds
    assert one["diff"] == pytest.approx(0.06)


def test_every_benchmark_sits_in_a_question_folder_and_the_readme_runs_it():
    """No loose script in benchmarks/, and benchmarks/README.md names each script with its run command."""
    readme = (BENCHMARKS / "README.md").read_text()
    scripts = sorted(BENCHMARKS.glob("*/*.py"))
    assert not list(BENCHMARKS.glob("*.py")) and len(scripts) >= 30
    for path in scripts:
        rel = path.relative_to(BENCHMARKS.parent).as_posix()
        assert f"`{path.name}`" in readme and f"python {rel}" in readme, rel


def test_paired_difference_pairs_seeds_and_problems_and_takes_the_geometric_mean_variance_ratio(tmp_path, capsys):
    """benchmarks/methods/paired_difference.py on a hand-made compare directory: method a beats b by 0.25 on every
    problem of the two common seeds; a seed of one method alone is left out; the seeds-alone and problems-alone
    half-widths each see their own spread; the variance ratio is the geometric
    mean of the per-seed ratios of medians after the warm-up; probe figures average the steps that used the probe."""
    mod = load_benchmark("paired_difference")
    finals = {"a": {0: [0.5, 0.75, 1.0], 1: [0.25, 0.5, 0.75], 2: [1.0, 1.0, 1.0]},
              "b": {0: [0.25, 0.5, 0.75], 1: [0.0, 0.25, 0.5]}}
    var = {"a": {0: 1.0, 1: 2.0, 2: 5.0}, "b": {0: 4.0, 1: 2.0}}  # ratios 0.25 and 1: geometric mean 0.5
    write_runs(tmp_path, finals, var)
    res = mod.main([str(tmp_path), "--pairs", "a:b", "--after", "2"])
    p = res["pairs"]["a - b"]
    assert p["seeds"] == [0, 1] and p["problems"] == 3 and p["diff"] == pytest.approx(0.25)
    assert p["diff_ci"] == pytest.approx([0.25, 0.25]) and p["grad_var_ratio"] == pytest.approx(0.5)
    assert p["grad_var_ratio_ci"][0] == pytest.approx(0.25) and p["grad_var_ratio_ci"][1] == pytest.approx(1.0)
    q = res["probes"]["a"]
    assert q["seeds"] == 3 and q["pearson"] == pytest.approx(0.5) and q["auroc"] == pytest.approx(0.7)
    assert q["t/pearson"] == pytest.approx(0.1) and q["t/pearson_range"] == pytest.approx([0.0, 0.2])  # per task
    assert res["probes"]["b"] == {} and "seeds [2] are evaluated for one method only" in capsys.readouterr().err
    assert res["finals"]["a"][2] == [1.0, 1.0, 1.0] and sorted(res["finals"]["b"]) == [0, 1]
    # more seeds in a second directory are pooled; a seed found in both is refused
    write_runs(tmp_path / "more", {"a": {3: [0.0, 0.0, 0.0]}, "b": {3: [1.0, 1.0, 1.0]}}, {"a": {3: 1.0}, "b": {3: 1.0}})
    pooled = mod.main([str(tmp_path), str(tmp_path / "more"), "--pairs", "a:b", "--after", "2"])["pairs"]["a - b"]
    assert pooled["seeds"] == [0, 1, 3] and pooled["diff"] == pytest.approx((0.25 + 0.25 - 1.0) / 3)
    # the spread is between seeds only (every problem's mean over seeds is the same): more problems would not help
    assert pooled["problems_only_halfwidth"] == pytest.approx(0) and pooled["seeds_only_halfwidth"] > 0.2
    assert p["seeds_only_halfwidth"] == pytest.approx(0) and p["problems_only_halfwidth"] == pytest.approx(0)
    write_runs(tmp_path / "again", {"a": {1: [0.0] * 3}}, {"a": {1: 1.0}})
    with pytest.raises(SystemExit, match="a seed 1 is in"):
        mod.main([str(tmp_path), str(tmp_path / "again"), "--pairs", "a:b"])


def write_runs(root, finals: dict, var: dict) -> None:
    """Hand-made `poise compare` runs under root/<method>/seed<s>: eval.json whose last checkpoint has the given
    per-problem accuracies, and metrics whose grad_var_proxy is 100 up to step 2 and var[m][s] after (method a's
    rows carry probe figures)."""
    for m, seeds in finals.items():
        for s, final in seeds.items():
            run = root / m / f"seed{s}"
            run.mkdir(parents=True)
            (run / "eval.json").write_text(json.dumps({"steps": {"5": {"per_problem": [0.0] * 3},
                                                                  "20": {"per_problem": final}}}))
            rows = [{"step": i, "optim/grad_var_proxy": 100.0 if i <= 2 else var[m][s],
                     **({"probe/used": float(i > 2), "probe/pearson": 0.5 if i > 2 else -1.0, "probe/mae": 0.4,
                         "probe/auroc": 0.7, "probe/t/pearson": 0.1 * s if i != 4 else None} if m == "a" else {})}
                    for i in range(1, 6)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sampling_stats_totals_each_run_and_spans_the_seeds(tmp_path):
    """benchmarks/screening/sampling_stats.py on hand-made metrics: totals and per-step means per run, then the mean
    and range over seeds; a run without dynamic sampling or screening metrics counts 1 round, all kept, 0 skipped."""
    mod = load_benchmark("sampling_stats")
    for m, seed, kept, skipped in (("d", 0, [2, 4], [0, 3]), ("d", 1, [4, 4], [1, 1]), ("plain", 0, None, None)):
        run = tmp_path / m / f"seed{seed}"
        run.mkdir(parents=True)
        rows = [{"step": i + 1, "compute/total_generated_tokens": 100 * (i + 1), "time_total/step_s": 4.0 * (i + 1),
                 "time_total/generate_s": 3.0 * (i + 1), "time_total/update_s": 1.0 * (i + 1),
                 **({"dynamic_sampling/groups_trained": kept[i], "dynamic_sampling/kept_fraction": kept[i] / 8,
                     "dynamic_sampling/rounds": 2, "screen/skipped": skipped[i]} if kept else {})} for i in range(2)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = mod.main([str(tmp_path), "--methods", "d", "plain"])["methods"]
    d = res["d"]
    assert d["seeds"] == [0, 1] and d["groups_trained"] == {"mean": 7, "min": 6, "max": 8}
    assert d["skipped"]["mean"] == 2.5 and d["kept_fraction"]["min"] == pytest.approx(6 / 16)
    assert d["seconds_per_group"]["max"] == pytest.approx(8.0 / 6) and d["rounds"]["mean"] == 2
    p = res["plain"]
    assert p["groups_trained"]["mean"] == 0 and p["rounds"]["mean"] == 1 and p["kept_fraction"]["mean"] == 1.0


def test_probe_by_level_scores_each_level_and_the_level_mean_oracle(tmp_path):
    """benchmarks/value_estimation/probe_by_level.py on a hand-made probe-eval JSON: an estimator that ranks prompts
    perfectly within each level has r 1 per level; the level-mean oracle predicts each level's mean target."""
    mod = load_benchmark("probe_by_level")
    target = [0.0, 0.25, 0.5, 0.5, 0.75, 1.0]
    res = {"train_mean_reward": 0.5, "per_prompt": {
        "level": ["a", "a", "a", "b", "b", "b"], "target": target, "solved": [t > 0 for t in target],
        "predictions": {"good": [0.1, 0.2, 0.3, 0.6, 0.7, 0.8], "flat": [0.4] * 6}}}
    path = tmp_path / "pe.json"
    path.write_text(json.dumps(res))
    out = mod.main([str(path), "--out", str(tmp_path / "by.json")])
    assert out["a"]["good"]["pearson"] == pytest.approx(1.0) and out["b"]["good"]["pearson"] == pytest.approx(1.0)
    oracle = out["all"]["level mean (oracle)"]
    assert oracle["pred_mean"] == pytest.approx(0.5) and oracle["mae"] == pytest.approx((0.25 * 4) / 6)
    assert "level mean (oracle)" not in out["a"] and out["all"]["flat"]["n"] == 6
    assert json.loads((tmp_path / "by.json").read_text())["by_level"]["b"]["good"]["n"] == 3


def test_fused_baseline_beats_either_view_when_their_errors_are_independent(tmp_path):
    """benchmarks/value_estimation/fused_baseline.py on a hand-made probe-eval JSON: the sibling prediction f and the
    prompt prediction g each see V through independent noise, so the cross-fitted fusion has a smaller squared error
    than either, with an interval below 0; its weights split between the two; a prompt probe that is V itself leaves
    nothing for the fusion to add; RLOO's baseline is listed with E (b - V)^2 = mean Var(r | x)."""
    mod = load_benchmark("fused_baseline")
    rng = np.random.default_rng(0)
    n, k = 600, 8
    v = rng.uniform(0.1, 0.9, n)
    target = rng.binomial(k, v) / k
    f, g = v + rng.normal(0, 0.15, n), v + rng.normal(0, 0.15, n)
    res = {"samples": k, "per_prompt": {"target": target.tolist(), "predictions": {
        "probe": f.tolist(), "prompt_probe/2": g.tolist(), "prompt_probe/10": v.tolist()}}}
    path = tmp_path / "pe.json"
    path.write_text(json.dumps(res))
    out = mod.main([str(path), "--out", str(tmp_path / "fused.json")])
    noisy, exact = out["layers"]["2"], out["layers"]["10"]
    assert noisy["fused_minus_sibling"]["hi"] < 0 and noisy["fused_minus_prompt"]["hi"] < 0
    _, w_f, w_g = noisy["weights"]
    assert 0.25 < w_f < 0.6 and 0.25 < w_g < 0.6
    assert exact["weights"][1] == pytest.approx(0, abs=0.05) and exact["weights"][2] == pytest.approx(1, abs=0.1)
    est = out["estimators"]
    assert est["fused@2"]["excess_mse"] < min(est["sibling"]["excess_mse"], est["prompt@2"]["excess_mse"])
    assert est["prompt@10"]["excess_mse"] == pytest.approx(0, abs=0.003)  # V itself: only the sampling noise is left
    assert est["sibling reward (RLOO)"]["excess_mse"] == pytest.approx(float((v * (1 - v)).mean()), rel=0.1)
    assert est["sibling"]["advantage_variance_vs_sibling"] == 1.0
    assert json.loads((tmp_path / "fused.json").read_text())["n"] == n
    del res["per_prompt"]["predictions"]["prompt_probe/2"], res["per_prompt"]["predictions"]["prompt_probe/10"]
    path.write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="prompt_probe"):
        mod.main([str(path)])
