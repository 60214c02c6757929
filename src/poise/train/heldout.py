"""The loop's held-out evaluation (`--eval.every N`, `eval.*` in the config): Avg@k and pass@k of the policy on fixed
held-out problems, measured while it trains, as TRL's `eval_strategy` and verl's `trainer.test_freq` /
`trainer.val_before_train` do.

When: before the first update (step 0, a fresh run only), after every N-th step, and after the last step, also when
a budget ends the run. A resumed run has already logged the evaluations up to its checkpoint and evaluates the later
steps exactly as the uninterrupted run would.

What: for each task (`eval.tasks`; empty = the training task as configured), up to `eval.num_problems` problems of its
test split chosen once, as `poise eval` chooses them (`select_problems`), each sampled k times and scored by the same
evaluator (`poise.rollout.evaluation`: `sample_batches`, `is_correct`, `aggregate`). Logged in the step's row:

    eval/<task>/avg@k, eval/<task>/pass@k     (k the actual number, e.g. eval/chain_sum/avg@4)
    eval/<task>/response_length/mean          (response tokens, EOS included, over all N k samples)
    eval/generated_tokens, time/eval_s        (all tasks together)

Apart from training: the problems are split into batches of `eval.batch_size`, and batch b at step s samples with its
own torch.Generator seeded from (seed, s, task, b), so nothing of the training streams is drawn (the sampling
generator, the prompt stream; torch's, Python's and NumPy's global RNGs are put back as they were, in case anything
below draws from them). The tokens never enter the compute meter (`compute/*`, `budget.*`), and the time is not part
of `time/step_s` (`budget.seconds`). A run with evaluation therefore trains exactly as one without it.

Several processes: batch b is sampled by rank b mod W, the per-problem counts are gathered in batch order and
summed, so the numbers are those of one process. Under FSDP the policy is gathered for the evaluation as for
sampling. The built-in KV-cache sampler on the policy samples (also when rollouts use vLLM).
"""

from __future__ import annotations

import hashlib
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from poise.config.errors import ConfigError
from poise.data.code.runners import attach_runner
from poise.data.tasks import Task, drop_long_prompts, get_task
from poise.data.tasks.dataset import DatasetError
from poise.parallel import fsdp
from poise.rollout.evaluation import aggregate, sample_batches, select_problems
from poise.rollout.limits import check_fits


def eval_seed(seed: int, step: int, task: int, batch: int) -> int:
    """The seed of the generator that samples batch `batch` of task number `task` (in eval order) at `step`: the first
    8 bytes of SHA-256 of 'seed/step/task/batch', as a non-negative int64."""
    digest = hashlib.sha256(f"{seed}/{step}/{task}/{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextmanager
def training_rng_kept(device: torch.device):
    """Torch's global RNG (the CPU's, and `device`'s when it is a GPU), Python's and NumPy's are as before the block."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@dataclass
class HeldOutSet:
    name: str  # the task's name in the metric keys
    task: Task
    problems: list  # fixed for the run


def _task(state, name: str) -> Task:
    """The training task for its own name (or none given), else the registered task `name` with its defaults, scored
    by the training task's sandboxed verifier."""
    cfg = state.cfg
    if name == cfg.task.name:
        return state.task
    try:
        task = get_task(name)
    except DatasetError:
        raise
    except (KeyError, ValueError) as e:
        raise ConfigError(f"eval.tasks: {e.args[0] if e.args else e}") from None
    task.verifier = state.task.verifier
    attach_runner(task, cfg.reward, state.task.code_runner if state.task.uses_code else None)
    return task


def build_sets(state) -> list[HeldOutSet]:
    """The held-out problems of every task in `eval.tasks` (none when `eval.every` is 0): `select_problems` on the test
    split with the run's seed, prompts longer than task.max_prompt_tokens dropped as in training, and each prompt plus
    the evaluation's max_new_tokens checked against the model's positions (`poise.rollout.limits`)."""
    cfg = state.cfg
    if not cfg.eval.every:
        return []
    sets = []
    for name in cfg.eval.tasks or [cfg.task.name]:
        task = _task(state, name)
        problems, _ = select_problems(task, "test", cfg.eval.num_problems, cfg.seed)
        problems, _ = drop_long_prompts(problems, state.tokenizer, cfg.task.max_prompt_tokens)
        if not problems:
            raise ConfigError(f"eval.tasks: {name} has no held-out problem (within task.max_prompt_tokens) to "
                              "evaluate on")
        key = "eval.max_new_tokens" if cfg.eval.max_new_tokens else "rollout.max_new_tokens"
        check_fits(state.model, state.tokenizer, problems, cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens, key)
        sets.append(HeldOutSet(name, task, problems))
    return sets


class HeldOut:
    """The evaluation of one run: its held-out problems, built once (`build_sets`), and `maybe_evaluate`."""

    def __init__(self, state):
        self.state, self.sets = state, build_sets(state)

    def due(self, step: int, last: bool) -> bool:
        every = self.state.cfg.eval.every
        return bool(self.sets) and (step == 0 or last or step % every == 0)

    def maybe_evaluate(self, step: int, last: bool = False) -> dict:
        """The eval/* metrics and time/eval_s of the policy after `step` (0: before the first update) when an evaluation
        is due then (`last`: the run stops after this step), else {}. A collective: every rank calls it."""
        if not self.due(step, last):
            return {}
        state, k = self.state, self.state.cfg.eval.k
        t = time.perf_counter()
        metrics, tokens = {}, 0
        with training_rng_kept(state.dist.device), fsdp.gathered(state.model), torch.no_grad():
            for i, s in enumerate(self.sets):
                per_problem = self._sample(s, step, i)  # [(n_correct, [response lengths])] in problem order
                lengths = [n for _, ls in per_problem for n in ls]
                m = aggregate([c for c, _ in per_problem], k)
                metrics.update({f"eval/{s.name}/avg@{k}": m["avg_at_k"], f"eval/{s.name}/pass@{k}": m["pass_at_k"],
                                f"eval/{s.name}/response_length/mean": sum(lengths) / len(lengths)})
                tokens += sum(lengths)
        metrics["eval/generated_tokens"] = tokens
        metrics["time/eval_s"] = state.dist.max(time.perf_counter() - t)  # the slowest rank's
        if state.dist.main:
            scores = " | ".join(f"{s.name} Avg@{k} {metrics[f'eval/{s.name}/avg@{k}']:.3f} pass@{k} "
                                f"{metrics[f'eval/{s.name}/pass@{k}']:.3f}" for s in self.sets)
            tqdm.write(f"eval at step {step}: {scores} ({metrics['time/eval_s']:.1f} s)")
        return metrics

    def _sample(self, s: HeldOutSet, step: int, task_index: int) -> list[tuple[int, list[int]]]:
        """(correct samples, response lengths) of each of `s`'s problems, in problem order, over all ranks: this rank
        samples batches b = rank, rank + W, ..., each with its own generator (`eval_seed`)."""
        state, e = self.state, self.state.cfg.eval
        dist, n = state.dist, e.batch_size
        params = (e.max_new_tokens or state.cfg.rollout.max_new_tokens, e.temperature, e.top_p)
        mine = []
        for b in range(dist.rank, -(-len(s.problems) // n), dist.world):
            gen = torch.Generator(dist.device).manual_seed(eval_seed(state.cfg.seed, step, task_index, b))
            chunk = s.problems[b * n:(b + 1) * n]
            for rows, *_ in sample_batches(state.model, state.tokenizer, s.task, chunk, e.k, *params, gen, n):
                mine.append((b, [(r["n_correct"], r["tokens"]) for r in rows]))
        batches = sorted(x for part in dist.gather_objects(mine) for x in part)  # batch order, as one process
        return [row for _, rows in batches for row in rows]
