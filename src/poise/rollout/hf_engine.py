"""Rollouts: batched KV-cache sampling and the scoring forward pass (shared with the update for the first mini-batch).

Layout of a batch of B = P * G sequences (the G rollouts of prompt p are rows p*G .. p*G+G-1):
    prompt_ids    (B, L)  left-padded,  prompt_mask   (B, L) bool
    response_ids  (B, T)  right-padded, response_mask (B, T) bool, True up to and including the EOS token
Position ids are `cumsum(mask) - 1`, identical in sampling and scoring, so left padding changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from poise.rollout.logprobs import HeadInput, chunked_logprobs, logprobs_and_entropy, token_logprobs  # noqa: F401
from poise.rollout.models import HiddenCapture


@dataclass
class RolloutBatch:
    """One step's rollouts; `score()` fills log-probs, entropies and hidden states."""

    prompt_ids: torch.Tensor  # (B, L)
    prompt_mask: torch.Tensor  # (B, L) bool
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) bool
    group_size: int
    old_logp: torch.Tensor | None = None  # (B, T)
    entropy: torch.Tensor | None = None  # (B, T)
    prompt_hidden: torch.Tensor | None = None  # (B, L, H) at the probe layer
    response_hidden: torch.Tensor | None = None  # (B, T, H) at the probe layer
    extras: dict = field(default_factory=dict)
    ended: torch.Tensor | None = None  # (B,) bool: the response contains EOS (set where it is generated)
    sampler_logp: torch.Tensor | None = None  # (B, T): the engine's own log-probs of the sampled tokens (vLLM)

    @property
    def truncated(self) -> torch.Tensor:
        """(B,) True where the response hit the length limit without EOS. Without `ended`, a row that fills the
        padded width counts as truncated (exact only when T = max_new_tokens)."""
        return ~self.ended if self.ended is not None else self.response_mask.all(dim=1)

    def to(self, device) -> "RolloutBatch":
        """The batch with every tensor on `device` (extras are left alone)."""
        def move(x):
            return None if x is None else x.to(device)
        return RolloutBatch(*(move(getattr(self, f)) for f in ("prompt_ids", "prompt_mask", "response_ids",
                                                                 "response_mask")), self.group_size,
                            *(move(getattr(self, f)) for f in ("old_logp", "entropy", "prompt_hidden",
                                                                 "response_hidden")), ended=move(self.ended),
                            sampler_logp=move(self.sampler_logp))

    def rows(self, idx: torch.Tensor) -> "RolloutBatch":
        """Subset of rows (e.g. one mini-batch); tensors are indexed, nothing copied twice."""
        def take(x):
            return None if x is None else x[idx]
        return RolloutBatch(take(self.prompt_ids), take(self.prompt_mask), take(self.response_ids),
                            take(self.response_mask), self.group_size, take(self.old_logp), take(self.entropy),
                            take(self.prompt_hidden), take(self.response_hidden), ended=take(self.ended),
                            sampler_logp=take(self.sampler_logp))


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) positions counting only valid tokens: cumsum(mask) - 1, clamped at 0 for left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None):
    """(B, V) logits -> (B,) sampled token ids at `temperature` with nucleus `top_p`."""
    logits = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prompts_shared(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int) -> bool:
    """True when the rows come in runs of `group_size` identical prompts (rows p*G .. p*G+G-1), so the prompt can be
    run once per group and its KV cache shared by the group's G responses."""
    B, G = prompt_ids.shape[0], group_size
    if G < 2 or B % G:
        return False
    ids, m = prompt_ids.view(B // G, G, -1), prompt_mask.view(B // G, G, -1)
    return bool((ids == ids[:, :1]).all() and (m == m[:, :1]).all())


@functools.lru_cache(maxsize=None)
def _cache_keyword(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """`{name: cache}` for the keyword the model's forward takes its KV cache by: `cache` where the installed
    transformers has it (5.2x renamed `past_key_values`, which 5.40 removes), else `past_key_values`. A peft
    wrapper passes keywords through to the model it wraps, whose signature decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {_cache_keyword(type(base)): cache}


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS first, then each EOS id in the model's generation config
    (Qwen's lists two, `<|im_end|>` and `<|endoftext|>`), without repeats."""
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    for i in ([extra] if isinstance(extra, int) else list(extra or [])):
        if i is not None and i not in ids:
            ids.append(int(i))
    return [i for i in ids if i is not None]


def _shared_prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int, cache,
                    logits_to_keep: int = 1):
    """Prefill one row per group (prompt rows 0, G, 2G, ...) into `cache`, then repeat every cache entry and the
    kept logits G times along the batch: the (B, ...) state a prefill of all B rows would give, for 1/G of the
    compute. Differentiable (the backward sums the G responses' gradients into the one prompt pass)."""
    G = group_size
    out = model(input_ids=prompt_ids[::G], attention_mask=prompt_mask[::G].long(),
                position_ids=position_ids(prompt_mask[::G]), **cache_kwargs(model, cache), use_cache=True,
                logits_to_keep=logits_to_keep)
    cache.batch_repeat_interleave(G)
    return out.logits.repeat_interleave(G, dim=0)


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
             eos_id: int | Sequence[int],
             pad_id: int, temperature: float = 1.0, top_p: float = 1.0,
             generator: torch.Generator | None = None, group_size: int = 1,
             prefilled: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses with a KV cache; logits only for the last position; stops when every row has ended.
    With `group_size` G > 1 and rows in runs of G identical prompts, each prompt is prefilled once (1/G of the
    prefill compute) and its cache shared by the group. `prefilled` = (cache, logits (P, 1, V)): that prefill was
    already done, one row per group (`Prefill.rows_for`), and is used instead.

    `eos_id`: one id or several (`stop_token_ids`); a row ends at the first of any of them.
    Returns response_ids (B, T) padded with `pad_id` after EOS and response_mask (B, T), T <= max_new_tokens.
    """
    B = prompt_ids.shape[0]
    eos = torch.as_tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=prompt_ids.device)
    attn = prompt_mask.long()
    pos = position_ids(prompt_mask)
    cache = DynamicCache()
    if prefilled is not None:
        cache, logits = prefilled
        cache.batch_repeat_interleave(group_size)
        logits = logits.repeat_interleave(group_size, dim=0)
    elif prompts_shared(prompt_ids, prompt_mask, group_size):
        logits = _shared_prefill(model, prompt_ids, prompt_mask, group_size, cache)
    else:
        logits = model(input_ids=prompt_ids, attention_mask=attn, position_ids=pos, **cache_kwargs(model, cache),
                       use_cache=True, logits_to_keep=1).logits
    next_pos = pos[:, -1:] + 1  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        tok = sample_next(logits[:, -1], temperature, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        done |= torch.isin(tok, eos)
        if bool(done.all()) or len(tokens) == max_new_tokens:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        logits = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
                       **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1).logits
        next_pos = next_pos + 1
    response = torch.stack(tokens, dim=1)  # (B, T)
    is_eos = torch.isin(response, eos)
    before = is_eos.long().cumsum(1) - is_eos.long()  # EOS tokens strictly before each position
    mask = before == 0  # valid up to and including the first EOS
    return response.masked_fill(~mask, pad_id), mask


def shares_prompts(model, batch: RolloutBatch) -> bool:
    """Whether `response_forward` runs each group's prompt once: the rows are whole groups of identical prompts
    (`prompts_shared`), and the model does not checkpoint its layers in this forward (a checkpointed layer in training
    mode drops the KV cache that the responses continue from, so the full forward is taken instead)."""
    checkpointed = model.training and getattr(model, "is_gradient_checkpointing", False)
    return not checkpointed and prompts_shared(batch.prompt_ids, batch.prompt_mask, batch.group_size)


def response_forward(model, batch: RolloutBatch, temperature: float = 1.0, layer: int | None = None,
                     head_input: bool = False):
    """Forward over prompt + response -> (logits (B, T, V) for the positions that predict response tokens,
    hidden (B, L + T, H) output of decoder `layer` or None). With `head_input` the first is instead the final hidden
    states (B, T, H) at those positions, the LM head's input, and no logits are made (`logprobs.HeadInput`); the
    temperature is then applied by `logprobs.chunked_logprobs`.

    When the batch's rows are whole groups of identical prompts (`shares_prompts`), the prompt runs once per group
    and the G responses continue from its shared KV cache: the same logits and gradients (up to float rounding)
    for (L + G T) / (G (L + T)) of the compute.
    """

    L, T = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    pos = position_ids(mask)
    with (HiddenCapture(model, layer) if layer is not None else contextlib.nullcontext()) as cap, \
            (HeadInput(model) if head_input else contextlib.nullcontext()) as head:
        if shares_prompts(model, batch):
            cache = DynamicCache()
            first = _shared_prefill(model, batch.prompt_ids, batch.prompt_mask, batch.group_size, cache)
            rest = model(input_ids=batch.response_ids, attention_mask=mask.long(), position_ids=pos[:, L:],
                         **cache_kwargs(model, cache), use_cache=True).logits
            if head is not None:
                first, rest = head.inputs[0].repeat_interleave(batch.group_size, dim=0), head.inputs[1]
            logits = torch.cat([first, rest[:, :-1]], dim=1)
            hidden = None if cap is None else torch.cat(
                [cap.outputs[0].repeat_interleave(batch.group_size, dim=0), cap.outputs[1]], dim=1)
        else:
            ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
            logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=pos, logits_to_keep=T + 1,
                           use_cache=False).logits
            logits = (logits if head is None else head.inputs[0])[:, :-1]
            hidden = None if cap is None else cap.outputs[0]
    return (logits if head is not None else logits.float() / temperature), hidden


def response_logits(model, batch: RolloutBatch, temperature: float = 1.0):
    """Logits (B, T, V) for the positions that predict response tokens (`response_forward` without hidden states)."""
    return response_forward(model, batch, temperature)[0]


def response_logprobs(model, batch: RolloutBatch, temperature: float = 1.0, layer: int | None = None,
                      chunk: int = 0, entropy: bool = True):
    """One forward -> (log pi of the response tokens (B, T), their entropies (B, T) (no gradient) or None, the
    probe-layer states (B, L + T, H) or None). `chunk` 0: from the full (B, T, V) logits, as before; `chunk` > 0:
    from the final hidden states `chunk` positions at a time (`logprobs.chunked_logprobs`), so the full logits never
    exist. The same values either way up to float rounding."""
    if chunk > 0:
        final, hidden = response_forward(model, batch, temperature, layer, head_input=True)
        logp, ent = chunked_logprobs(model.get_output_embeddings(), final, batch.response_ids, temperature, chunk,
                                     entropy)
        return logp, ent, hidden
    logits, hidden = response_forward(model, batch, temperature, layer)
    if entropy:
        return *logprobs_and_entropy(logits, batch.response_ids), hidden
    return token_logprobs(logits, batch.response_ids), None, hidden


def rows_per_micro_batch(width: int, tokens: int, group_size: int) -> int:
    """Rows per forward under a budget of `tokens` positions, each row running `width` (prompt + response, padding
    included): floor(tokens / width), at least 1, rounded down to whole groups of `group_size` when it holds one (so
    prompts can be shared), else single rows. `tokens` 0: no budget (a huge number)."""
    if tokens <= 0:
        return 1 << 62
    rows = max(1, tokens // max(1, width))
    return rows // group_size * group_size if rows >= group_size else rows


def minibatch_rows(n_prompts: int, mb_prompts: int, group_size: int) -> list[torch.Tensor]:
    """Row indices of each mini-batch of whole groups: prompts [s, s + mb_prompts) -> rows p*G .. p*G+G-1."""
    G = group_size
    return [(torch.arange(s, min(s + mb_prompts, n_prompts))[:, None] * G + torch.arange(G)).flatten()
            for s in range(0, n_prompts, mb_prompts)]


def _fill(batch: RolloutBatch, rows: torch.Tensor, logp: torch.Tensor, ent: torch.Tensor,
          hidden: torch.Tensor | None) -> None:
    """Write rows' old log-probs (n, T), entropies (n, T) and, with `hidden` (n, L+T, H), the probe-layer states into
    the batch, allocating its (B, ...) tensors on first use."""
    B, (L, T) = batch.prompt_ids.shape[0], (batch.prompt_ids.shape[1], batch.response_ids.shape[1])
    if batch.old_logp is None:
        batch.old_logp, batch.entropy = logp.new_zeros(B, T), ent.new_zeros(B, T)
    batch.old_logp[rows], batch.entropy[rows] = logp.detach(), ent.detach()
    if hidden is not None:
        hidden = hidden.detach().float()
        if batch.prompt_hidden is None:
            batch.prompt_hidden, batch.response_hidden = hidden.new_zeros(B, L, hidden.shape[-1]), \
                hidden.new_zeros(B, T, hidden.shape[-1])
        batch.prompt_hidden[rows], batch.response_hidden[rows] = hidden[:, :L], hidden[:, L:]


def score_with_graph(model, batch: RolloutBatch, rows: torch.Tensor, layer: int | None,
                     temperature: float = 1.0, chunk: int = 0) -> torch.Tensor:
    """The scoring pass for `rows` (the first mini-batch) as the policy update's own forward: fills the batch like
    `score` and returns their log-probs (n, T) with the autograd graph kept, for `policy_update(reused_logp=...)`.

    Before any optimizer step the policy is the one that sampled, so these are exactly the old log-probs (the PPO
    ratio of the first mini-batch is 1, as in TRL with one update per generation); one forward instead of two.
    It runs in training mode, the update's; the caller uses it only for a model without active dropout
    (`poise.rollout.dropout`), where training and eval mode compute the same function. `chunk`: log-probs and
    entropies `chunk` positions at a time (`response_logprobs`)."""
    model.train()
    mb = batch.rows(rows)
    logp, ent, hidden = response_logprobs(model, mb, temperature, layer, chunk)
    _fill(batch, rows, logp, ent, hidden)
    return logp


@torch.no_grad()
def score(model, batch: RolloutBatch, layer: int | None, temperature: float = 1.0, micro_batch: int = 256,
          skip: torch.Tensor | None = None, micro_batch_tokens: int = 0, chunk: int = 0):
    """The scoring pass: fills batch.old_logp, .entropy (B, T) and, when `layer` is given, the hidden states of
    that decoder layer over the prompt (B, L, H) and the response (B, T, H). One forward pass per micro-batch of
    `micro_batch` rows (whole groups), or with `micro_batch_tokens` > 0 of at most that many positions
    (`rows_per_micro_batch`); `chunk` > 0 computes log-probs and entropies in chunks (`response_logprobs`).
    Rows in `skip` are left alone (scored by `score_with_graph`)."""
    B, G = batch.prompt_ids.shape[0], batch.group_size
    todo = torch.arange(B)
    if skip is not None:
        todo = todo[~torch.isin(todo, skip)]
    step = max(G, micro_batch // G * G)  # whole groups per micro-batch, so prompts can be shared
    if micro_batch_tokens > 0:
        step = rows_per_micro_batch(batch.prompt_ids.shape[1] + batch.response_ids.shape[1], micro_batch_tokens, G)
    for s in range(0, len(todo), step):
        rows = todo[s:s + step]
        logp, ent, hidden = response_logprobs(model, batch.rows(rows), temperature, layer, chunk)
        _fill(batch, rows, logp, ent, hidden)
    return batch


@torch.no_grad()
def prompt_states(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, layer: int,
                  keep: list[str] | None = None) -> tuple[torch.Tensor, "Prefill | None"]:
    """(P, L, H) output of decoder `layer` over left-padded prompts (P, L): one prefill. The same states the scoring
    pass gives the prompt positions (a causal model's prompt states do not see the response). With `keep` (the P
    prompts' uids) the prefill's KV cache and last logits are kept as a `Prefill` for generation, else None."""
    cache = DynamicCache() if keep is not None else None
    with HiddenCapture(model, layer) as cap:
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask.long(), position_ids=position_ids(prompt_mask),
                    logits_to_keep=1, **(cache_kwargs(model, cache) if cache is not None else {}),
                    use_cache=cache is not None)
    return cap.hidden, (Prefill(keep, prompt_ids, prompt_mask, cache, out.logits) if cache is not None else None)


@dataclass
class Prefill:
    """Prompts already prefilled (by prompt screening), kept for generation: their uids (P,), left-padded ids and
    mask (P, L), the KV cache of that forward and its last position's logits (P, 1, V)."""

    uids: list[str]
    ids: torch.Tensor
    mask: torch.Tensor
    cache: DynamicCache
    logits: torch.Tensor

    def rows_for(self, uids: list[str], ids: torch.Tensor, mask: torch.Tensor) -> tuple | None:
        """(cache, logits) for the prompts `uids`, one row each in that order, whose fresh encoding is `ids` / `mask`
        (n, L'): the rows are selected and the left padding beyond L' dropped, so they are what a prefill of `ids`
        would give (up to float rounding). None, and nothing changed, unless every uid is here and each row's tokens
        equal the fresh ones. The selection replaces the cache's tensors: call once."""
        where = {u: i for i, u in enumerate(self.uids)}
        trim = self.mask.shape[1] - mask.shape[1]
        if trim < 0 or any(u not in where for u in uids) or not hasattr(self.cache, "layers"):
            return None
        idx = torch.tensor([where[u] for u in uids], dtype=torch.long, device=self.ids.device)
        if (self.mask[idx, :trim].any() or not torch.equal(self.mask[idx, trim:], mask)
                or not torch.equal(self.ids[idx, trim:][mask], ids[mask])):
            return None
        for layer in self.cache.layers:  # (P, heads, L, head_dim) each
            layer.keys, layer.values = layer.keys[idx, :, trim:], layer.values[idx, :, trim:]
        return self.cache, self.logits[idx]
