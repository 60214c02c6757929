"""Core task machinery: problems, prompt format, answer extraction, splits, registry.

A :class:`Task` turns a procedural generator (reasoning-gym) into deterministic,
disjoint train/test problem lists and scores model completions with 0/1 rewards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from poise.data.verifier import SafeVerifier

if TYPE_CHECKING:
    import torch

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SYSTEM_PROMPT = (
    "Think step by step inside <think> </think>, then give only the final answer."
)

SPLITS = ("train", "test")
# Answers longer than this are rejected outright (keeps scoring cheap and safe).
MAX_ANSWER_CHARS = 200


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer and (optionally) a worked solution."""

    uid: str
    task: str
    question: str
    answer: str
    level: str
    solution: str | None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def extract_answer(response: str) -> str | None:
    """Return the stripped text after the last ``</think>``, or None if absent/empty."""
    if not isinstance(response, str):
        return None
    head, sep, tail = response.rpartition(THINK_CLOSE)
    if not sep:
        return None
    answer = tail.strip()
    return answer or None


def final_answer(response: str) -> str | None:
    """:func:`extract_answer`, or None when the answer is longer than MAX_ANSWER_CHARS."""
    answer = extract_answer(response)
    return answer if answer is not None and len(answer) <= MAX_ANSWER_CHARS else None


def build_messages(problem: Problem) -> list[dict]:
    """Chat messages (system + user) for a problem; no chat template applied."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": problem.question},
    ]


def format_solution(steps: list[str], answer: str) -> str:
    """Worked response ``<think>STEPS</think>ANSWER`` from step lines."""
    body = "\n".join(steps) if steps else answer
    return f"{THINK_OPEN}{body}{THINK_CLOSE}{answer}"


def text_hash(text: str) -> str:
    """Stable hex digest of a text (sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_of(question: str, test_fraction: float) -> str:
    """Assign a question to "train" or "test" by a stable hash of its text."""
    bucket = int(text_hash("split:" + question)[:12], 16) / float(16**12)
    return "test" if bucket < test_fraction else "train"


class Task:
    """Base class for a verifiable-reward task with named difficulty levels.

    Subclasses implement :meth:`_entry` (generate raw item ``idx`` of a level) and :meth:`_solution` (worked trace
    or None), and set ``reward_fn``: a module-level function ``(response, problem) -> float | None`` from
    :mod:`poise.data.tasks.rewards`, run in a sandboxed worker process (:mod:`poise.data.verifier`).
    """

    name: str = "task"
    reward_fn: Callable[[str, Problem], float | None]
    levels: list[str]
    default_levels: tuple[str, ...] = ()
    uses_code = False
    """True for tasks whose reward runs programs (`tasks/code.py`): the trainer starts the code sandbox for them."""

    def __init__(self, levels: list[str] | None = None, test_fraction: float = 0.2) -> None:
        levels = list(levels) if levels is not None else list(self.default_levels)
        if not levels:
            raise ValueError(f"{self.name}: at least one level is required")
        for level in levels:
            self._check_level(level)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        self.levels = levels
        self.test_fraction = test_fraction
        # Both splits scan the same generator indices; cache entries (bounded).
        self._entry_cache: dict[tuple[str, int, int], dict[str, Any] | None] = {}

    # ---- hooks for subclasses -------------------------------------------------
    def _check_level(self, level: str) -> None:
        """Raise ValueError if ``level`` is not a valid level name."""

    def _entry(self, level: str, seed: int, idx: int) -> dict[str, Any] | None:
        """Raw reasoning-gym style entry (question/answer/metadata) or None to skip."""
        raise NotImplementedError

    def _solution(self, entry: dict[str, Any]) -> str | None:
        """Worked solution for an entry, or None."""
        return None

    def _meta(self, entry: dict[str, Any]) -> dict:
        """Metadata kept on the Problem."""
        return dict(entry.get("metadata", {}))

    # ---- public API -----------------------------------------------------------
    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """``n`` problems of ``split``, levels round-robin, deterministic in (split, n, seed)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        per_level = [
            n // len(self.levels) + (1 if i < n % len(self.levels) else 0)
            for i in range(len(self.levels))
        ]
        pools = [
            self._level_problems(level, split, count, seed)
            for level, count in zip(self.levels, per_level)
        ]
        return [pools[j % len(pools)][j // len(pools)] for j in range(n)]

    def _level_problems(self, level: str, split: str, count: int, seed: int) -> list[Problem]:
        """``count`` problems of one level and split: fresh ones first, then repeats."""
        if count == 0:
            return []
        ds_seed = int(text_hash(f"{self.name}/{level}/{seed}")[:8], 16)
        max_tries = 2000 + 20 * count
        stale_limit = 1000  # stop scanning after this many indices with nothing new
        found: list[Problem] = []
        seen: set[str] = set()
        stale = 0
        for idx in range(max_tries):
            if len(found) >= count or stale >= stale_limit:
                break
            entry = self._cached_entry(level, ds_seed, idx)
            question = entry["question"] if entry else None
            if question is None or question in seen:
                stale += 1
                continue
            seen.add(question)
            stale = 0
            if split_of(question, self.test_fraction) == split:
                found.append(self._to_problem(entry, level))
        if not found:
            raise ValueError(
                f"{self.name}: level {level!r} yielded no {split!r} problems after {idx + 1} tries"
            )
        return [found[i % len(found)] for i in range(count)]

    def _cached_entry(self, level: str, seed: int, idx: int) -> dict[str, Any] | None:
        key = (level, seed, idx)
        if key not in self._entry_cache:
            if len(self._entry_cache) >= 200_000:
                self._entry_cache.clear()
            self._entry_cache[key] = self._entry(level, seed, idx)
        return self._entry_cache[key]

    def _to_problem(self, entry: dict[str, Any], level: str) -> Problem:
        question = entry["question"]
        return Problem(
            uid=f"{self.name}/{text_hash(question)[:12]}",
            task=self.name,
            question=question,
            answer=str(entry["answer"]),
            level=level,
            solution=self._solution(entry),
            meta=self._meta(entry),
        )

    @property
    def verifier(self):
        """The task's sandboxed answer checker (`poise.data.verifier.SafeVerifier`), created on first use; the trainer
        replaces it with one built from `reward.*`."""
        if getattr(self, "_verifier", None) is None:

            self._verifier = SafeVerifier()
        return self._verifier

    @verifier.setter
    def verifier(self, value) -> None:
        self._verifier = value

    def score(self, response: str, problem: Problem) -> float | None:
        """Reward of one response (see :meth:`score_batch`)."""
        return self.score_batch([response], [problem])[0]

    def score_batch(self, responses: list[str], problems: list[Problem]) -> list[float | None]:
        """``reward_fn`` of each (response, problem), run in the sandboxed verifier worker with a hard time limit:
        1.0 for a correct final answer, 0.0 otherwise (also on a timeout or an error), None if unscorable."""
        if len(responses) != len(problems):
            raise ValueError(f"got {len(responses)} responses for {len(problems)} problems")
        fn = getattr(self, "reward_function", None) or type(self).reward_fn  # a user's function overrides
        return self.verifier(fn, responses, problems)


def encode_prompts(tokenizer, problems, group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-formatted, left-padded prompt ids (P*G, L) and mask, each prompt repeated `group_size` times in a row."""
    texts = [tokenizer.apply_chat_template(build_messages(p), tokenize=False, add_generation_prompt=True)
             for p in problems for _ in range(group_size)]
    enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"].bool()
