"""The code reward as a TRL-style reward function, for `POISETrainer` (and TRL's GRPOTrainer) users:

    from poise.data.code.reward import CodeReward
    trainer = POISETrainer(model, reward_funcs=[CodeReward(score="fraction")], train_dataset=ds, args=cfg)

where the dataset has a `tests` column (programs.py describes the tests dict; a JSON string of it also works). TRL
calls it as `fn(completions, **columns) -> list[float | None]`; each completion is a string or a chat-message list.
"""

from __future__ import annotations

import json

from poise.data.code.programs import CodeJob, CodeResult, CodeScore, check_tests, extract_program, reward_of


def completion_text(completion) -> str | None:
    """The text of a TRL completion: the string itself, or the content of the last message of a conversational
    completion (`[{"role": "assistant", "content": ...}]`, content as a string or a list of text parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return content if isinstance(content, str) else None
    return None


def parse_tests(value, row: int) -> dict:
    """One row's tests dict from the `tests` column (a dict or its JSON string); ValueError naming the row if bad."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"code reward: row {row}: the tests column is not valid JSON ({e})") from None
    problem = check_tests(value)
    if problem:
        raise ValueError(f"code reward: row {row}: {problem}")
    return value


class CodeReward:
    """Scores each completion's program (its last fenced code block) against its row's tests.

    score: "fraction" (passed / total) or "all" (1.0 only when every case passed); runner: anything with
    `run(jobs) -> list[CodeResult]` (a LocalSandbox, a SandboxFusionRunner); None makes a LocalSandbox() on first use.
    A completion without a program scores 0.0; a run the sandbox could not judge (status "error") scores None, the
    TRL convention for "not scorable". The first call checks the runner (`runner.check()`): a sandbox that cannot
    start raises SandboxUnavailable there, instead of every row scoring None. `last_results` holds the last call's
    CodeResults (None for rows without a program), for logging timeouts, errors and time."""

    __name__ = "code_reward"  # TRL names reward functions by __name__ in its logs

    def __init__(self, score: CodeScore = "all", runner=None):
        if score not in ("fraction", "all"):
            raise ValueError(f"code reward: score must be 'fraction' or 'all', got {score!r}")
        self.score, self.runner = score, runner
        self.last_results: list[CodeResult | None] = []
        self._checked = False

    def _runner(self):
        if self.runner is None:
            from poise.data.code.sandbox import LocalSandbox

            self.runner = LocalSandbox()
        if not self._checked and hasattr(self.runner, "check"):
            self.runner.check()
        self._checked = True
        return self.runner

    def __call__(self, completions, tests, **kwargs) -> list[float | None]:
        if len(tests) != len(completions):
            raise ValueError(f"code reward: {len(completions)} completions but {len(tests)} rows of tests")
        parsed = [parse_tests(t, i) for i, t in enumerate(tests)]
        programs = [extract_program(completion_text(c) or "") for c in completions]
        rows = [i for i, p in enumerate(programs) if p is not None]
        results = self._runner().run([CodeJob(programs[i], parsed[i]) for i in rows]) if rows else []
        self.last_results = [None] * len(completions)
        for i, result in zip(rows, results):
            self.last_results[i] = result
        return [0.0 if r is None else (None if r.status == "error" else reward_of(r, self.score))
                for r in self.last_results]
