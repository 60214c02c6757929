"""The SandboxFusion client (poise.data.code.fusion) against a local stand-in server (tests/sandbox_fusion_standin.py,
a plain subprocess behind SandboxFusion's /run_code JSON: a test double, not a sandbox)."""

import json
import socket
import time

import pytest

from poise.data.code import fusion
from poise.data.code.fusion import SandboxFusionRunner, SandboxUnavailable, endpoint
from poise.data.code.programs import CodeJob, reward_of
from sandbox_fusion_standin import FusionStandin

ADD = "def add(a, b):\n    return a + b\n"
ASSERTS = {"kind": "assert", "setup": "def check(f):\n    assert f(2, 3) == 5\n",
           "cases": ["assert add(1, 2) == 3", "check(add)", "assert add(-1, 1) == 0"]}
SHOUT = "s = input()\nprint(s.upper() + '!')\n"
STDIO = {"kind": "stdio", "cases": [["zebra\n", "ZEBRA!\n"], ["quokka", "QUOKKA!"], ["x y\n", "X Y!  \n\n"]]}


@pytest.fixture(scope="module")
def server():
    with FusionStandin() as s:
        yield s


@pytest.fixture
def runner(server):
    return SandboxFusionRunner(server.url, timeout=5, workers=4)


def test_gold_programs_pass_in_order_and_expected_outputs_never_reach_the_server(server, runner):
    server.bodies.clear()
    wrong_add, wrong_shout = ADD.replace("a + b", "a - b"), SHOUT.replace("upper", "lower")
    jobs = [CodeJob(ADD, ASSERTS), CodeJob(wrong_shout, STDIO), CodeJob(SHOUT, STDIO), CodeJob(wrong_add, ASSERTS)]
    results = runner.run(jobs)
    assert [(r.passed, r.total, r.status) for r in results] == [(3, 3, "ok"), (0, 3, "ok"), (3, 3, "ok"), (0, 3, "ok")]
    assert results[2].outputs == ["ZEBRA!\n", "QUOKKA!\n", "X Y!\n"]
    assert runner.stats["runs"] == 4 and runner.stats["errors"] == runner.stats["timeouts"] == 0
    requests = [json.loads(b) for b in server.bodies]
    assert len(requests) == 3 + 3 + 1 + 1  # one call per stdio case, one per assert job
    assert all(b"ZEBRA!" not in b and b"QUOKKA!" not in b for b in server.bodies)
    assert {r["stdin"] for r in requests if r["code"] == SHOUT} == {"zebra\n", "quokka", "x y\n"}
    r = requests[0]
    assert (r["language"], r["run_timeout"], r["memory_limit_MB"], r["files"], r["fetch_files"]) == \
        ("python", 5.0, 1024, {}, [])


def test_wrong_programs_fail_with_a_reason(runner):
    crash_after_output = SHOUT + "raise SystemExit(3)\n"
    results = runner.run([CodeJob(ADD.replace("a + b", "a * b"), ASSERTS),
                          CodeJob(SHOUT.replace("upper", "lower"), STDIO), CodeJob(crash_after_output, STDIO)])
    assert [r.passed for r in results] == [0, 0, 0]
    assert "AssertionError" in results[0].detail
    assert results[1].detail == "case 0: wrong output"
    assert results[2].detail.startswith("case 0: exit code 3")


def test_partial_passes_are_counted(runner):
    partial_add = ADD.replace("a + b", "a + b if a >= 0 else 7")
    partial_shout = "s = input()\nprint(s.upper() + '!' if ' ' not in s else s)\n"
    a, s = runner.run([CodeJob(partial_add, ASSERTS), CodeJob(partial_shout, STDIO)])
    assert (a.passed, a.total, s.passed, s.total) == (2, 3, 2, 3)
    assert reward_of(a, "fraction") == pytest.approx(2 / 3) and reward_of(a, "all") == 0.0
    assert "case 2" in a.detail and s.detail == "case 2: wrong output"


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                                       "raise SystemExit('done')\n"])
def test_a_program_that_exits_before_the_cases_passes_nothing(runner, exit_call):
    (r,) = runner.run([CodeJob(ADD + exit_call, ASSERTS)])  # the harness catches SystemExit; os._exit reports nothing
    assert r.passed == 0 and ("not reported" in r.detail or "program: SystemExit" in r.detail)


FORGER = """import os, re, sys
def add(a, b):
    return None
tokens = set(re.findall(r"[0-9a-f]{16,}", open("/proc/self/cmdline").read() + sys.stdin.read())) | {"", "None"}
for i in range(3):
    for t in tokens:
        print(f"{t} {i} ok".strip())
        for fd in range(1, 20):
            try:
                os.write(fd, f"\\n{t} {i} ok\\n".encode())
            except OSError:
                pass
"""
PATCHER = """import builtins
real_compile = compile
builtins.exec = lambda *a, **k: None
builtins.compile = lambda *a, **k: real_compile("pass", "<x>", "exec")
def add(a, b):
    return None
"""


@pytest.mark.parametrize("program", [FORGER, PATCHER], ids=["forged-verdicts", "patched-exec"])
def test_a_program_cannot_forge_or_patch_its_way_to_a_pass(runner, program):
    (r,) = runner.run([CodeJob(program, ASSERTS)])
    assert r.status == "ok" and r.passed == 0


def test_a_sleeping_program_times_out_keeping_the_cases_reported_before(server):
    runner = SandboxFusionRunner(server.url, timeout=1, workers=2)
    sleepy = dict(ASSERTS, cases=["assert add(1, 2) == 3", "import time; time.sleep(30)", "assert add(0, 0) == 0"])
    start = time.monotonic()
    a, s = runner.run([CodeJob(ADD, sleepy), CodeJob("import time\ntime.sleep(30)\n", {"kind": "stdio",
                                                                                      "cases": [["", ""]]})])
    assert time.monotonic() - start < 4
    assert (a.status, a.passed, s.status, s.passed) == ("timeout", 1, "timeout", 0)
    assert runner.stats["timeouts"] == 2


def test_no_http_reply_within_the_limit_is_a_timeout(monkeypatch):
    monkeypatch.setattr(fusion, "HTTP_MARGIN_S", 0.3)
    with FusionStandin("hang") as s:
        (r,) = SandboxFusionRunner(s.url, timeout=0.2).run([CodeJob(ADD, ASSERTS)])
    assert r.status == "timeout" and "no reply" in r.detail and r.seconds < 2


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_dead_server_is_an_error_and_check_names_the_url():
    url = _closed_port_url()
    runner = SandboxFusionRunner(url, timeout=2)
    (r,) = runner.run([CodeJob(SHOUT, STDIO)])
    assert r.status == "error" and r.passed == 0 and "cannot reach" in r.detail and runner.stats["errors"] == 1
    with pytest.raises(SandboxUnavailable) as info:
        runner.check()
    message = str(info.value)
    assert f"{url}/run_code" in message and "refused" in message.lower() and "\n" not in message


@pytest.mark.parametrize("mode, why", [("garbage", "not JSON"), ("http500", "HTTP 500")])
def test_a_server_that_answers_garbage_is_an_error(mode, why):
    with FusionStandin(mode) as s:
        runner = SandboxFusionRunner(s.url, timeout=2)
        a, b = runner.run([CodeJob(ADD, ASSERTS), CodeJob(SHOUT, STDIO)])
        with pytest.raises(SandboxUnavailable, match=why):
            runner.check()
    assert (a.status, a.passed, b.status, b.passed) == ("error", 0, "error", 0) and why in a.detail


def test_check_passes_on_a_working_server_and_urls_take_either_form(server):
    SandboxFusionRunner(server.url + "/run_code/").check()
    assert endpoint("http://h:8080") == endpoint("http://h:8080/run_code/") == "http://h:8080/run_code"
