"""Several procedural tasks as one: `--task.name chain_sum+basic_arithmetic`.

Levels are named `task/level` (e.g. `chain_sum/t2d1`), and by default are every part's default levels. Problems are
drawn round-robin over all levels, as for one task, so each part gets its share; each problem keeps its own task's
prompt, worked solution and reward (`mixture_reward` dispatches on `Problem.task` inside the verifier worker).
Per-level metrics (`reward/level_chain_sum/t2d1`, ...) therefore separate the parts. Used to train one policy on
several tasks and to test whether a probe fitted on one task transfers to another (benchmarks/value_estimation.py).
"""

from __future__ import annotations

import dataclasses

from .base import Problem, Task

SEPARATOR = "+"


def mixture_reward(response: str, problem: Problem) -> float | None:
    """The reward of the problem's own task (a module-level function, so the verifier worker can import it)."""
    from .base import _REGISTRY

    return _REGISTRY[problem.task].reward_fn(response, problem)


class MixtureTask(Task):
    """The union of procedural tasks; levels `task/level`."""

    reward_fn = staticmethod(mixture_reward)

    def __init__(self, names: list[str], levels: list[str] | None = None, test_fraction: float = 0.2) -> None:
        from .base import _REGISTRY, get_task

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
