"""Arithmetic tasks (reasoning-gym ``chain_sum`` and ``basic_arithmetic``) and a safe stepper.

The stepper parses an expression with :mod:`ast` (numbers, unary +/-, + - * /,
parentheses only; never ``eval``) and evaluates it one binary operation at a
time, producing compact trace lines such as ``56+-33=23``.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from typing import Any, Union

import reasoning_gym

from .base import Problem, Task, final_answer, format_solution

# A node is either a number (Fraction) or a tuple (op, left, right).
Node = Union[Fraction, tuple]
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_LEVEL_RE = re.compile(r"t(\d+)d(\d+)")
_INT_RE = re.compile(r"[+-]?[0-9]+")  # ASCII digits only (\d would accept "７")
_DEC_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
MAX_EXPR_CHARS = 200


def parse_expr(text: str) -> Node:
    """Parse an arithmetic expression into a tree; ValueError on anything else."""
    if len(text) > MAX_EXPR_CHARS:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise ValueError(f"cannot parse {text!r}") from exc
    return _convert(tree.body)


def _convert(node: ast.AST) -> Node:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _convert(node.operand)
        sign = -1 if isinstance(node.op, ast.USub) else 1
        return inner * sign if isinstance(inner, Fraction) else ("neg" if sign < 0 else "pos", inner)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return (_BINOPS[type(node.op)], _convert(node.left), _convert(node.right))
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


def fmt_num(x: Fraction) -> str:
    """Integers as plain ints, other rationals as ``p/q``."""
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b  # ZeroDivisionError propagates


def _step(node: Node, lines: list[str]) -> tuple[Node, bool]:
    """Reduce the leftmost innermost reducible operation; returns (node, reduced?)."""
    if isinstance(node, Fraction):
        return node, False
    if node[0] in ("neg", "pos"):
        inner, done = _step(node[1], lines)
        if isinstance(inner, Fraction):
            return (-inner if node[0] == "neg" else inner), done
        return (node[0], inner), done
    op, left, right = node
    if isinstance(left, Fraction) and isinstance(right, Fraction):
        value = _apply(op, left, right)
        lines.append(f"{fmt_num(left)}{op}{fmt_num(right)}={fmt_num(value)}")
        return value, True
    new_left, done = _step(left, lines)
    if done:
        return (op, new_left, right), True
    new_right, done = _step(right, lines)
    return (op, new_left, new_right), done


def evaluate_steps(text: str, integer_only: bool = True) -> tuple[list[str], Fraction] | None:
    """Step lines and value of an expression, or None if invalid (or non-integer when required)."""
    try:
        node = parse_expr(text)
        lines: list[str] = []
        while not isinstance(node, Fraction):
            node, done = _step(node, lines)
            if not done and not isinstance(node, Fraction):
                return None
            if integer_only and lines and "/" in lines[-1].split("=", 1)[1]:
                return None
    except (ValueError, ZeroDivisionError):
        return None
    if integer_only and node.denominator != 1:
        return None
    return lines, node


def _parse_level(level: str) -> tuple[int, int]:
    match = _LEVEL_RE.fullmatch(level) if isinstance(level, str) else None
    if not match or int(match.group(1)) < 2 or int(match.group(2)) < 1:
        raise ValueError(f"bad level {level!r}; expected 't{{terms}}d{{digits}}' with terms>=2, digits>=1")
    return int(match.group(1)), int(match.group(2))


def chain_sum_reward(response: str, problem: Problem) -> float:
    """1.0 if the final answer is an integer (ASCII digits) equal to the gold sum."""
    a = final_answer(response)
    return float(a is not None and _INT_RE.fullmatch(a) is not None and int(a) == int(problem.answer))


def basic_arithmetic_reward(response: str, problem: Problem) -> float:
    """1.0 if the final answer is a decimal within 1e-6 of the gold value."""
    a = final_answer(response)
    if a is None or _DEC_RE.fullmatch(a) is None:
        return 0.0
    return float(abs(Fraction(a) - Fraction(problem.answer.strip())) <= Fraction(1, 10**6))


class _TermsDigitsTask(Task):
    """Shared logic for reasoning-gym datasets configured by terms and digits."""

    rg_name = ""

    def __init__(self, levels: list[str] | None = None, test_fraction: float = 0.2) -> None:
        super().__init__(levels, test_fraction)
        self._datasets: dict[tuple[str, int], Any] = {}

    def _check_level(self, level: str) -> None:
        _parse_level(level)

    def _rg_kwargs(self, terms: int, digits: int) -> dict[str, Any]:
        return dict(min_terms=terms, max_terms=terms, min_digits=digits, max_digits=digits)

    def _entry(self, level: str, seed: int, idx: int) -> dict[str, Any] | None:
        key = (level, seed)
        if key not in self._datasets:
            terms, digits = _parse_level(level)
            self._datasets[key] = reasoning_gym.create_dataset(
                self.rg_name, size=10**9, seed=seed, **self._rg_kwargs(terms, digits)
            )
        return self._datasets[key][idx]

    def _solution(self, entry: dict[str, Any]) -> str | None:
        result = evaluate_steps(entry["metadata"]["expression"])
        if result is None or fmt_num(result[1]) != str(entry["answer"]).strip():
            return None
        return format_solution(result[0], fmt_num(result[1]))


class ChainSumTask(_TermsDigitsTask):
    """Sums/differences of non-negative integers; reward: exact integer match."""

    name = "chain_sum"
    rg_name = "chain_sum"
    default_levels = ("t4d1", "t5d1")  # the RL testbed; the embedded default was warm-started on t3d1-t6d1

    reward_fn = staticmethod(chain_sum_reward)


class BasicArithmeticTask(_TermsDigitsTask):
    """+ - * / with parentheses and negatives; reward: numeric equality (tol 1e-6)."""

    name = "basic_arithmetic"
    rg_name = "basic_arithmetic"
    default_levels = ("t2d1", "t3d1", "t3d2", "t4d2")

    reward_fn = staticmethod(basic_arithmetic_reward)

