"""Optional LoRA (Hu et al. 2021) through peft: only low-rank adapters on chosen linear layers train.

`apply_lora` wraps a causal LM with `peft.get_peft_model`: every original weight is frozen, and each target linear
layer W gets W + (alpha / r) * B @ A with A (r, in) random and B (out, r) zero, so the wrapped model starts out
computing exactly what the original did. The wrapper passes the loop's keyword arguments (position_ids, KV cache,
logits_to_keep) through to the model, and `models.decoder_layers` finds the layers under `base_model.model`.

The trained policy is saved merged (`merged_copy`: W <- W + (alpha / r) * B @ A, adapter modules removed), so
`policy/` is a plain Hugging Face model directory that every other part of the toolchain reads. Checkpoints hold the
wrapped model's state (frozen base weights and adapters) and resume into the same wrapper.

peft is an optional dependency (`pip install -c constraints.txt -e '.[real]'`); `apply_lora` imports it, only when
model.lora_r > 0.
"""

from __future__ import annotations

import copy
import sys

import torch

from poise.config.errors import ConfigError
from poise.io.errors import MissingModelError


def apply_lora(model: torch.nn.Module, r: int, alpha: float, dropout: float, targets: list[str]) -> torch.nn.Module:
    """`model` wrapped with LoRA adapters of rank `r` on the linear modules named in `targets`; only the adapters
    require grad. Uses torch's global RNG for the A matrices (seeded by the trainer)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise MissingModelError("model.lora_r > 0 needs the peft package; install it with "
                                "`pip install -c constraints.txt -e '.[real]'` (or `pip install -c constraints.txt "
                                "peft`)") from None
    linear = [name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:  # peft matches a target against the end of a module's dotted name
        names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ConfigError(f"model.lora_targets: {', '.join(missing)} not found among the linear layers of "
                          f"{type(model).__name__} ({', '.join(names)})")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none",
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def is_lora(model: torch.nn.Module) -> bool:
    """True for a peft-wrapped model. Never imports peft: a model can only be wrapped once peft is loaded."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain (unwrapped) copy of a LoRA model with every adapter merged into its base weight; `model` is left
    untouched (it may keep training)."""
    return copy.deepcopy(model).merge_and_unload()

