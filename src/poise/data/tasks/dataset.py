"""Dataset-backed tasks: user files (JSON Lines, Parquet, `datasets.save_to_disk`), Hub datasets and the named
math sets.

`--task.name dataset --task.path FILE` trains on a user file, and `--task.path org/name` (with `--task.subset`,
`--task.split`) on a Hub dataset; `--task.name gsm8k|math|math500|aime24|aime25|amc23|dapo_math|deepscaler` loads a
named set from the Hub, or from the mirror in `$POISE_BENCHMARKS_DIR` when that is set (`hubdata.py`). Every row is
checked when the task is built, before any training: all problems in all rows are collected and raised as one
:class:`DatasetError` naming the file, the field, how many rows are affected and the first row numbers (1-based
lines for JSON Lines, 1-based row indices for Parquet and `datasets`). No row is ever dropped or truncated.

Rewards come from `poise.data.tasks.rewards.math_reward` (math-verify on the text after the last `</think>`). A
source with explicit train/test splits (GSM8K, MATH, a saved `DatasetDict` with "train"/"test") keeps them; an
evaluation set (MATH-500, AIME, AMC) holds every row out; any other source is split by a hash of the prompt
(:func:`split_of`), so train and test never share a question.
"""

from __future__ import annotations

import math
import numbers
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poise.config.errors import ConfigError
from poise.data.tasks.rewards import TRLReward, last_boxed, math_reward
from poise.io import hub

from .base import SPLITS, THINK_CLOSE, THINK_OPEN, Problem, Task, encode_prompts, split_of, text_hash
from .datafiles import SHOWN_ROWS, DatasetError, Fields, _Issues, _Part, read_source  # noqa: F401
from .hubdata import HUB_DATASETS, read_hub, read_named

# ---------------------------------------------------------------------------------------------------------------------
# Row validation
# ---------------------------------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """JSON-style name of a value's type, for messages ("null", "bool", "list", "object", "NaN", ...)."""
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return {bool: "bool", list: "list", dict: "object", str: "string"}.get(type(value), type(value).__name__)


def scalar_text(value: Any) -> str | None:
    """A string, or a finite int/float in canonical form (27.0 -> "27", 0.5 -> "0.5"); None for anything else."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return str(int(value))
    x = float(value)
    if not math.isfinite(x):
        return None
    return str(int(x)) if x.is_integer() else repr(x)


_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def gsm8k_answer(solution: str) -> tuple[str, str] | None:
    """(gold number, reasoning) of a GSM8K solution `... #### 1,000`: separators removed, `<<calc>>` notes
    dropped from the reasoning; None when there is no `#### ` final line."""
    head, sep, tail = solution.rpartition("#### ")
    answer = tail.strip()
    if not sep or not answer:
        return None
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer, _CALCULATOR.sub("", head).strip()


@dataclass(frozen=True)
class Record:
    """One validated row: the parts of a Problem plus where it came from."""

    question: str
    answer: str
    solution: str | None
    level: str
    source: str
    number: int


_MISSING = object()


def field_value(row: dict, name: str) -> Any:
    """`row[name]`, where `name` may be a dotted path into nested objects (`reward_model.ground_truth`) and may list
    alternatives separated by '|' (the first one present); `_MISSING` when the row has none of them."""
    for alt in name.split("|"):
        value: Any = row
        for part in alt.split("."):
            if not isinstance(value, dict) or part not in value:
                value = _MISSING
                break
            value = value[part]
        if value is not _MISSING:
            return value
    return _MISSING


def chat_prompt(value: Any) -> Any:
    """The content of the last user message of a chat-message list (verl's and TRL's conversational prompt column);
    any other value unchanged."""
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        users = [m for m in value if m.get("role") == "user"] or value
        return users[-1]["content"]
    return value


def _text_field(value: Any, name: str, number: int, issues: _Issues, numeric_ok: bool) -> str | None:
    """The stripped, non-empty text of a field's value, or None after recording why not."""
    text = scalar_text(value) if numeric_ok else (value.strip() if isinstance(value, str) else None)
    if text is None:
        expected = "a string or a finite number" if numeric_ok else "a string"
        issues.add(f"field {name!r} is not {expected}", number, f"got {_kind(value)}")
    elif not text:
        issues.add(f"field {name!r} is empty", number)
    return text or None


def parse_row(row: Any, number: int, fields: Fields, issues: _Issues) -> Record | None:
    """A Record from one decoded row, or None after recording every problem of the row in `issues`."""
    if not isinstance(row, dict):
        issues.add("value is not a JSON object", number, f"got {_kind(row)}")
        return None
    values = {f: field_value(row, f) for f in (fields.prompt, fields.answer, fields.solution, fields.level) if f}
    missing = [f for f, v in values.items() if v is _MISSING]
    for f in missing:
        issues.add(f"field {f!r} is missing", number, "fields present: " + (", ".join(sorted(row)) or "none"))

    def text(name: str, numeric_ok: bool) -> str | None:
        return _text_field(values[name], name, number, issues, numeric_ok) if values[name] is not _MISSING else None

    if values[fields.prompt] is not _MISSING:
        values[fields.prompt] = chat_prompt(values[fields.prompt])
    prompt = text(fields.prompt, False) and values[fields.prompt]  # kept exactly as written
    answer, solution = text(fields.answer, not (fields.gsm8k or fields.boxed)), None
    if answer and fields.gsm8k:
        answer, solution = gsm8k_answer(answer) or (None, None)
        if answer is None:
            issues.add(f"field {fields.answer!r} has no '#### <answer>' final line", number)
    elif answer and fields.boxed:
        answer = (last_boxed(answer) or "").strip() or None
        if answer is None:
            issues.add(f"field {fields.answer!r} has no non-empty \\boxed{{}} answer", number)
    level = text(fields.level, True) if fields.level else "all"
    if fields.solution and values[fields.solution] is not _MISSING:
        value = values[fields.solution]
        if value is not None and not isinstance(value, str):
            issues.add(f"field {fields.solution!r} is not a string or null", number, f"got {_kind(value)}")
        solution = value if isinstance(value, str) and value.strip() else None
    if missing or not (prompt and answer and level):
        return None
    if solution and THINK_CLOSE not in solution:  # as a worked response in the project's format
        solution = f"{THINK_OPEN}{solution.strip()}{THINK_CLOSE}{answer}"
    return Record(prompt, answer, solution or None, level, issues.label, number)


def load_records(parts: list[_Part], fields: Fields) -> dict[str, list[Record]]:
    """Validated records by split key ("train"/"test"/"all"); raises one DatasetError listing every problem."""
    out: dict[str, list[Record]] = {}
    errors: list[str] = []
    for part in parts:
        if part.total == 0:
            errors.append(f"{part.issues.label}: no rows (the source is empty)")
            continue
        records = [parse_row(value, number, fields, part.issues) for number, value in part.rows]
        out.setdefault(part.split, []).extend(r for r in records if r is not None)
        errors += part.issues.messages(part.total)
    errors += _conflicts([r for rs in out.values() for r in rs], parts)
    if errors:
        raise DatasetError("\n".join(errors))
    return out


def _conflicts(records: list[Record], parts: list[_Part]) -> list[str]:
    """Messages for prompts that appear more than once with different gold answers."""
    by_label = {p.issues.label: p for p in parts}
    first: dict[str, Record] = {}
    issues: dict[str, _Issues] = {}
    for r in records:
        seen = first.setdefault(r.question, r)
        if seen.answer != r.answer:
            issues.setdefault(r.source, _Issues(r.source, by_label[r.source].issues.unit)).add(
                "prompt repeats an earlier prompt with a different answer", r.number,
                f"{seen.answer!r} at {seen.source} {seen.number}, here {r.answer!r}")
    return [m for label, iss in issues.items() for m in iss.messages(by_label[label].total)]


# ---------------------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------------------


def _level_key(level: str) -> tuple:
    """Sort key: numeric levels in numeric order, then the rest alphabetically."""
    return (0, int(level), "") if level.isdigit() else (1, 0, level)


class DatasetTask(Task):
    """Problems read from a data source, validated in full at construction; rewards from math-verify."""

    name = "dataset"
    reward_fn = staticmethod(math_reward)

    def __init__(self, path: str | Path = "", *, prompt_field: str = "prompt", answer_field: str = "answer",
                 solution_field: str = "", level_field: str = "", levels: list[str] | None = None,
                 test_fraction: float = 0.2, benchmark: str = "", subset: str = "", split: str = "") -> None:
        self.eval_only = False
        if benchmark:
            self.name = benchmark
            parts, fields, self.source, self.eval_only = read_named(benchmark)
        else:
            if not str(path):
                raise DatasetError("task.path: the dataset task needs a .jsonl or .parquet file, a save_to_disk "
                                   "folder or a Hub dataset ID")
            fields = Fields(prompt_field, answer_field, solution_field, level_field)
            if hub.is_hub_id(str(path)):
                parts, self.source = read_hub(str(path), subset, split)
            else:
                if subset or split:
                    raise DatasetError(f"task.{'subset' if subset else 'split'}: is only read with a Hub dataset "
                                       f"(task.path org/name); {path} is a local file or folder")
                parts, self.source = read_source(path), str(path)
        by_key = load_records(parts, fields)
        self._present = sorted({r.level for rs in by_key.values() for r in rs}, key=_level_key)
        super().__init__(levels or self._present, test_fraction)
        self._splits = self._assign_splits(by_key)

    def _check_level(self, level: str) -> None:
        """Raise DatasetError if no row has this level."""
        if level not in self._present:
            raise DatasetError(f"{self.source}: no rows of level {level!r}; levels present: "
                               f"{', '.join(self._present)}")

    def _assign_splits(self, by_key: dict[str, list[Record]]) -> dict[str, list[Problem]]:
        """Problems of each split (explicit splits kept, the rest by hash), restricted to `self.levels`."""
        splits: dict[str, list[Problem]] = {s: [] for s in SPLITS}
        for key, records in by_key.items():
            for r in records:
                if r.level in self.levels:
                    split = key if key in SPLITS else split_of(r.question, self.test_fraction)
                    splits[split].append(self._problem(r))
        shared = {p.question for p in splits["train"]} & {p.question for p in splits["test"]}
        if shared:  # only possible with explicit train/test sources
            rows = sorted((p.meta["source"], p.meta["row"]) for p in splits["test"] if p.question in shared)
            raise DatasetError(f"{self.source}: {len(shared)} test prompts also appear in the train split "
                               f"(first: {', '.join(f'{s} {n}' for s, n in rows[:SHOWN_ROWS])})")
        for split, problems in splits.items():
            if not problems and not (split == "train" and self.eval_only):
                n = sum(len(rs) for rs in by_key.values())
                raise DatasetError(f"{self.source}: the {split!r} split is empty ({n} rows, levels "
                                   f"{', '.join(self.levels)}, test_fraction {self.test_fraction}); "
                                   f"add rows or change task.test_fraction")
        return splits

    def _problem(self, r: Record) -> Problem:
        return Problem(uid=f"{self.name}/{text_hash(r.question)[:12]}", task=self.name, question=r.question,
                       answer=r.answer, level=r.level, solution=r.solution, meta={"source": r.source, "row": r.number})

    def split_size(self, split: str) -> int:
        """Number of distinct rows in `split` (before any repetition by :meth:`problems`)."""
        return len(self._splits[split])

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` problems of `split` in a shuffled order deterministic in (split, n, seed); when `n` exceeds the
        split's rows, they repeat, each pass a fresh shuffle of every row."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        pool, out = self._splits[split], []
        if not pool and n:  # an evaluation set's train split
            trainable = ", ".join(k for k, v in HUB_DATASETS.items() if not (v.eval_only or v.code))  # math sets
            raise DatasetError(f"task.name: {self.name} is an evaluation set ({self.source}): its "
                               f"{self.split_size('test')} rows are all held out, none to train on; train on "
                               f"{trainable} or a dataset")
        for epoch in range(-(-n // len(pool)) if pool else 0):
            order = list(pool)
            random.Random(int(text_hash(f"{self.name}/{split}/{seed}/{epoch}")[:16], 16)).shuffle(order)
            out += order
        return out[:n]


    def _level_problems(self, level: str, split: str, count: int, seed: int) -> list[Problem]:
        """`count` rows of one level and split (for a mixture, `registry.MixtureTask`): every row of the level in a
        shuffled order deterministic in (level, split, seed), repeating with a fresh shuffle when `count` exceeds
        them."""
        pool = [p for p in self._splits[split] if p.level == level]
        if not pool:
            if count and split == "train" and self.eval_only:
                raise DatasetError(f"task.name: {self.name} is an evaluation set ({self.source}): none of its rows "
                                   "can be trained on")
            if count:
                raise DatasetError(f"{self.source}: no {split!r} rows of level {level!r}")
            return []
        out: list[Problem] = []
        for epoch in range(-(-count // len(pool))):
            order = list(pool)
            random.Random(int(text_hash(f"{self.name}/{level}/{split}/{seed}/{epoch}")[:16], 16)).shuffle(order)
            out += order
        return out[:count]


def benchmark_task(name: str):
    """Registry factory for a named dataset (`hubdata.HUB_DATASETS`): `get_task(name, levels=...,
    test_fraction=...)`."""
    def make(levels: list[str] | None = None, test_fraction: float = 0.2) -> DatasetTask:
        return DatasetTask(benchmark=name, levels=levels, test_fraction=test_fraction)
    return make


def build_task(task_cfg: Any, reward_function: str = "", reward_key: str = "reward.function"):
    """`get_task` from a TaskConfig, with the user's TRL-style `reward_function` ('module:fn' or 'file.py:fn')
    replacing the task's reward when given. A data file's problems stay DatasetErrors (file, field, rows); an unknown
    name, a bad level or a bad reward function becomes a ConfigError naming task.name, task.levels or `reward_key`."""

    from .registry import get_task

    try:
        task = get_task(task_cfg.name, **task_kwargs(task_cfg))
    except DatasetError:
        raise
    except KeyError as e:
        raise ConfigError(f"task.name: {e.args[0]}") from None
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("task.") else f"task.levels: {msg}") from None
    if reward_function:
        try:
            task.reward_function = TRLReward(reward_function)  # imported here: a bad name fails now
        except ValueError as e:
            raise ConfigError(str(e).replace("reward.function", reward_key, 1)) from None
    return task


def check_reward_function(task, problems: list[Problem], key: str = "reward.function") -> None:
    """Call a user's reward function (`task.reward_function`, set by build_task) on up to two of `problems` through the
    task's sandboxed verifier, each with a well-formed response ending in the gold answer. A function that raises,
    hangs past the verifier's limit, returns the wrong number of scores or something that is not a number fails
    here, at start-up, as a ConfigError naming `key`; during training the verifier would score each such call 0
    and the run would learn nothing. None (unscorable) is an allowed result. The task's own functions are not
    checked."""

    fn = getattr(task, "reward_function", None)
    if fn is None or not problems:
        return
    verifier, name = task.verifier, getattr(fn, "spec", repr(fn))
    before = dict(verifier.stats)
    verifier(fn, [f"{THINK_OPEN} {p.solution} {THINK_CLOSE} {p.answer}" for p in problems[:2]], problems[:2])
    if verifier.stats["timeouts"] > before["timeouts"]:
        raise ConfigError(f"{key}: {name} did not return within the verifier's limit ({verifier.timeout:g} s) on a "
                          f"training problem; make it faster or raise the timeout")
    if verifier.stats["errors"] > before["errors"]:
        raise ConfigError(f"{key}: {name} failed on a well-formed response: {getattr(verifier, 'last_error', '?')}")


def task_kwargs(task_cfg: Any) -> dict[str, Any]:
    """Keyword arguments of `get_task(task_cfg.name, ...)` from a TaskConfig (the dataset fields only for
    `name == "dataset"`)."""
    kwargs: dict[str, Any] = {"test_fraction": task_cfg.test_fraction}
    if task_cfg.levels:
        kwargs["levels"] = list(task_cfg.levels)
    if getattr(task_cfg, "options", None):  # reasoning-gym config keys (gym.py); other tasks refuse them by name
        kwargs["options"] = list(task_cfg.options)
    if task_cfg.name == "dataset":
        kwargs.update(path=task_cfg.path, prompt_field=task_cfg.prompt_field, answer_field=task_cfg.answer_field,
                      solution_field=task_cfg.solution_field, level_field=task_cfg.level_field,
                      subset=task_cfg.subset, split=task_cfg.split)
    return kwargs


# ---------------------------------------------------------------------------------------------------------------------
# Prompt length
# ---------------------------------------------------------------------------------------------------------------------


def drop_long_prompts(problems: list[Problem], tokenizer, max_tokens: int) -> tuple[list[Problem], int]:
    """(problems whose chat-formatted prompt has at most `max_tokens` tokens, number dropped); 0 = no limit.

    Lengths are counted exactly as `encode_prompts` encodes prompts (the count is the attention mask's
    sum, so padding is excluded). Long prompts are dropped, never truncated."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    if max_tokens == 0:
        return list(problems), 0
    lengths: list[int] = []
    for i in range(0, len(problems), 256):  # chunks bound the padded batch
        lengths += encode_prompts(tokenizer, problems[i:i + 256])[1].sum(dim=1).tolist()
    kept = [p for p, n in zip(problems, lengths) if n <= max_tokens]
    return kept, len(problems) - len(kept)
