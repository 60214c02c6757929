"""Multi-process training: `accelerate launch --multi_gpu --num_processes N -m poise.commands.cli train ...` (data
parallel, DDP semantics).

Every rank holds the whole policy and optimizer (with `fsdp: true`, a shard of each: `fsdp.py`). A step's P prompts
are split between ranks by whole groups, so a group's G rollouts (and its advantages, which need only the group)
stay on one rank. The split is interleaved per mini-batch: with M prompts per mini-batch and W ranks, rank r takes
prompts i with (i mod M) // (M / W) == r. The union over ranks of their j-th local mini-batch is then exactly the
j-th mini-batch of a single process on the whole batch, and one optimizer step per mini-batch sees the same data
either way.

Gradients: each rank weights its local loss by (n_local / n_global) * W, where n counts what the loss averages
over (tokens for token-mean, sequences for the sequence modes); averaging the gradients over ranks then gives the
gradient of the global mean, the single-process update. The probe: features and targets are gathered back into
the single-process row order, so every rank fits the identical probe on the identical buffer. Metrics are computed
from gathered per-row values, so they describe the whole batch. Only rank 0 writes logs and checkpoints.

Devices (`resolve_device`): the model, the rollout batch and everything computed from it live on `Dist.device`
(`device: auto` is this process's GPU when CUDA is available, else the CPU); rewards, advantages before the
update, probe features and the probe itself stay on the CPU, where they are small. Process-group set-up is
accelerate's (`PartialState`) from the environment that `accelerate launch` (or torchrun) sets: gloo on the CPU,
NCCL on GPUs, where the collectives below move CPU tensors to the GPU and back. A single process needs none of
this: the collectives are then no-ops.
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch import Tensor


DEVICE_HELP = "'auto' (a CUDA GPU when one is available, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device `device:` names. 'auto' is CUDA when available, else the CPU; a bare 'cuda' is this process's
    GPU (LOCAL_RANK under `accelerate launch`). Raises ValueError, naming the key, for an unknown or absent device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device {name!r}; use {DEVICE_HELP}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: {name!r} is not supported; use {DEVICE_HELP}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} asked for, but torch.cuda.is_available() is False on this machine "
                             "(use 'auto' or 'cpu')")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {dev} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device: 'mps' asked for, but torch.backends.mps.is_available() is False on this machine")
    return dev


class Dist:
    """Rank, world size, this process's device and the few collective operations the loop needs; every method is
    exact for W = 1."""

    def __init__(self, device: str = "cpu") -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        self.comm_device = torch.device("cpu")  # where collectives run: the CPU for gloo, the GPU for NCCL
        self.sharded = False  # FSDP (fsdp.py): gradients are averaged by its reduce-scatter, not average_grads
        if self.world > 1:
            from accelerate import PartialState

            on_gpu = self.device.type == "cuda"
            if self.device.type == "mps":
                raise ValueError("device: 'mps' supports one process only; use 'cpu' with several processes")
            state = PartialState(cpu=not on_gpu)  # gloo on the CPU, NCCL across GPUs
            self.rank, self.world = state.process_index, state.num_processes
            if on_gpu:
                self.device = self.comm_device = state.device  # cuda:LOCAL_RANK, set as the current device
        self.main = self.rank == 0

    # ---- data layout ----
    def owners(self, n: int, mini_batch: int) -> list[int]:
        """The rank that takes each of n prompts: mini-batch j (prompts j*M .. , the last one possibly shorter, of
        size s_j) is split into W equal runs, rank r taking run r. Needs every s_j divisible by W."""
        out = []
        for i in range(n):
            j, q = divmod(i, mini_batch)
            out.append(q // (min(mini_batch, n - j * mini_batch) // self.world))
        return out

    def local_prompts(self, n: int, mini_batch: int) -> list[int]:
        """Indices (into a step's n prompts) that this rank takes: interleaved per mini-batch of `mini_batch`."""
        if self.world == 1:
            return list(range(n))
        return [i for i, r in enumerate(self.owners(n, mini_batch)) if r == self.rank]

    def global_order(self, n: int, mini_batch: int, group: int = 1) -> Tensor:
        """Permutation that puts rows gathered rank by rank (each rank's rows in its local order, `group` rows per
        prompt) back into single-process order: out[k] = gathered index of global row k."""
        if self.world == 1:
            return torch.arange(n * group)
        owner = self.owners(n, mini_batch)
        gathered = [i for r in range(self.world) for i in range(n) if owner[i] == r]  # gathered position -> prompt
        inv = torch.empty(n, dtype=torch.long)
        inv[torch.tensor(gathered)] = torch.arange(n)
        return (inv[:, None] * group + torch.arange(group)).flatten()

    # ---- collectives ----
    def gather_rows(self, x: Tensor, order: Tensor | None = None) -> Tensor:
        """Concatenate every rank's rows (same shape on each rank), optionally reordered by `order`."""
        if self.world == 1:
            return x  # `order` is the identity for one process
        y = x.to(self.comm_device).contiguous()
        parts = [torch.empty_like(y) for _ in range(self.world)]
        torch.distributed.all_gather(parts, y)
        out = torch.cat(parts).to(x.device)
        return out if order is None else out[order]

    def gather_objects(self, obj) -> list:
        """Every rank's `obj` (picklable; tensors in it should be on the CPU), in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.comm_device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def max(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.comm_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (keeps skip decisions in lock-step)."""
        return self.max(float(flag)) > 0 if self.world > 1 else flag

    def loss_weight(self, n_local: float) -> float:
        """(n_local / n_global) * W: scales a rank's local mean so that averaged gradients equal the global mean's."""
        if self.world == 1:
            return 1.0
        total = self.sum(n_local)
        return n_local / total * self.world if total > 0 else 0.0

    def average_grads(self, params) -> None:
        """All-reduce (mean) the gradients of `params` in one flat buffer; a missing gradient counts as zero. Nothing to
        do for one process, or under FSDP, whose backward has already averaged (and sharded) them."""
        if self.world == 1 or self.sharded:
            return
        params = [p for p in params if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset: offset + n].view_as(p).clone()
            offset += n

    def in_sync(self, tensors: dict[str, Tensor]) -> bool:
        """True when `tensors` are bit-identical on every rank (compared by a SHA-256 of their bytes)."""
        h = hashlib.sha256()
        for k in sorted(tensors):
            h.update(k.encode())
            h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
        return len(set(self.gather_objects(h.hexdigest()))) == 1

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def check_layout(world: int, prompts_per_step: int, mini_batch_prompts: int) -> str | None:
    """Why a config cannot run on `world` processes (None if it can)."""
    if world == 1:
        return None
    mb = min(mini_batch_prompts, prompts_per_step)
    if prompts_per_step % mb or mb % world:
        return (f"optim.mini_batch_prompts ({mb}) must divide rollout.prompts_per_step ({prompts_per_step}) and be "
                f"a multiple of the number of processes ({world}), so every rank gets whole groups")
    return None
