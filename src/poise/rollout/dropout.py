"""Dropout off (`model.disable_dropout`, default true), and the one mode the policy samples and scores in.

`disable_dropout(model)` zeroes every dropout probability a Hugging Face causal LM uses at forward time:
- the `p` of every torch dropout module (GPT-2's attn_dropout / resid_dropout, OPT's, peft's LoRA dropout);
- float attributes named `*dropout`, `*_pdrop` or `*layerdrop` stored on modules (Qwen3, Llama and Mistral keep
  `attention_dropout` on each attention module and pass it to the attention kernel in training mode);
- the same names on the model's config and its sub-configs, for code that reads the config at forward time (and so
  the saved policy's config.json says what was trained).
TRL's `disable_dropout_in_model` does the first only, which leaves Qwen3's attention dropout on.

The mode, whatever the engine: sampling (the built-in sampler) and scoring (the training step's forward pass for old
log-probs, entropies and probe features) run in eval mode, so they are the policy that sampled; the update
runs in train mode. Without dropout the two modes compute the same function, so the first mini-batch's scoring
forward is the update's own (its PPO ratio is exactly 1). With dropout kept (`model.disable_dropout false`, or LoRA
dropout), `active_dropout` is not empty and every mini-batch of the update makes its own train-mode forward.
"""

from __future__ import annotations

import torch

SUFFIXES = ("dropout", "_pdrop", "layerdrop")


def _rate_names(obj) -> list[str]:
    """Names of `obj`'s own float attributes that are dropout rates above 0."""
    return [k for k, v in vars(obj).items() if k.endswith(SUFFIXES) and isinstance(v, float) and v > 0]


def _configs(model) -> list:
    """The model's config and every sub-config in it (text_config, vision_config, ...), each once."""
    seen, todo, out = set(), [getattr(model, "config", None)], []
    while todo:
        c = todo.pop()
        if c is None or id(c) in seen or not hasattr(c, "to_dict"):
            continue
        seen.add(id(c))
        out.append(c)
        todo.extend(v for v in vars(c).values() if hasattr(v, "to_dict") and hasattr(v, "model_type"))
    return out


def active_dropout(model: torch.nn.Module) -> list[str]:
    """Where `model` still drops out in train mode: 'module.name.p' for dropout modules with p > 0, 'module.name.attr'
    for dropout rates stored on modules, 'config.attr' for those on its configs. Empty: train and eval mode compute
    the same function (for the models this project loads: decoder-only LMs without batch norm)."""
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd) and mod.p > 0:
            found.append(f"{name}.p")
        found += [f"{name}.{k}" if name else k for k in _rate_names(mod)]
    for c in _configs(model):
        found += [f"config.{k}" for k in _rate_names(c)]
    return found


def disable_dropout(model: torch.nn.Module) -> list[str]:
    """Zero every dropout rate of `model` in place (module docstring); returns what was changed (`active_dropout`
    before), empty when the model had none."""
    changed = active_dropout(model)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            mod.p = 0.0
        for k in _rate_names(mod):
            setattr(mod, k, 0.0)
    for c in _configs(model):
        for k in _rate_names(c):
            setattr(c, k, 0.0)
    return changed
