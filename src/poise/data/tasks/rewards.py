"""Math reward (math-verify) and user reward functions with TRL's calling convention (`TRLReward`, for
`--reward.function module:fn`). Reward functions are `(response, problem) -> float | None`, run inside the sandboxed
verifier worker; the procedural tasks keep theirs beside them (`tasks/arithmetic.py`, `tasks/countdown.py`).

Each is a plain module-level function (so it can be sent to the worker process by reference). A task names its
function in `Task.reward_fn`; `Task.score_batch` runs it through `poise.data.verifier.SafeVerifier`, which enforces a
hard wall-clock limit per call and turns exceptions and timeouts into a score of 0. Return None for a response that
cannot be scored at all (the TRL convention); the trainer gives such rows zero advantage and counts them.

Answer format: `<think> reasoning </think> answer`; the answer is the text after the last `</think>`.
"""

from __future__ import annotations

from functools import lru_cache

from poise.data.tasks.base import Problem, extract_answer

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


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j]
    return None


def math_reward(response: str, problem: Problem) -> float:
    """1.0 if math-verify judges the response's final answer equal to the gold answer.

    The answer is the text after the last `</think>`; a response without `</think>` must box its answer: the
    content of its last `\\boxed{}` is read, and a response with neither scores 0. (Reading the whole text instead
    would let math-verify fish the gold number out of rambling, a reward a policy learns to hack.) Bare answers
    are wrapped in `$…$` so LaTeX such as `\\frac{1}{2}` parses."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    answer = extract_answer(response)
    if answer is None:
        answer = last_boxed(response)
    if answer is None or not answer.strip():
        return 0.0
    text = _unescape_dollars(answer)
    if "$" not in text and "\\boxed" not in text:
        text = f"${text}$"
    gold = _parse_gold(problem.answer)
    pred = parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=MATH_TIMEOUT_S)
    if not gold or not pred:
        return 0.0
    return float(verify(gold, pred, timeout_seconds=MATH_TIMEOUT_S))


# ---------------------------------------------------------------------------------------------------------------------
# User reward functions with TRL's calling convention
# ---------------------------------------------------------------------------------------------------------------------


def _resolve(spec: str):
    """The callable named by `spec`: 'package.module:function' or '/path/to/file.py:function'."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"reward.function: {spec!r} is not 'module:function' or 'path/to/file.py:function'")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"reward.function: {path} does not exist")
        mod_name = f"poise_user_reward_{path.stem}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec_obj = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec_obj)
            spec_obj.loader.exec_module(module)
            sys.modules[mod_name] = module
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"reward.function: cannot import {where!r} ({e})") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward.function: {where!r} has no function {name!r}")
    return fn


class TRLReward:
    """A TRL-style reward function `fn(completions, **columns) -> list[float | None]` as a poise reward
    `(response, problem) -> float | None`, for one sample at a time.

    Columns are the problem's fields as one-element lists: `prompts`, `question`, `answer`, `solution`, `level`,
    plus its metadata entries, so `def reward(completions, answer, **kwargs)` works as in TRL's GRPOTrainer. The
    verifier worker receives it pickled by name and loads the function while unpickling, before the sandbox's
    audit hook is armed, so the user's module may import what it needs (torch included); the call itself runs
    sandboxed: no processes, no file writes, no sockets."""

    def __init__(self, spec: str):
        self.spec = spec
        self.fn = _cached(spec)

    def __reduce__(self):
        return (TRLReward, (self.spec,))

    def __call__(self, response: str, problem: Problem) -> float | None:
        columns = {k: [v] for k, v in (problem.meta or {}).items() if isinstance(v, (str, int, float, bool))}
        columns.update(prompts=[problem.question], question=[problem.question], answer=[problem.answer],
                       solution=[problem.solution], level=[problem.level])
        out = self.fn(completions=[response], **columns)
        if not isinstance(out, (list, tuple)) or len(out) != 1:
            raise TypeError(f"reward function {self.spec} must return a list with one score per completion, "
                            f"got {out!r}")
        return out[0]


@lru_cache(maxsize=16)
def _cached(spec: str):
    return _resolve(spec)
