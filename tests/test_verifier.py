"""The sandboxed verifier: hard time limit, no exception escapes, nothing executed, NaN -> unscorable."""

import math
import os
import threading
import time

import pytest

from hostile import hostile_answers
from poise.data.tasks.rewards import math_reward
from poise.data.tasks.base import Problem
from poise.data.verifier import SafeVerifier

GOLD = Problem("u", "math", "q", "42", "all", None)


def sleepy_reward(response, problem):
    time.sleep(float(response))
    return 1.0


def evil_reward(response, problem):
    """What a parser that evaluates its input could do: each attempt must be refused inside the worker."""
    import subprocess

    target = os.path.join(response, "owned")
    for attempt in (lambda: os.system(f"touch {target}"), lambda: open(target, "w").write("x"),
                    lambda: subprocess.run(["touch", target]), lambda: os.mkdir(target),
                    lambda: __import__("shutil").rmtree(response)):
        try:
            attempt()
        except Exception:  # noqa: BLE001 - keep trying the other escapes
            pass
    return 1.0


def odd_reward(response, problem):
    return {"nan": math.nan, "inf": math.inf, "none": None, "one": 1.0, "str": "yes"}.get(response) \
        if response != "raise" else 1 / 0


def test_a_hanging_reward_is_killed_at_the_limit_and_the_worker_replaced():
    v = SafeVerifier(timeout=0.5)
    t = time.perf_counter()
    assert v(sleepy_reward, ["0", "30", "0"], [GOLD] * 3) == [1.0, 0.0, 1.0]
    assert time.perf_counter() - t < 0.5 + 1.5
    assert v.stats["timeouts"] == 1 and v.stats["restarts"] == 1


def test_works_from_another_thread():
    v, out = SafeVerifier(timeout=0.5), []
    th = threading.Thread(target=lambda: out.append(v(sleepy_reward, ["30", "0"], [GOLD] * 2)))
    th.start()
    th.join(10)
    assert out == [[0.0, 1.0]] and v.stats["timeouts"] == 1


def test_the_sandbox_refuses_processes_writes_and_deletes(tmp_path):
    v = SafeVerifier(timeout=5)
    assert v(evil_reward, [str(tmp_path)], [GOLD]) == [1.0]
    assert os.listdir(tmp_path) == [] and tmp_path.is_dir()


def test_nan_inf_none_are_unscorable_and_exceptions_score_zero():
    v = SafeVerifier(timeout=5)
    assert v(odd_reward, ["nan", "inf", "none", "one", "str", "raise"], [GOLD] * 6) == [None, None, None, 1.0, 0.0, 0.0]
    assert v.stats["unscorable"] == 3 and v.stats["errors"] == 2 and "ZeroDivisionError" in str(v.last_error)


def test_a_dead_worker_is_replaced():
    v = SafeVerifier(timeout=5)
    assert v(odd_reward, ["one"], [GOLD]) == [1.0]
    v._proc.kill()
    v._proc.join()
    assert v(odd_reward, ["one"], [GOLD]) == [1.0]


def test_reward_functions_from_main_are_refused_by_name():
    def local(response, problem):
        return 1.0

    local.__module__ = "__main__"
    with pytest.raises(ValueError, match="'local' is defined in __main__"):
        SafeVerifier()(local, ["x"], [GOLD])


def test_math_reward_reads_latex_and_plain_answers():
    v = SafeVerifier(timeout=5)
    responses = ["<think>x</think>42", "<think>x</think>\\frac{84}{2}", "so \\boxed{42}", "<think>x</think>41",
                 "<think>x</think>", "<think>x</think>42.0"]
    assert v(math_reward, responses, [GOLD] * len(responses)) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]


@pytest.mark.slow
def test_fuzz_two_thousand_hostile_answers(tmp_path):
    """Every hostile answer is scored 0 within the limit + 1 s, nothing is executed, and the verifier still tells a
    right answer from a wrong one afterwards. Figures for docs/results/reliability.md:
    benchmarks/reliability/fuzz_verifier.py."""
    limit = 0.5
    gold = Problem("u", "math", "q", "314159265", "all", None)  # no hostile case spells it
    cases = hostile_answers(str(tmp_path))
    assert len(cases) >= 2000
    v = SafeVerifier(timeout=limit)
    worst = 0.0
    for case in cases:
        t = time.perf_counter()
        score = v(math_reward, [case], [gold])
        worst = max(worst, time.perf_counter() - t)
        assert score in ([0.0], [None]), repr(case)[:200]
    print(f"{len(cases)} cases, max {worst:.3f} s per call, stats {v.stats}")
    assert worst < limit + 1.0
    assert os.listdir(tmp_path) == []
    assert v(math_reward, ["<think>x</think>314159266", "<think>x</think>314159265"], [gold] * 2) == [0.0, 1.0]
