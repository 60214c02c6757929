"""Tests for poise.data.tasks: splits, rewards, worked traces, registry, hostile inputs."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest

from poise.data.tasks import (
    SYSTEM_PROMPT,
    THINK_CLOSE,
    Problem,
    available_tasks,
    build_messages,
    evaluate_steps,
    extract_answer,
    get_task,
)

TASKS = ["chain_sum", "basic_arithmetic", "countdown"]
# countdown generation uses sympy (slow), so it gets smaller samples for the test split
SPLIT_N = {"chain_sum": 200, "basic_arithmetic": 200, "countdown": 40}
LINE_RE = re.compile(r"(-?\d+)([+\-*/])(-?\d+)=(-?\d+)")

HOSTILE = [
    "",
    "</think>",
    "<think>x</think>9**9**9**9",
    "<think>x</think>__import__('os').system('echo hi')",
    "<think>x</think>" + "{" * 10000,
    "<think>x</think>" + "(" * 10000,
    "<think>x</think>" + "9" * 100000,
    "<think>x</think>\x00\udcff\u202e🤖",
    "<think>x</think>1/0",
    "<think>x</think>lambda: 1",
    "<think>x</think>[1, 2]",
    "<think>x</think>nan",
    "<think>x</think>inf",
]


@pytest.fixture(scope="module")
def tasks():
    return {name: get_task(name) for name in TASKS}


def test_registry():
    assert set(TASKS) <= set(available_tasks())
    with pytest.raises((KeyError, ValueError)) as err:
        get_task("no_such_task")
    for name in TASKS:
        assert name in str(err.value)


@pytest.mark.parametrize("level", ["t2", "x2d1", "t1d1", "t2d0", "", "t2d1 "])
def test_bad_level_string(level):
    with pytest.raises(ValueError, match=re.escape(repr(level))):
        get_task("chain_sum", levels=[level])


def test_bad_countdown_level():
    with pytest.raises(ValueError, match="n1"):
        get_task("countdown", levels=["n1"])


def test_bad_split_and_n(tasks):
    with pytest.raises(ValueError, match="valid"):
        tasks["chain_sum"].problems("valid", 3)
    with pytest.raises(ValueError, match="-1"):
        tasks["chain_sum"].problems("train", -1)
    assert tasks["chain_sum"].problems("train", 0) == []


@pytest.mark.parametrize("name", TASKS)
def test_splits_disjoint_deterministic_balanced(name, tasks):
    task = tasks[name]
    n = SPLIT_N[name]
    train = task.problems("train", n, seed=0)
    test = task.problems("test", n, seed=0)
    assert len(train) == len(test) == n
    assert not {p.question for p in train} & {p.question for p in test}
    assert [p.uid for p in task.problems("train", n, seed=0)] == [p.uid for p in train]
    assert [p.uid for p in task.problems("train", n, seed=1)] != [p.uid for p in train]
    for probs in (train, test):
        counts = Counter(p.level for p in probs)
        assert set(counts) == set(task.levels)
        assert max(counts.values()) - min(counts.values()) <= 1
        assert all(p.task == name and p.uid.startswith(name + "/") for p in probs)
    # a different seed must not leak test questions into train either
    other = task.problems("train", n, seed=7)
    assert not {p.question for p in other} & {p.question for p in test}


def test_uneven_level_counts():
    task = get_task("chain_sum", levels=["t2d1", "t3d1", "t4d1", "t5d1"])
    levels = task.levels
    probs = task.problems("train", len(levels) + 2)  # two levels get one more problem than the rest
    counts = Counter(p.level for p in probs)
    assert sorted(counts.values()) == [1] * (len(levels) - 2) + [2, 2]
    assert [p.level for p in probs[:len(levels)]] == levels


def test_uid_unique_per_question(tasks):
    probs = tasks["basic_arithmetic"].problems("train", 200)
    by_uid = {}
    for p in probs:
        assert by_uid.setdefault(p.uid, p.question) == p.question


def test_extract_answer():
    assert extract_answer("<think>a</think>7") == "7"
    assert extract_answer("<think>a</think> 7 \n") == "7"
    assert extract_answer("<think>a</think>1</think>2") == "2"
    assert extract_answer("7") is None
    assert extract_answer("<think>a</think>") is None
    assert extract_answer("<think>a</think>  \n ") is None
    assert extract_answer("</think>x y") == "x y"


def test_build_messages(tasks):
    p = tasks["chain_sum"].problems("train", 1)[0]
    msgs = build_messages(p)
    assert msgs == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": p.question},
    ]


def _chain(expr: str, answer: str) -> Problem:
    q = f"State the final answer to the following arithmetic problem: {expr} ="
    return Problem("chain_sum/x", "chain_sum", q, answer, "t3d1", None)


@pytest.mark.parametrize(
    "response,reward",
    [
        ("<think>4+6=10\n10-3=7</think>7", 1.0),
        ("<think>4+6=10\n10-3=7</think>7  \n", 1.0),
        ("<think></think> +7 ", 1.0),
        ("<think>x</think>8</think>7", 1.0),
        ("<think>x</think>7</think>8", 0.0),
        ("<think>x</think>8", 0.0),
        ("<think>x</think>-7", 0.0),
        ("7", 0.0),
        ("<think>x</think>", 0.0),
        ("<think>x</think>7.5", 0.0),
        ("<think>x</think>7.0", 0.0),
        ("<think>x</think>seven", 0.0),
        ("<think>x</think>7 apples", 0.0),
        ("<think>x</think>" + "7" * 5000, 0.0),
        ("<think>x</think>７", 0.0),
        ("<think>x</think>٧", 0.0),
        ("<think>x</think>\u202e7\u0000", 0.0),
    ],
)
def test_chain_sum_reward_table(response, reward, tasks):
    assert tasks["chain_sum"].score(response, _chain("4 + 6 - 3", "7")) == reward


def test_basic_arithmetic_reward(tasks):
    task = tasks["basic_arithmetic"]
    p = Problem("basic_arithmetic/x", "basic_arithmetic", "Calculate 2 - 5.", "-3", "t2d1", None)
    assert task.score("<think>2-5=-3</think>-3", p) == 1.0
    assert task.score("<think>x</think>-3.0000000001", p) == 1.0
    assert task.score("<think>x</think>-3.01", p) == 0.0
    assert task.score("<think>x</think>3", p) == 0.0
    assert task.score("<think>x</think>2 - 5", p) == 0.0


def test_countdown_reward(tasks):
    task = tasks["countdown"]
    p = task.problems("train", 1)[0]
    nums = p.meta["numbers"]
    assert task.score(f"<think>x</think>{p.answer}", p) == 1.0
    assert task.score(f"<think>x</think>{' + '.join(map(str, nums))}9", p) == 0.0  # wrong numbers
    assert task.score(f"<think>x</think>{p.meta['target']}", p) == 0.0  # partial credit -> 0
    assert task.score(f"<think>x</think>{p.answer} + 0", p) == 0.0


@pytest.mark.parametrize("name", TASKS)
def test_score_never_raises_on_hostile(name, tasks, capfd):
    task = tasks[name]
    p = task.problems("train", 1)[0]
    for response in HOSTILE:
        assert task.score(response, p) == 0.0
    assert "hi" not in capfd.readouterr().out
    assert task.score_batch(HOSTILE, [p] * len(HOSTILE)) == [0.0] * len(HOSTILE)


def _check_lines(solution: str) -> list[str]:
    body = solution.split("<think>", 1)[1].split(THINK_CLOSE, 1)[0]
    lines = body.split("\n")
    for line in lines:
        m = LINE_RE.fullmatch(line)
        assert m, f"bad step line {line!r}"
        a, op, b, c = Fraction(m[1]), m[2], Fraction(m[3]), Fraction(m[4])
        expect = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
        assert expect == c, f"wrong arithmetic in {line!r}"
    return lines


@pytest.mark.parametrize("name", TASKS)
def test_worked_solutions_score_and_are_correct(name, tasks):
    task = tasks[name]
    probs = task.problems("train", 200 * len(task.levels), seed=3)
    with_solution = [p for p in probs if p.solution is not None]
    assert len(with_solution) >= 0.95 * len(probs)
    assert Counter(p.level for p in with_solution).keys() == set(task.levels)
    for p in with_solution:
        assert task.score(p.solution, p) == 1.0, p
        lines = _check_lines(p.solution)
        # the last step's result is the final value (answer itself for arithmetic tasks)
        # (a leading "-( ... )" negates the last step's result without a line of its own)
        final = lines[-1].split("=")[1]
        expected = str(p.meta["target"]) if name == "countdown" else p.answer
        negated = name == "basic_arithmetic" and final == str(-int(expected))
        assert final == expected or negated, p
    if name == "chain_sum":
        # one line per operation: terms - 1 lines
        for p in with_solution:
            terms = int(re.fullmatch(r"t(\d+)d\d+", p.level)[1])
            assert p.solution.count("\n") == terms - 2


def test_chain_sum_trace_format():
    lines, value = evaluate_steps("4 + 6 - 3")
    assert lines == ["4+6=10", "10-3=7"] and value == 7
    assert evaluate_steps("5 - 9") == (["5-9=-4"], -4)
    assert evaluate_steps("-32 + 55") == (["-32+55=23"], 23)
    assert evaluate_steps("56 + -33 - 84")[0] == ["56+-33=23", "23-84=-61"]
    assert evaluate_steps("2 + 3 * 4")[0] == ["3*4=12", "2+12=14"]
    assert evaluate_steps("-( 2 + 3 ) * 4")[0] == ["2+3=5", "-5*4=-20"]
    assert evaluate_steps("7 / 2") is None
    assert evaluate_steps("2 ** 3") is None
    assert evaluate_steps("__import__('os')") is None
