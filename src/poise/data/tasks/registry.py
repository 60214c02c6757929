"""The task registry (`register_task`, `get_task`, `available_tasks`) and mixtures of procedural tasks:
`--task.name chain_sum+basic_arithmetic`.

Levels are named `task/level` (e.g. `chain_sum/t2d1`), and by default are every part's default levels. Problems are
drawn round-robin over all levels, as for one task, so each part gets its share; each problem keeps its own task's
prompt, worked solution and reward (`mixture_reward` dispatches on `Problem.task` inside the verifier worker).
Per-level metrics (`reward/level_chain_sum/t2d1`, ...) therefore separate the parts. Used to train one policy on
several tasks and to test whether a probe fitted on one task transfers to another (benchmarks/value_estimation.py).
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


class MixtureTask(Task):
    """The union of procedural tasks; levels `task/level`."""

    reward_fn = staticmethod(mixture_reward)

    def __init__(self, names: list[str], levels: list[str] | None = None, test_fraction: float = 0.2) -> None:
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"task.name: a mixture names two or more different tasks joined by '{SEPARATOR}', "
                             f"got {SEPARATOR.join(names)!r}")
        for n in names:
            factory = _REGISTRY.get(n)
            procedural = isinstance(factory, type) and issubclass(factory, Task) and hasattr(factory, "reward_fn") \
                and factory.problems is Task.problems and factory._level_problems is Task._level_problems
            if not procedural:  # data files and benchmarks draw their problems their own way
                raise ValueError(f"task.name: {n!r} cannot be mixed; a mixture takes procedural tasks such as "
                                 "chain_sum, basic_arithmetic and countdown")
        self.parts = {n: get_task(n, test_fraction=test_fraction) for n in names}
        self.name = SEPARATOR.join(names)
        self.default_levels = tuple(f"{n}/{lv}" for n, t in self.parts.items() for lv in t.levels)
        super().__init__(levels, test_fraction)

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
