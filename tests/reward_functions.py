"""Reward functions for the tests, in a module light enough for the verifier worker to import (no torch)."""


def parity_reward(response, problem):
    """1 if the response has even length."""
    return float(len(response) % 2 == 0)


def half_solvable_reward(response, problem):
    """Parity reward, except that levels t2d1 and t3d1 always score 0 (their groups never vary)."""
    return 0.0 if problem.level in ("t2d1", "t3d1") else parity_reward(response, problem)


def nan_sometimes_reward(response, problem):
    """Parity reward, but unscorable (NaN) for responses whose length is a multiple of 3, None for 5."""
    if len(response) % 3 == 0:
        return float("nan")
    if len(response) % 5 == 0:
        return None
    return parity_reward(response, problem)


def trl_always_one(completions, **kwargs):
    """A TRL-style reward: one score per completion."""
    return [1.0 for _ in completions]


def trl_echo_columns(completions, prompts, answer, level, solution, **kwargs):
    """Scores 1 when the completion spells '<answer>|<level>' and every TRL column arrived as a one-element list."""
    assert len(prompts) == len(answer) == len(level) == len(solution) == len(completions) == 1
    return [float(c == f"{a}|{lv}") for c, a, lv in zip(completions, answer, level)]


def partial_credit_reward(response, problem):
    """1 for an even-length response, 0.5 (partial credit) for an odd one."""
    return 1.0 if len(response) % 2 == 0 else 0.5


def trl_parity(completions, **kwargs):
    """A TRL-style parity reward (1 for an even-length completion): half the samples of any task earn it, so a
    2-step run of a real-data preset on a micro model gets non-zero advantages."""
    return [float(len(c) % 2 == 0) for c in completions]
