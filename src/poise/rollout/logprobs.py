"""Log-probs and entropies of the sampled tokens: from full logits, or in chunks of tokens from the final hidden
states, so that the whole (B, T, V) logits never exist at once (`optim.logit_chunk_tokens`).

Shapes: B sequences, T response tokens, H hidden size, V vocabulary, N = B * T flattened positions, C a chunk of
positions. With logits z = head(h) / tau (tau the sampling temperature) at the positions that predict the response:
    log pi(y_t) = z_{t, y_t} - logsumexp_v z_{t, v}          H_t = -sum_v pi_v(t) log pi_v(t)
The chunked path applies the model's own output layer (`get_output_embeddings()`, the LM head) to C positions at a
time, takes the log-softmax of that (C, V) block alone, and keeps only (C,) results. With a graph, each chunk is
wrapped in `torch.utils.checkpoint` (non-reentrant): the forward keeps only the chunk's (C, H) input, and the backward
recomputes the chunk's logits, so at most one chunk's (C, V) tensors are alive in the forward or the backward. The
same values as the full path up to float rounding (a matmul over fewer rows may round differently).

A maintained fused kernel (Liger's fused linear cross-entropy) was considered: it needs Triton on a GPU and does not
run on the CPU ("0 active drivers"), and this project has had no GPU to test it on, so only the torch path is here.

Also here: `gradient_checkpointing`, the switch for the other memory option of the update, activation checkpointing.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from poise.algo.features import entropy_from_log_probs

# Config attributes of architectures whose logits are not lm_head(h): a cap or a scale after the head, which the
# chunked path would miss. Such a model is refused there (the full path handles it, as the model applies them).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def token_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """log pi(ids_t | ...) from logits (B, T, V) and ids (B, T) -> (B, T)."""
    return logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def logprobs_and_entropy(logits: Tensor, ids: Tensor, chunk: int = 8):
    """`token_logprobs` and the token entropies from one log-softmax: logits (B, T, V), ids (B, T) ->
    (log pi(ids_t) (B, T), differentiable; H_t (B, T), no gradient). The entropy's temporaries are made `chunk` rows
    at a time, so beyond the logits and their log-softmax only a chunk's worth of (T, V) tensors is alive. The same
    values as `token_logprobs` and `features.token_entropy` on the same logits."""
    lsm = logits.log_softmax(-1)
    logp = lsm.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        d = lsm.detach()
        ent = torch.cat([entropy_from_log_probs(d[s:s + chunk]) for s in range(0, d.shape[0], chunk)]) \
            if d.shape[0] else d.new_zeros(d.shape[:-1])
    return logp, ent


def check_plain_head(model) -> None:
    """Raise ValueError when the model's logits are not just its LM head's output (a soft cap or scale follows it,
    e.g. Gemma 2's final_logit_softcapping), which `chunked_logprobs` would leave out."""
    config = getattr(model, "config", None)
    for name in LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"optim.logit_chunk_tokens: this model transforms its logits after the LM head "
                             f"(config.{name} = {value}); chunked log-probs would leave that out. Use 0")


class HeadInput:
    """Context manager: inside it, the model's output layer records its input (the final hidden states at the
    positions `logits_to_keep` asks for) and is given an empty slice of them instead, so the model's forward returns
    (B, 0, V) logits and no (B, T, V) tensor is made. `inputs` holds one (B, n, H) tensor per forward, in order,
    attached to the graph when the forward has one."""

    def __init__(self, model: nn.Module):
        check_plain_head(model)
        self.head = model.get_output_embeddings()
        self.inputs: list[Tensor] = []

    def _hook(self, module, args):
        self.inputs.append(args[0])
        return (args[0][:, :0],) + tuple(args[1:])

    def __enter__(self):
        self.handle = self.head.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _chunk(head: nn.Module, h: Tensor, ids: Tensor, temperature: float, entropy: bool):
    """One chunk: h (C, H), ids (C,) -> (log pi(ids) (C,), H (C,) or an empty tensor). The logits are cast to float32
    and divided by the temperature exactly as the full path does (`response_forward`)."""
    lsm = (head(h).float() / temperature).log_softmax(-1)  # (C, V)
    logp = lsm.gather(-1, ids[:, None]).squeeze(-1)
    with torch.no_grad():
        ent = entropy_from_log_probs(lsm.detach()) if entropy else logp.new_zeros(0)
    return logp, ent


def chunked_logprobs(head: nn.Module, hidden: Tensor, ids: Tensor, temperature: float, chunk: int,
                     entropy: bool = True) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) from the final hidden states, `chunk` positions at a time.

    Args:
        head: the model's output layer (V x H; `get_output_embeddings()`), called on (C, H) inputs.
        hidden: (B, T, H) final hidden states at the positions that predict response tokens (`HeadInput`).
        ids: (B, T) the response tokens.
        temperature: tau; logits are head(h).float() / tau.
        chunk: C > 0, positions per chunk (over the flattened B * T positions).
        entropy: also return the entropies (no gradient).
    Returns:
        (log pi(ids) (B, T), differentiable through `hidden` and the head's weights when a graph is being built;
        H (B, T) or None).
    """
    B, T, H = hidden.shape
    h, y = hidden.reshape(B * T, H), ids.reshape(B * T)
    graph = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    logps, ents = [], []
    for s in range(0, B * T, chunk):
        if graph:  # keep only the (C, H) input; the backward recomputes this chunk's logits
            lp, en = checkpoint(_chunk, head, h[s:s + chunk], y[s:s + chunk], temperature, entropy,
                                use_reentrant=False)
        else:
            lp, en = _chunk(head, h[s:s + chunk], y[s:s + chunk], temperature, entropy)
        logps.append(lp)
        ents.append(en)
    logp = torch.cat(logps).view(B, T) if logps else hidden.new_zeros(B, T, dtype=torch.float32)
    ent = (torch.cat(ents).view(B, T) if ents else logp.detach().clone()) if entropy else None
    return logp, ent


@contextlib.contextmanager
def gradient_checkpointing(model: nn.Module | None, on: bool):
    """transformers' activation checkpointing (`gradient_checkpointing_enable`, non-reentrant) for the block: each
    decoder layer keeps only its input and recomputes its activations in the backward. Switched off again on exit,
    with the input-embedding hook the switch adds, so sampling and no-grad scoring run as before (a checkpointed layer
    in training mode drops the KV cache, which generation needs). A no-op when `on` is false or `model` is None."""
    if not on or model is None:
        yield
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.gradient_checkpointing_disable()
        if hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()
