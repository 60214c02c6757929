"""One sampling interface: problems in, a `RolloutBatch` out, and one generate -> decode -> reward path on it.

Every command samples through it: training (`sampling.collect`), `poise eval`, the evaluations of compare and
sft and the held-out evaluation during training (`rollout.evaluation.sample_batches`), and probe-eval
(`commands.probe_eval.rollouts`). An engine is any object with `sample(problems, group_size, params, generator) ->
RolloutBatch`, a `tokenizer`, and for training `load_policy(model)` / `release()`; `KVCacheSampler` (the
transformers model itself, generating with its KV cache: `engine.generate`) is the built-in one,
`poise.rollout.vllm_engine.VLLMSampler` (a colocated vLLM engine) the other.

A RolloutBatch from `sample` holds B = len(problems) * group_size rows, problem p's rows p*G .. p*G+G-1: the chat-
formatted, left-padded prompt ids (B, L) and mask, the response ids (B, T) with their mask (EOS-inclusive; padding
after it), and `ended` (B,): whether the response stopped at an EOS id rather than at `max_new_tokens`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from poise.data.tasks import Problem, encode_prompts
from poise.rollout.hf_engine import Prefill, RolloutBatch, generate, stop_token_ids


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


class Sampler(Protocol):
    tokenizer: object

    def sample(self, problems: list[Problem], group_size: int, params: SamplingParams,
               generator: torch.Generator | None) -> RolloutBatch: ...

    def sync_weights(self, model) -> None: ...  # before each training step's sampling: the policy's current weights

    def release(self) -> None: ...  # after sampling, before the update: memory the engine can give back

    def close(self) -> None: ...  # the run is over


class KVCacheSampler:
    """Samples from `model` itself, on its device and in eval mode (`sample` sets it), stopping at every EOS id of the
    tokenizer and the model's generation config."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.stops = stop_token_ids(model, tokenizer)
        self.prefill: Prefill | None = None  # set by prompt screening: the next `sample` reuses that prefill

    def sync_weights(self, model) -> None:
        """Nothing to push: this engine is the policy."""

    def release(self) -> None:
        """Nothing to free between sampling and the update."""

    def close(self) -> None:
        """Nothing to shut down."""

    def sample(self, problems: list[Problem], group_size: int, params: SamplingParams,
               generator: torch.Generator | None) -> RolloutBatch:
        self.model.eval()
        device = next(self.model.parameters()).device
        ids, mask = (x.to(device) for x in encode_prompts(self.tokenizer, problems, group_size))  # (P*G, L)
        G, prefill, self.prefill = group_size, self.prefill, None
        reuse = prefill.rows_for([p.uid for p in problems], ids[::G], mask[::G]) if prefill is not None else None
        resp, rmask = generate(self.model, ids, mask, params.max_new_tokens, self.stops, self.tokenizer.pad_token_id,
                               params.temperature, params.top_p, generator, group_size=G, prefilled=reuse)
        ended = torch.isin(resp, torch.tensor(self.stops, device=resp.device)).any(dim=1)
        batch = RolloutBatch(ids, mask, resp, rmask, G, ended=ended)  # (P*G, L), (P*G, T)
        if reuse is not None:
            batch.extras["prefill_reused"] = True  # its prompt tokens were counted where they were prefilled
        return batch


@dataclass
class Scored:
    """One call of `sample_and_score`: the batch, its decoded responses, and the task's reward of each row (None:
    unscorable), with the seconds spent sampling and decoding + verifying."""

    batch: RolloutBatch
    texts: list[str]
    scores: list[float | None]
    sample_seconds: float
    score_seconds: float


def sample_and_score(sampler: Sampler, task, problems: list[Problem], group_size: int, params: SamplingParams,
                     generator: torch.Generator | None) -> Scored:
    """Sample `group_size` responses per problem and reward each with the task's verifier (`Task.score_batch`)."""
    t0 = time.perf_counter()
    batch = sampler.sample(problems, group_size, params, generator)
    t1 = time.perf_counter()
    texts = sampler.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
    scores = task.score_batch(texts, [p for p in problems for _ in range(group_size)])
    return Scored(batch, texts, scores, t1 - t0, time.perf_counter() - t1)
