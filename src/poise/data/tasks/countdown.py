"""Countdown task (reasoning-gym ``countdown``): combine given numbers to hit a target.

Reward is 1.0 only when reasoning-gym's scorer gives full credit. Its scorer runs
sympy's ``parse_expr`` (which uses ``eval``), so answers are first checked with
our own :mod:`ast` whitelist (integers, + - * /, parentheses, unary minus; no
``**``) and a length cap before it ever sees them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import reasoning_gym

from .arithmetic import evaluate_steps, fmt_num, parse_expr
from .base import Problem, Task, final_answer, format_solution

_LEVEL_RE = re.compile(r"n(\d+)")
# Plain characters only: digits, operators, parentheses, spaces.
_SAFE_CHARS_RE = re.compile(r"[0-9+\-*/() ]+")


def _parse_level(level: str) -> int:
    match = _LEVEL_RE.fullmatch(level) if isinstance(level, str) else None
    if not match or int(match.group(1)) < 2:
        raise ValueError(f"bad level {level!r}; expected 'n{{count}}' with count>=2")
    return int(match.group(1))


@lru_cache(maxsize=1)
def _scorer():
    return reasoning_gym.create_dataset("countdown", size=1, seed=0)  # any instance scores any entry


def countdown_reward(response: str, problem: Problem) -> float:
    """1.0 when reasoning-gym's scorer gives full credit, after our whitelist (its scorer `eval`s via sympy)."""
    answer = final_answer(response)
    if answer is None or _SAFE_CHARS_RE.fullmatch(answer) is None:
        return 0.0
    parse_expr(answer)  # raises ValueError on anything outside the whitelist (e.g. **): scored 0
    return float(_scorer().score_answer(answer, problem.meta["entry"]) == 1.0)


class CountdownTask(Task):
    """Use every given number once with + - * / to reach the target."""

    name = "countdown"
    reward_fn = staticmethod(countdown_reward)
    default_levels = ("n3", "n4")

    def __init__(
        self,
        levels: list[str] | None = None,
        test_fraction: float = 0.2,
        min_value: int = 1,
        max_value: int = 100,
        min_target: int = 10,
        max_target: int = 999,
    ) -> None:
        super().__init__(levels, test_fraction)
        self.rg_kwargs = dict(
            min_value=min_value, max_value=max_value, min_target=min_target, max_target=max_target
        )
        self._datasets: dict[tuple[str, int], Any] = {}

    def _check_level(self, level: str) -> None:
        _parse_level(level)

    def _entry(self, level: str, seed: int, idx: int) -> dict[str, Any] | None:
        key = (level, seed)
        if key not in self._datasets:
            count = _parse_level(level)
            self._datasets[key] = reasoning_gym.create_dataset(
                "countdown", size=10**9, seed=seed, min_numbers=count, max_numbers=count, **self.rg_kwargs
            )
        try:
            return self._datasets[key][idx]
        except ValueError:  # generator gave up on this index; skip it
            return None

    def _meta(self, entry: dict[str, Any]) -> dict:
        return {"entry": entry, **entry.get("metadata", {})}

    def _solution(self, entry: dict[str, Any]) -> str | None:
        expression = str(entry["answer"])
        result = evaluate_steps(expression)
        if result is None or fmt_num(result[1]) != str(entry["metadata"]["target"]):
            return None
        return format_solution(result[0], expression)

