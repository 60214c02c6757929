"""CodeReward, the TRL-style code reward (poise.data.code.reward), on the SandboxFusion stand-in and the local
sandbox."""

import json

import pytest

from poise.data.code.fusion import SandboxFusionRunner, SandboxUnavailable
from poise.data.code.reward import CodeReward
from sandbox_fusion_standin import FusionStandin
from test_sandbox_fusion import ADD, ASSERTS, SHOUT, STDIO, _closed_port_url


def fenced(program: str) -> str:
    return f"<think>easy</think>Here it is:\n```python\n{program}```\n"


@pytest.fixture(scope="module")
def server():
    with FusionStandin() as s:
        yield s


def test_scores_string_and_chat_completions_with_tests_as_dicts_or_json(server):
    partial = "s = input()\nprint(s.upper() + '!' if ' ' not in s else s)\n"
    completions = [fenced(ADD), [{"role": "assistant", "content": fenced(ADD.replace("+", "-"))}],
                   "no code at all", [{"role": "assistant", "content": [{"type": "text", "text": fenced(partial)}]}]]
    tests = [ASSERTS, json.dumps(ASSERTS), ASSERTS, json.dumps(STDIO)]
    runner = SandboxFusionRunner(server.url, timeout=5)
    every, share = CodeReward("all", runner), CodeReward("fraction", runner)
    assert every(completions, tests=tests, prompts=["p"] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert share(completions, tests=tests) == pytest.approx([1.0, 0.0, 0.0, 2 / 3])
    assert share.last_results[2] is None and share.last_results[3].passed == 2
    assert every.__name__ == "code_reward"  # what TRL logs the reward as


@pytest.mark.parametrize("bad, message", [({"kind": "assert", "cases": []}, "row 1: the problem has no test cases"),
                                          ("{not json", "row 1: the tests column is not valid JSON"),
                                          ({"kind": "shell", "cases": ["ls"]}, "row 1: tests kind must be")])
def test_invalid_tests_raise_naming_the_row_before_anything_runs(server, bad, message):
    server.bodies.clear()
    reward = CodeReward(runner=SandboxFusionRunner(server.url))
    with pytest.raises(ValueError, match=message):
        reward([fenced(ADD), fenced(ADD)], tests=[ASSERTS, bad])
    assert server.bodies == []


def test_a_dead_sandbox_refuses_at_the_first_call_and_a_later_error_is_unscorable():
    url = _closed_port_url()
    with pytest.raises(SandboxUnavailable, match=f"SandboxFusion at {url}/run_code cannot run code"):
        CodeReward("fraction", SandboxFusionRunner(url, timeout=2))([fenced(SHOUT)], tests=[STDIO])
    with FusionStandin() as s:
        reward = CodeReward("fraction", SandboxFusionRunner(s.url, timeout=2))
        assert reward([fenced(SHOUT), "no code"], tests=[STDIO, STDIO]) == [1.0, 0.0]
        s.mode = "garbage"  # the server breaks after start-up
        assert reward([fenced(SHOUT), "no code"], tests=[STDIO, STDIO]) == [None, 0.0]
    assert reward.last_results[0].status == "error" and "not JSON" in reward.last_results[0].detail
    with pytest.raises(ValueError, match="'fraction' or 'all'"):
        CodeReward("most")


def test_the_default_runner_is_the_local_sandbox():
    from poise.data.code.sandbox import LocalSandbox

    reward = CodeReward()
    assert reward([fenced(ADD), fenced("def add(a, b):\n    return 0\n")], tests=[ASSERTS, ASSERTS]) == [1.0, 0.0]
    assert isinstance(reward.runner, LocalSandbox)
