"""Sharded data parallel with PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`).

Turned on by `fsdp: true` under `accelerate launch --num_processes N` (or by an accelerate config whose
`distributed_type` is FSDP, which sets ACCELERATE_USE_FSDP). Each decoder layer is one FSDP unit and the rest of the
model (embeddings, final norm, LM head; a critic's value head) is the root unit, so every rank keeps 1/N of the
parameters, the gradients and the AdamW moments. The policy, the critic and the frozen KL reference are each
sharded this way.

The data layout, the loss weighting and the probe are those of `distributed.py`; only the gradient averaging
changes. FSDP's reduce-scatter in the backward takes the mean over ranks, in place of `Dist.average_grads`, so the
update is the single-process one up to float rounding.

Where the full parameters are needed:
  - Sampling and scoring (the no-grad pass, and the first mini-batch's forward that the update reuses) run inside
    one `gathered(model)` per step: every unit is all-gathered once and kept for the whole block, then resharded.
    Ranks generate different lengths and so call the model a different number of times; with the parameters
    already gathered no call communicates. The whole model is resident there, as under DDP, while gradients and
    optimizer moments stay sharded.
  - The update's backwards (the first one included) and its other forwards run sharded: a unit is gathered just
    for its own forward and backward. FSDP needs every rank to make the same calls, and the layout guarantees
    that: the same number of local mini-batches on every rank, each with the same forward structure.
Checkpoints and the final policy hold full tensors in the usual files. They are gathered to rank 0's CPU (a
collective every rank joins) and written by rank 0, so an FSDP run's checkpoint and policy look exactly like a DDP
run's; resume reads them on every rank and keeps each rank's shard.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn


# accelerate launch settings poise does not apply: name -> (environment variable, the values that ask for nothing more)
UNREAD = {"mixed_precision": ("ACCELERATE_MIXED_PRECISION", ("no", "")),  # model.dtype decides
          "fsdp_offload_params": ("FSDP_OFFLOAD_PARAMS", ("false",)),
          "fsdp_activation_checkpointing": ("FSDP_ACTIVATION_CHECKPOINTING", ("false",)),
          "fsdp_sharding_strategy": ("FSDP_SHARDING_STRATEGY", ("FULL_SHARD", "1")),
          "fsdp_reshard_after_forward": ("FSDP_RESHARD_AFTER_FORWARD", ("true", "FULL_SHARD"))}


def requested(cfg_fsdp: bool) -> bool:
    """Whether to shard: `fsdp: true`, or an accelerate launch configured for FSDP. Raises ValueError for an
    accelerate launch configured for DeepSpeed, which poise does not drive."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise ValueError("fsdp: DeepSpeed (ACCELERATE_USE_DEEPSPEED from the accelerate config) is not supported; "
                         "use an accelerate config with distributed_type: FSDP, or `--fsdp true` (PyTorch FSDP2 "
                         "shards parameters, gradients and optimizer state like ZeRO-3)")
    return cfg_fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def unread_accelerate_settings() -> list[str]:
    """accelerate launch settings (from its config file or flags) that ask for something poise does not do; the
    trainer prints them so that nobody believes, say, parameters are offloaded when they are not."""
    return [f"{name}={os.environ[env]}" for name, (env, plain) in UNREAD.items()
            if os.environ.get(env, plain[0]) not in plain]


def configure(cfg, dist) -> None:
    """Decide whether this run shards (`requested`), record it in `cfg.fsdp` and `dist.sharded`, and print the
    accelerate settings it does not apply. Raises ValueError, naming `fsdp`, for a run that cannot shard."""
    cfg.fsdp = dist.sharded = requested(cfg.fsdp)
    if cfg.fsdp and cfg.model.lora_r > 0:
        raise ValueError("fsdp: not supported with LoRA (model.lora_r > 0), whose trainable weights and optimizer "
                         "state are already small; leave fsdp off (every rank then keeps the whole model)")
    if cfg.fsdp and dist.world == 1:
        raise ValueError("fsdp: sharding needs several processes: `accelerate launch --num_processes N poise train "
                         "...` (or leave fsdp off)")
    unread = unread_accelerate_settings() if dist.world > 1 and dist.main else []
    if unread:
        print(f"warning: accelerate settings that poise does not apply: {', '.join(unread)} (poise shards each "
              "decoder layer fully with `fsdp`, keeps parameters on the device, and takes the dtype from model.dtype)")


def is_sharded(module: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard(module: nn.Module, layer_type: type, device: torch.device, world: int) -> nn.Module:
    """Shard `module` in place over `world` ranks: every submodule of `layer_type` (a decoder layer) is one unit,
    the remainder the root unit. Returns `module` (its class is now an FSDP subclass of the original)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for sub in module.modules():
        if isinstance(sub, layer_type):
            fully_shard(sub, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


@contextlib.contextmanager
def gathered(module: nn.Module | None):
    """Full parameters on every rank for the duration of the block (sampling, scoring): one all-gather per unit on
    entry, none per forward call inside, reshard on exit. A graph built inside can be backpropagated after the block:
    FSDP gathers each unit again for its backward. A no-op for an unsharded module."""
    if not is_sharded(module):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    module.set_reshard_after_forward(False)  # recursive: a forward inside keeps what was gathered
    for m in units:
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            # FSDP2's defaults: inner units free their parameters after forward; the root keeps its own, which
            # the backward needs straight away
            m.set_reshard_after_forward(m is not module, recurse=False)


def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` returning a plain tensor: for sharded gradients the norm is over all
    ranks' shards (identical on every rank)."""
    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def tied_names(module: nn.Module) -> list[list[str]]:
    """Groups of parameter names that share one tensor (tied embeddings), each sorted: the first is the name
    `safetensors.torch.save_model` keeps."""
    names: dict[int, list[str]] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return [sorted(g) for g in names.values() if len(g) > 1]


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0's CPU (other ranks get {}); a collective every rank must join. Tied
    parameters appear once, under the name `safetensors.torch.save_model` keeps."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(module, options=_options(cpu_offload=True))
    for group in tied_names(module):
        for n in group[1:]:
            sd.pop(n, None)
    return {k: v.contiguous() for k, v in sd.items()}


def load_full_state(module: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load an unsharded state dict (every rank passes the whole of it) into a sharded `module`: each rank keeps its
    shard. Tied names missing from `sd` are filled from their partner (`fill_tied`)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, fill_tied(module, sd), options=_options())


def fill_tied(module: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` with every tied parameter name present (copied from a partner), as `module.state_dict()` has them."""
    sd = dict(sd)
    for group in tied_names(module):
        have = next((n for n in group if n in sd), None)
        for n in group:
            if have is not None and n not in sd:
                sd[n] = sd[have]
    return sd


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's unsharded state, keyed by parameter name, on rank 0's CPU (other ranks get {}); collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Load `optimizer_state`'s output (every rank passes the whole of it); each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, sd, options=_options())


def state_megabytes(modules, optimizers) -> dict[str, float]:
    """What this rank holds of the training state, in MB: the weights and gradients of `modules` and the tensors in
    the states of `optimizers` (under FSDP, this rank's shards; None entries are skipped). Tied weights count once."""
    def local_mb(t) -> float:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size() / 2 ** 20

    params = {id(p): p for m in modules if m is not None for p in m.parameters()}.values()
    states = [v for o in optimizers if o is not None for st in o.state.values() for v in st.values()]
    return {"weights": sum(local_mb(p) for p in params),
            "gradients": sum(local_mb(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(local_mb(v) for v in states if isinstance(v, torch.Tensor) and v.dim() > 0)}


def local_sum(x: torch.Tensor) -> float:
    """Sum of this rank's part of `x` (the whole of a plain tensor)."""
    return float((x.to_local() if hasattr(x, "to_local") else x).sum())
