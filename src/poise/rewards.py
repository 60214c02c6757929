"""Math reward (math-verify). Reward functions are `(response, problem) -> float | None`, run inside the sandboxed
verifier worker; the procedural tasks keep theirs beside them (`tasks/arithmetic.py`, `tasks/countdown.py`).

Each is a plain module-level function (so it can be sent to the worker process by reference). A task names its
function in `Task.reward_fn`; `Task.score_batch` runs it through `poise.verifier.SafeVerifier`, which enforces a
hard wall-clock limit per call and turns exceptions and timeouts into a score of 0. Return None for a response that
cannot be scored at all (the TRL convention); the trainer gives such rows zero advantage and counts them.

Answer format: `<think> reasoning </think> answer`; the answer is the text after the last `</think>`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # poise.tasks imports this module; import it lazily
    from poise.tasks.base import Problem


# ---------------------------------------------------------------------------------------------------------------------
# Math answers (math-verify)
# ---------------------------------------------------------------------------------------------------------------------

MATH_TIMEOUT_S = 1  # math-verify's own (signal-based) limit inside the worker; the worker's hard limit backs it up


def _unescape_dollars(text: str) -> str:
    """Drop LaTeX's escaped dollar sign (`\\$18.90` is a currency amount, not a math delimiter)."""
    return text.replace("\\$", "")


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    gold = _unescape_dollars(gold)
    text = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    return parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=MATH_TIMEOUT_S)


def math_reward(response: str, problem: Problem) -> float:
    """1.0 if math-verify judges the response's final answer equal to the gold answer.

    The answer is the text after the last `</think>`; a response without `</think>` is read whole (its last
    `\\boxed{}` or final expression, as math-verify extracts it). Bare answers are wrapped in `$…$` so LaTeX
    such as `\\frac{1}{2}` parses."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    from poise.tasks.base import extract_answer

    answer = extract_answer(response)
    text = _unescape_dollars(answer if answer is not None else response)
    if not text or not text.strip():
        return 0.0
    if answer is not None and "$" not in text and "\\boxed" not in text:
        text = f"${text}$"
    gold = _parse_gold(problem.answer)
    pred = parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=MATH_TIMEOUT_S)
    if not gold or not pred:
        return 0.0
    return float(verify(gold, pred, timeout_seconds=MATH_TIMEOUT_S))
