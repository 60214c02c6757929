"""What a code reward runs and what it gets back: the tests of a problem, one program against them (`CodeJob`), the
outcome (`CodeResult`), the program of a response (its last fenced code block) and the reward of an outcome.

Tests live in `Problem.meta["tests"]` as plain JSON-able data, in one of two kinds:

- `{"kind": "assert", "setup": str, "cases": [str, ...]}`: the program is executed, then `setup` (e.g. HumanEval's
  `def check(candidate): ...`, MBPP's `test_setup_code`), then each case, a statement such as
  `assert add(2, 3) == 5` or `check(add)`; a case passes when it runs to the end without an exception.
- `{"kind": "stdio", "cases": [[stdin, expected_stdout], ...]}`: the program is run once per case with `stdin` as
  its standard input; a case passes when its standard output equals `expected_stdout` line by line, trailing
  whitespace ignored (`same_output`). The expected outputs never enter the sandbox: the sandbox returns what the
  program printed and the comparison happens outside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

CodeScore = Literal["fraction", "all"]
Status = Literal["ok", "timeout", "error", "no_code"]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_program(response: str) -> str | None:
    """The content of the last fenced code block (```python ... ``` or ``` ... ```) of a response; None when it has
    none, or only empty ones. Text after `</think>` is preferred: a block inside the reasoning counts only when the
    answer has none. Blocks tagged with another language than python (```cpp) are skipped."""
    if not isinstance(response, str):
        return None
    head, sep, tail = response.rpartition("</think>")
    for text in ((tail, head) if sep else (response,)):
        blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
        blocks = [b for b in blocks if b.strip()]
        if blocks:
            return blocks[-1]
    return None


def check_tests(tests: object) -> str | None:
    """Why `tests` is not a valid tests dict (a message naming the problem), or None when it is valid."""
    if not isinstance(tests, dict):
        return f"tests must be a dict with 'kind' and 'cases', got {type(tests).__name__}"
    kind, cases = tests.get("kind"), tests.get("cases")
    if kind not in ("assert", "stdio"):
        return f"tests kind must be 'assert' or 'stdio', got {kind!r}"
    if not isinstance(cases, list) or not cases:
        return "the problem has no test cases"
    if kind == "assert" and not all(isinstance(c, str) and c.strip() for c in cases):
        return "assert test cases must be non-empty strings of Python"
    if kind == "stdio" and not all(isinstance(c, (list, tuple)) and len(c) == 2 and all(isinstance(x, str) for x in c)
                                   for c in cases):
        return "stdio test cases must be [stdin, expected_stdout] pairs of strings"
    if not isinstance(tests.get("setup", ""), str):
        return "tests setup must be a string of Python"
    return None


@dataclass(frozen=True)
class CodeJob:
    """One program to run against one problem's tests (`tests` as described in the module docstring)."""

    program: str
    tests: dict


@dataclass
class CodeResult:
    """The outcome of one CodeJob.

    passed: cases that passed; total: cases in the tests; status: "ok" (every case ran, pass or fail), "timeout" (the
    wall-clock limit ended the run: cases not reported by then failed), "error" (the sandbox or the harness failed:
    no trustworthy outcome) or "no_code" (the response had no program); seconds: wall-clock time of the run;
    detail: a short reason for a failed case or an error, for logs."""

    passed: int
    total: int
    status: Status = "ok"
    seconds: float = 0.0
    detail: str = ""
    outputs: list = field(default_factory=list, repr=False)


def same_output(got: str, expected: str) -> bool:
    """Standard outputs compared line by line with trailing whitespace and trailing blank lines ignored (the rule of
    APPS' and LiveCodeBench's checkers for exact-output problems)."""
    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.strip("\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out
    return lines(got) == lines(expected)


def reward_of(result: CodeResult, mode: CodeScore) -> float:
    """`reward.code_score`: "fraction" = passed / total; "all" = 1.0 only when every case passed. A run that timed
    out or failed keeps the cases it passed before (fraction) and is never "all"."""
    if result.total <= 0:
        return 0.0
    if mode == "fraction":
        return result.passed / result.total
    if mode == "all":
        return float(result.passed == result.total and result.status == "ok")
    raise ValueError(f"reward.code_score: expected 'fraction' or 'all', got {mode!r}")
