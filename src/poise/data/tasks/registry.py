"""The task registry (`register_task`, `get_task`, `available_tasks`) and mixtures of tasks:
`--task.name chain_sum+basic_arithmetic`, `--task.name mbpp+gsm8k+gcd`.

Levels are named `task/level` (e.g. `chain_sum/t2d1`, `gsm8k/all`), and by default are every part's default levels.
Problems are drawn round-robin over all levels, as for one task, so each part gets its share: a procedural part
generates them, a dataset part (a file, a Hub dataset, a code set) draws its rows of that level in a shuffled order.
Each problem keeps its own task's prompt, worked solution and reward: `MixtureTask.score_batch` gives each part its
own rows, so a math answer is checked by math-verify and a program runs in the code sandbox. Per-level metrics
(`reward/level_chain_sum/t2d1`, ...) and per-task ones (`reward/chain_sum/mean`) separate the parts. Used to train one
policy on several domains and to test whether a probe fitted on one task transfers to another
(benchmarks/value_estimation/value_estimation.py). An evaluation set (humaneval, math500, ...) has nothing to train
on, so a training mixture refuses it by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .base import Problem, Task

SEPARATOR = "+"

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Register a task factory under ``name`` (overwrites an existing entry)."""
    _REGISTRY[name] = factory


def available_tasks() -> list[str]:
    """Sorted names of registered tasks (without the reasoning-gym names poise refuses, `gym.REFUSED`)."""
    return sorted(n for n, f in _REGISTRY.items() if not getattr(f, "refused", None))


def get_task(name: str, **kwargs: Any) -> Task:
    """Instantiate a registered task, or a mixture of them ('chain_sum+basic_arithmetic', below); unknown
    names raise KeyError listing the available ones."""
    if "+" in name and name not in _REGISTRY:
        parts = name.split(SEPARATOR)
        unknown = [p for p in parts if p not in _REGISTRY]
        if unknown:
            raise KeyError(f"unknown task {unknown[0]!r} in {name!r}; available: {', '.join(available_tasks())}")
        if kwargs.pop("options", None):
            raise ValueError(f"task.options: options set one reasoning-gym task's config, not a mixture's ({name!r})")
        return MixtureTask(parts, **kwargs)
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    factory = _REGISTRY[name]
    if not getattr(factory, "takes_options", False) and kwargs.pop("options", None):
        raise ValueError(f"task.options: {name} takes no options; they set the config of a reasoning-gym task other "
                         "than chain_sum, basic_arithmetic and countdown (those three are set by task.levels)")
    return factory(**kwargs)


def mixture_reward(response: str, problem: Problem) -> float | None:
    """The reward of the problem's own task (a module-level function, so the verifier worker can import it)."""
    return _REGISTRY[problem.task].reward_fn(response, problem)


def _draws_by_level(part: Task) -> bool:
    """Whether a part can give `count` problems of one of its levels (`_level_problems`): procedural tasks and
    dataset-backed ones do; a task that only draws from its whole pool cannot be mixed."""
    kind = type(part)
    return kind._entry is not Task._entry or kind._level_problems is not Task._level_problems


class MixtureTask(Task):
    """The union of tasks; levels `task/level`; each row scored by its own part."""

    reward_fn = staticmethod(mixture_reward)

    def __init__(self, names: list[str], levels: list[str] | None = None, test_fraction: float = 0.2) -> None:
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"task.name: a mixture names two or more different tasks joined by '{SEPARATOR}', "
                             f"got {SEPARATOR.join(names)!r}")
        for n in names:
            if n == "dataset":
                raise ValueError("task.name: 'dataset' cannot be mixed (its file is set by task.path); mix named "
                                 "tasks such as chain_sum, gsm8k, mbpp or a reasoning-gym task")
        self.parts = {n: get_task(n, test_fraction=test_fraction) for n in names}
        for n, part in self.parts.items():
            if getattr(part, "eval_only", False):
                raise ValueError(f"task.name: {n} is an evaluation set (every row is held out), so a training "
                                 f"mixture cannot draw from it; evaluate on it with --eval.tasks {n} or poise eval")
            if not _draws_by_level(part):
                raise ValueError(f"task.name: {n!r} cannot be mixed: it cannot draw problems level by level")
        self.name = SEPARATOR.join(names)
        self.default_levels = tuple(f"{n}/{lv}" for n, t in self.parts.items() for lv in t.levels)
        super().__init__(levels, test_fraction)

    # ---- scoring: each part its own rows, through the mixture's verifier and code runner ----
    @property
    def uses_code(self) -> bool:
        """Whether any part runs programs (a code task): the trainer then starts the code sandbox."""
        return any(getattr(p, "uses_code", False) for p in self.parts.values())

    @property
    def verifier(self):
        """The mixture's answer checker, shared by every part (created on first use, like `Task.verifier`)."""
        v = Task.verifier.fget(self)
        for part in self.parts.values():
            if getattr(part, "_verifier", None) is not v:
                part.verifier = v
        return v

    @verifier.setter
    def verifier(self, value) -> None:
        self._verifier = value
        for part in self.parts.values():
            part.verifier = value

    @property
    def code_runner(self):
        """The code parts' runner (shared), or None without code parts."""
        return next((p.code_runner for p in self.parts.values() if getattr(p, "uses_code", False)), None)

    @code_runner.setter
    def code_runner(self, value) -> None:
        for part in self.parts.values():
            if getattr(part, "uses_code", False):
                part.code_runner = value

    @property
    def code_score(self) -> str:
        return next((p.code_score for p in self.parts.values() if getattr(p, "uses_code", False)), "all")

    @code_score.setter
    def code_score(self, value: str) -> None:
        for part in self.parts.values():
            if getattr(part, "uses_code", False):
                part.code_score = value

    @property
    def code_stats(self) -> dict:
        """The code parts' counters, summed."""
        total: dict = {}
        for part in self.parts.values():
            for k, v in getattr(part, "code_stats", {}).items():
                total[k] = total.get(k, 0) + v
        return total

    def score_batch(self, responses: list[str], problems: list[Problem]) -> list[float | None]:
        """Each part scores its own rows (`Problem.task`) with its own reward; a user's `reward.function` (TRL-style,
        `task.reward_function`) scores every row instead."""
        if getattr(self, "reward_function", None) is not None:
            return super().score_batch(responses, problems)
        if len(responses) != len(problems):
            raise ValueError(f"got {len(responses)} responses for {len(problems)} problems")
        self.verifier  # noqa: B018 - shared with the parts before they score
        scores: list[float | None] = [None] * len(problems)
        for name, part in self.parts.items():
            rows = [i for i, p in enumerate(problems) if p.task == name]
            if rows:
                for i, s in zip(rows, part.score_batch([responses[i] for i in rows], [problems[i] for i in rows])):
                    scores[i] = s
        unknown = [p.task for p in problems if p.task not in self.parts]
        if unknown:
            raise ValueError(f"{self.name}: a problem of task {unknown[0]!r}, which is not part of the mixture")
        return scores

    def _split_level(self, level: str) -> tuple[Task, str]:
        task, sep, sub = level.partition("/") if isinstance(level, str) else ("", "", "")
        if not sep or task not in self.parts:
            raise ValueError(f"{self.name}: bad level {level!r}; expected 'task/level' with task one of "
                             f"{list(self.parts)}")
        return self.parts[task], sub

    def _check_level(self, level: str) -> None:
        part, sub = self._split_level(level)
        part._check_level(sub)

    def _level_problems(self, level: str, split: str, count: int, seed: int) -> list[Problem]:
        part, sub = self._split_level(level)
        return [dataclasses.replace(p, level=level) for p in part._level_problems(sub, split, count, seed)]
