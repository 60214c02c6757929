"""`poise eval`: the pass@k estimator, metric aggregation, and end-to-end runs on the micro model."""

import itertools
import json
import math
from pathlib import Path

import pytest

from poise.commands.cli import main
from poise.commands.evaluate import (aggregate, aggregate_levels, default_output, is_correct, pass_at_k, pass_ks,
                            select_problems, summary_table)
from poise.config.command_configs import EvalConfig
from poise.config.errors import ConfigError
from poise.config.loading import build_config, flat_fields
from poise.data.tasks import ChainSumTask, get_task, register_task
from poise.data.tasks.dataset import task_kwargs
from reward_functions import nan_sometimes_reward, partial_credit_reward


class NanTask(ChainSumTask):
    """chain_sum prompts; parity reward, but unscorable (NaN or None) for lengths divisible by 3 or 5."""

    name = "nan_test"
    reward_fn = staticmethod(nan_sometimes_reward)


register_task("nan_test", NanTask)


class PartialTask(ChainSumTask):
    """chain_sum prompts; reward 1 for an even-length response and 0.5 (partial credit) for an odd one."""

    name = "partial_test"
    reward_fn = staticmethod(partial_credit_reward)


register_task("partial_test", PartialTask)


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run(tmp_path, micro_dir, name="out.jsonl", *extra):
    out = tmp_path / "nested" / "dir" / name  # parent folders do not exist yet
    argv = ["eval", "--model.name", str(micro_dir), "--task.name", "parity_test", "--num-problems", "7", "--k", "3",
            "--max-new-tokens", "8", "--batch-size", "3", "--threads", "1", "--output", str(out), *extra]
    assert main(argv) == 0
    return out, read_rows(out), json.loads(Path(f"{out}.summary.json").read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Pure metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_pass_at_k_equals_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            correct = set(range(c))  # which samples are correct does not matter, only how many
            for k in range(1, n + 1):
                draws = list(itertools.combinations(range(n), k))
                brute = sum(bool(correct & set(d)) for d in draws) / len(draws)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8) and pass_at_k(8, 1, 8) == 1.0 and pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(200, 3, 100) == pytest.approx(1 - math.comb(197, 100) / math.comb(200, 100))
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_aggregation_on_hand_made_scores():
    assert [is_correct(s) for s in (1.0, 0.0, None, 0.5)] == [True, False, False, False]
    assert pass_ks(8) == [1, 2, 4, 8] and pass_ks(6) == [1, 2, 4, 6] and pass_ks(1) == [1]
    m = aggregate([4, 0, 1, 2], k=4)
    assert m["problems"] == 4
    assert m["avg_at_k"] == pytest.approx((1 + 0 + 0.25 + 0.5) / 4)
    assert m["pass_at_k"] == pytest.approx(3 / 4)
    assert m["pass_at"]["1"] == pytest.approx(m["avg_at_k"]) and m["pass_at"]["4"] == pytest.approx(m["pass_at_k"])
    # pass@2 by hand: c=4 -> 1, c=0 -> 0, c=1 -> 1 - C(3,2)/C(4,2) = 1/2, c=2 -> 1 - C(2,2)/C(4,2) = 5/6
    assert m["pass_at"]["2"] == pytest.approx((1 + 0 + 0.5 + 5 / 6) / 4)
    rows = [{"level": "b", "n_correct": 2, "unscorable": 1}, {"level": "a", "n_correct": 0, "unscorable": 0},
            {"level": "b", "n_correct": 0, "unscorable": 2}, {"level": "z", "n_correct": 1, "unscorable": 0}]
    got = aggregate_levels(rows, k=2, order=["b", "a", "missing"])
    assert list(got["levels"]) == ["b", "a", "z"]  # the task's order first, then the rest sorted
    assert got["levels"]["b"] == {"problems": 2, "avg_at_k": 0.5, "pass_at_k": 0.5,
                                  "pass_at": {"1": 0.5, "2": 0.5}, "unscorable": 3}
    assert got["overall"]["avg_at_k"] == pytest.approx((1 + 0 + 0 + 0.5) / 4) and got["overall"]["unscorable"] == 3
    table = summary_table(got, 2).splitlines()
    assert table[0] == "| level | problems | Avg@2 | pass@2 |"
    assert table[2] == "| b | 2 | 0.500 | 0.500 |" and table[-1] == "| all | 4 | 0.375 | 0.500 |"
    single = aggregate_levels([{**r, "level": "all"} for r in rows], k=2)
    assert summary_table(single, 2).splitlines()[2:] == ["| all | 4 | 0.375 | 0.500 |"]  # not twice


def test_default_output_and_distinct_problems():
    assert default_output("default", "chain_sum") == Path("runs/eval/default-chain_sum.jsonl")
    assert default_output("runs/x/policy", "gsm8k") == Path("runs/eval/x_policy-gsm8k.jsonl")
    assert default_output("micro", "dataset", "/data/my qs.jsonl") == Path("runs/eval/micro-my_qs.jsonl")
    # level t2d1 holds only ~45 held-out questions: asking for 120 of it returns each once
    problems, info = select_problems(get_task("chain_sum", levels=["t2d1"]), "test", 120, seed=0)
    assert len({p.uid for p in problems}) == len(problems) < 120
    assert info["repeats_dropped"] == 120 - len(problems) and info["split_size"] is None


# ---------------------------------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------------------------------


def test_eval_writes_rows_and_a_summary_that_agree(tmp_path, micro_dir, capsys):
    out, rows, summary = run(tmp_path, micro_dir)
    assert len(rows) == 7 and summary["problems"] == 7 and summary["samples"] == 21
    for r in rows:
        assert len(r["responses"]) == len(r["scores"]) == 3 and r["answer"] and r["question"] and r["uid"]
        # parity_test: reward 1 for an even-length response, scored in the verifier worker
        assert r["scores"] == [float(len(t) % 2 == 0) for t in r["responses"]]
        assert r["n_correct"] == sum(s == 1.0 for s in r["scores"])
    avg = sum(r["n_correct"] / 3 for r in rows) / 7
    assert summary["overall"]["avg_at_k"] == pytest.approx(avg) and 0 < avg < 1
    assert summary["overall"]["pass_at_k"] == pytest.approx(sum(r["n_correct"] > 0 for r in rows) / 7)
    assert summary["overall"]["pass_at"]["1"] == pytest.approx(avg)
    for level, m in summary["levels"].items():
        mine = [r for r in rows if r["level"] == level]
        assert m["problems"] == len(mine) and m["avg_at_k"] == pytest.approx(sum(r["n_correct"] for r in mine) / 3
                                                                             / len(mine))
    assert list(summary["levels"]) == list(ChainSumTask.default_levels)
    assert summary["config"]["k"] == 3 and summary["unscorable"] == 0 and summary["samples_per_s"] > 0
    assert summary["wall_time_s"] >= summary["loop_s"] > 0
    printed = capsys.readouterr().out
    assert "| level | problems | Avg@3 | pass@3 |" in printed and f"| all | 7 | {avg:.3f} |" in printed


def test_one_definition_of_correct_for_eval_compare_and_sft(tmp_path, micro_dir):
    """`poise eval` and the in-process `evaluate()` (compare, sft) count a sample correct only at reward >= 1: with
    partial-credit rewards both report the fraction of full-credit samples, not the mean reward."""
    from poise.commands.compare import evaluate_checkpoint
    from poise.commands.evaluate import evaluate
    from poise.data.verifier import SafeVerifier
    from poise.rollout.models import load_local

    _, rows, summary = run(tmp_path, micro_dir, "partial.jsonl", "--task.name", "partial_test")
    scores = [s for r in rows for s in r["scores"]]
    assert 0.5 in scores and 1.0 in scores  # partial credit occurred, so mean reward != accuracy
    assert summary["overall"]["avg_at_k"] == pytest.approx(sum(s >= 1 for s in scores) / len(scores))
    assert summary["overall"]["avg_at_k"] < sum(scores) / len(scores)

    model, tok = load_local(str(micro_dir))
    task = get_task("partial_test")
    task.verifier = SafeVerifier(timeout=5.0)
    problems = task.problems("test", 6, seed=0)
    res = evaluate(model, tok, task, problems, samples=3, max_new_tokens=8, seed=0, progress=False)
    scores = [s for p in res["per_problem"] for s in p["rewards"]]
    assert 0.5 in scores and 1.0 in scores
    assert res["accuracy"] == pytest.approx(sum(s >= 1 for s in scores) / len(scores))
    assert res["accuracy"] < sum(scores) / len(scores)
    cfg = type("Cfg", (), {"eval_k": 3, "eval_max_new_tokens": 8, "eval_batch_prompts": 64})()
    point = evaluate_checkpoint(model, tok, task, problems, cfg)  # compare's measurement: the same numbers
    assert point["accuracy"] == res["accuracy"]
    assert point["per_problem"] == [sum(s >= 1 for s in p["rewards"]) / 3 for p in res["per_problem"]]


def test_same_seed_same_output_other_seed_differs(tmp_path, micro_dir):
    a, rows_a, _ = run(tmp_path, micro_dir, "a.jsonl")
    b, rows_b, _ = run(tmp_path, micro_dir, "b.jsonl")
    assert a.read_text() == b.read_text()
    _, rows_c, _ = run(tmp_path, micro_dir, "c.jsonl", "--seed", "1")
    assert [r["responses"] for r in rows_c] != [r["responses"] for r in rows_a]


def test_unscorable_samples_are_counted_and_not_correct(tmp_path, micro_dir):
    out = tmp_path / "nan.jsonl"
    assert main(["eval", "--model.name", str(micro_dir), "--task.name", "nan_test", "--num-problems", "6", "--k", "4",
                 "--max-new-tokens", "8", "--threads", "1", "--output", str(out)]) == 0
    rows, summary = read_rows(out), json.loads(Path(f"{out}.summary.json").read_text())
    expected_none = [len(t) % 3 == 0 or len(t) % 5 == 0 for r in rows for t in r["responses"]]
    assert [s is None for r in rows for s in r["scores"]] == expected_none
    assert summary["unscorable"] == sum(expected_none) == sum(r["unscorable"] for r in rows) > 0
    assert all(r["n_correct"] == sum(s == 1.0 for s in r["scores"] if s is not None) for r in rows)


def test_dataset_file_evaluates_with_the_math_reward(tmp_path, micro_dir):
    data = tmp_path / "qs.jsonl"
    data.write_text("".join(json.dumps({"q": f"What is {a} + {a + 1}?", "a": 2 * a + 1, "lv": "easy" if a < 15
                                        else "hard"}) + "\n" for a in range(30)))
    out = tmp_path / "ds.jsonl"
    task_args = ["--task.name", "dataset", "--task.path", str(data), "--task.prompt_field", "q",
                 "--task.answer_field", "a", "--task.level_field", "lv", "--task.test_fraction", "0.5"]
    assert main(["eval", "--model.name", str(micro_dir), *task_args, "--num-problems", "100", "--k", "2",
                 "--max-new-tokens", "6", "--threads", "1", "--output", str(out)]) == 0
    cfg = build_config(EvalConfig, {"task.name": "dataset", "task.path": str(data), "task.prompt_field": "q",
                                    "task.answer_field": "a", "task.level_field": "lv", "task.test_fraction": 0.5})
    task = get_task("dataset", **task_kwargs(cfg.task))
    rows, summary = read_rows(out), json.loads(Path(f"{out}.summary.json").read_text())
    n = task.split_size("test")
    assert 0 < n < 30 and len(rows) == summary["problems"] == summary["split_size"] == n  # capped at the split
    assert summary["requested"] == 100 and set(summary["levels"]) <= {"easy", "hard"}
    assert {r["question"] for r in rows} == {p.question for p in task.problems("test", n)}
    assert all(len(r["responses"]) == 2 and set(r["scores"]) <= {0.0, 1.0} for r in rows)
    p = next(q for q in task.problems("test", n) if q.question == rows[0]["question"])
    right, wrong = f"<think>{p.question}</think>{p.answer}", "<think>no idea</think>-1"
    assert task.score_batch([right, wrong, f"<think>x</think>$\\frac{{{2 * int(p.answer)}}}{{2}}$"], [p] * 3) \
        == [1.0, 0.0, 1.0]
    task.verifier.close()


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, key", [
    ({"k": 0}, "k"),
    ({"split": "dev"}, "split"),
    ({"num_problems": 0}, "num_problems"),
    ({"batch_size": -1}, "batch_size"),
    ({"top_p": 0.0}, "top_p"),
    ({"reward_timeout": 0}, "reward_timeout"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"task.path": "x.jsonl"}, "task.path"),
    ({"model.dtype": "int8"}, "model.dtype"),
    ({"samples": 4}, "samples"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        build_config(EvalConfig, overrides)
    assert str(e.value).startswith(key + ":")


@pytest.mark.parametrize("argv, key", [
    (["--k", "0"], "k: must be >= 1"),
    (["--split", "dev"], "split: Cannot convert 'dev'"),
    (["--task.name", "nope"], "task.name: unknown task 'nope'"),
    (["--model.name", "no/such/model", "--num-problems", "3"], "model.name: 'no/such/model'"),
])
def test_cli_rejects_bad_input_naming_the_key(argv, key, capsys, tmp_path):
    assert main(["eval", "--output", str(tmp_path / "x.jsonl"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poise eval: ") and key in err and "Traceback" not in err
    assert not (tmp_path / "x.jsonl").exists()


def test_every_eval_option_is_documented_in_help(capsys):
    assert not [k for k, _, doc in flat_fields(EvalConfig) if not doc]
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--num-problems", "--k", "--top-p", "--max-new-tokens", "--batch-size", "--reward-timeout",
                 "--split", "--output", "--seed", "--threads", "--model.name", "--task.path"):
        assert flag in text
