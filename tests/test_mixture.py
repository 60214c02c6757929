"""Mixtures of tasks (`--task.name chain_sum+basic_arithmetic`, `chain_sum+gsm8k`): problems, rewards, errors,
training."""

import pytest
from hub_fixtures import offline_hub

from poise.commands.cli import main
from poise.data.tasks import get_task
from poise.data.tasks.registry import MixtureTask
from poise.io.tracking import read_metrics
from poise.train.loop import train


def test_levels_problems_and_rewards_come_from_each_part():
    mix = get_task("chain_sum+basic_arithmetic", levels=["chain_sum/t2d1", "basic_arithmetic/t2d1"])
    assert isinstance(mix, MixtureTask) and mix.name == "chain_sum+basic_arithmetic"
    problems = mix.problems("train", 10, seed=3)
    assert [p.task for p in problems] == ["chain_sum", "basic_arithmetic"] * 5  # round-robin over the levels
    assert [p.level for p in problems] == ["chain_sum/t2d1", "basic_arithmetic/t2d1"] * 5
    # each problem is its own task's problem (same question, answer and worked solution), relabelled
    alone = {n: get_task(n, levels=["t2d1"]).problems("train", 5, seed=3) for n in ("chain_sum", "basic_arithmetic")}
    assert [(p.question, p.answer, p.solution) for p in problems[::2]] == \
        [(p.question, p.answer, p.solution) for p in alone["chain_sum"]]
    assert [p.question for p in problems[1::2]] == [p.question for p in alone["basic_arithmetic"]]
    assert mix.problems("train", 10, seed=3) == problems and mix.problems("test", 10, seed=3) != problems
    # worked solutions score 1 under their own task's reward; a chain_sum answer to another question scores 0
    assert mix.score_batch([p.solution for p in problems], problems) == [1.0] * 10
    swapped = [problems[1].solution] + [p.solution for p in problems[1:]]
    assert mix.score_batch(swapped, problems)[0] == 0.0
    assert get_task("chain_sum+countdown").levels == [f"chain_sum/{lv}" for lv in get_task("chain_sum").levels] + \
        [f"countdown/{lv}" for lv in get_task("countdown").levels]


@pytest.mark.parametrize("argv, message", [
    (["--task.name", "chain_sum+dataset"], "task.name: 'dataset' cannot be mixed"),
    (["--task.name", "chain_sum+chain_sum"], "task.name: a mixture names two or more different tasks"),
    (["--task.name", "chain_sum+nope"], "task.name: unknown task 'nope' in 'chain_sum+nope'"),
    (["--task.name", "chain_sum+countdown", "--task.levels", "t2d1"], "task.levels: chain_sum+countdown: bad level"),
    (["--task.name", "chain_sum+countdown", "--task.levels", "countdown/t2d1"], "task.levels: bad level 't2d1'"),
])
def test_bad_mixtures_name_the_key(argv, message, tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "run"), "--max-steps", "1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_mixture_draws_dataset_rows_and_scores_each_part_with_its_own_reward(hub_cache, monkeypatch, tmp_path):
    offline_hub(monkeypatch, hub_cache, tmp_path / "datasets_cache")
    mix = get_task("chain_sum+gsm8k", levels=["chain_sum/t2d1", "gsm8k/all"])
    problems = mix.problems("train", 6, seed=1)
    assert [p.task for p in problems] == ["chain_sum", "gsm8k"] * 3
    assert [p.level for p in problems] == ["chain_sum/t2d1", "gsm8k/all"] * 3
    gsm8k = get_task("gsm8k")
    rows = {p.question: p.answer for p in gsm8k.problems("train", gsm8k.split_size("train"))}
    assert all(rows[p.question] == p.answer for p in problems[1::2])  # real training rows, gold kept
    assert mix.problems("train", 6, seed=1) == problems and mix.problems("train", 6, seed=2) != problems
    assert not {p.question for p in mix.problems("test", 6)} & set(rows)  # held-out rows stay held out
    answers = [f"<think></think>{p.answer}" for p in problems]
    assert mix.score_batch(answers, problems) == [1.0] * 6  # chain_sum's checker, then math-verify on gsm8k
    assert mix.score_batch(["<think></think>-1"] * 6, problems) == [0.0] * 6
    with pytest.raises(ValueError, match="task.name: math500 is an evaluation set"):
        get_task("chain_sum+math500")


def test_training_on_a_mixture_logs_each_part(tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, **{"task.name": "parity_test+chain_sum",
                                "task.levels": ["parity_test/t2d1", "chain_sum/t2d1"]})
    train(cfg, progress=False)
    last = read_metrics(cfg.output_dir)[-1]
    assert "reward/level_parity_test/t2d1" in last and "reward/level_chain_sum/t2d1" in last
