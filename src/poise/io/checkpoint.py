"""Crash-safe checkpoints and exact resume.

A checkpoint is a directory `<run>/checkpoints/step-000123/` holding everything the next step depends on:
    policy.safetensors, critic.safetensors   model weights (safetensors; tied weights handled by save_model)
    optim.pt                                 optimizer + scheduler states (loaded with torch.load(weights_only=True);
                                             an FSDP run's optimizer states are keyed by parameter name)
    probe.safetensors                        the fitted probe and the feature buffer's rows (prefixed keys)
    rng.safetensors                          torch's global RNG state and the sampling generator's state
    state.json                               step, data position, Python / NumPy RNG states, compute totals,
                                             counters, probe/buffer metadata, package versions
    config.yaml                              the resolved config
    manifest.json                            sha256 of every file above; written last
It is written into a temporary sibling directory, the manifest last, then renamed into place, so a run killed at
any moment leaves either a complete checkpoint or a `.tmp-*` directory that is ignored. Older checkpoints beyond
`keep_last` are deleted only after the new one is complete. A checkpoint whose manifest is missing or whose files
do not match it is skipped with a warning. Nothing is unpickled except with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from poise.parallel import fsdp
from poise.io.config import save_config

PACKAGES = ("poise", "torch", "transformers", "safetensors", "reasoning-gym", "numpy")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib_metadata.version(p)
        except importlib_metadata.PackageNotFoundError:
            out[p] = None
    return out


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


class CheckpointError(OSError):
    """A checkpoint could not be written; the message names the directory, the space it needs and the space free.
    The previous complete checkpoint is left as it was."""


def _megabytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor inside `obj` (nested dicts, lists and tuples, modules' state dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in obj.state_dict().values())
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def checkpoint_bytes(run_dir: str | Path, parts: dict) -> int:
    """About how many bytes the next checkpoint takes: the newest complete one's size when there is one, else the
    tensors it will hold (weights, optimizer moments, probe and buffer) plus 1 MB for the rest."""
    done = complete_checkpoints(run_dir)
    if done:
        return _dir_bytes(done[-1])
    full = parts.get("full") or {}
    total = sum(_tensor_bytes(full.get(k) or parts.get(k)) for k in ("model", "critic"))
    total += sum(_tensor_bytes(full.get(k) or parts[k].state_dict()) for k in ("optimizer", "critic_optimizer")
                 if parts.get(k) is not None)
    total += _tensor_bytes(parts["probe"].state_dict()) + _tensor_bytes(parts["buffer"].state_dict())
    return total + 2**20


def save_checkpoint(run_dir: str | Path, step: int, parts: dict, keep_last: int = 2) -> Path:
    """Write a complete checkpoint for `step` atomically; prune to the newest `keep_last` afterwards.

    `parts` keys: model, optimizer, scheduler, critic, critic_optimizer, critic_scheduler (None without a critic),
    probe, buffer, stream, generator, meter, cfg, counters (a JSON-able dict of loop counters).
    Raises CheckpointError, before writing anything, when the disk has less free space than the checkpoint needs
    (`checkpoint_bytes`), and when a write fails midway (its temporary directory is removed); either way the
    previous checkpoint stays complete and loadable.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    need, free = checkpoint_bytes(run_dir, parts), shutil.disk_usage(root).free
    if free < need:
        raise CheckpointError(f"checkpoint: {final} needs about {_megabytes(need)} and {root} has "
                              f"{_megabytes(free)} free; free some space (or lower checkpoint.keep_last) and resume")
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write(tmp, step, parts)
    except Exception as e:  # noqa: BLE001 - a full disk, a failing device, a tensor writer's error
        shutil.rmtree(tmp, ignore_errors=True)
        previous = complete_checkpoints(run_dir)
        raise CheckpointError(
            f"checkpoint: writing {final} failed ({type(e).__name__}: {e}); {root} has "
            f"{_megabytes(shutil.disk_usage(root).free)} free and a checkpoint needs about {_megabytes(need)}; "
            + (f"the previous checkpoint {previous[-1].name} is intact" if previous else "no earlier checkpoint")) \
            from e
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, step: int, parts: dict) -> None:
    """Every file of the checkpoint into `tmp`, the manifest last."""

    full = parts.get("full") or {}  # FSDP: unsharded states gathered by fsdp.checkpoint_states

    def save_weights(key: str, name: str) -> None:
        if key in full:
            save_file(full[key], str(tmp / name))
        else:
            save_model(parts[key], str(tmp / name))

    save_weights("model", "policy.safetensors")
    optim = {"optimizer": full.get("optimizer") or parts["optimizer"].state_dict(),
             "scheduler": parts["scheduler"].state_dict()}
    if parts.get("critic") is not None:
        save_weights("critic", "critic.safetensors")
        optim["critic_optimizer"] = full.get("critic_optimizer") or parts["critic_optimizer"].state_dict()
        optim["critic_scheduler"] = parts["critic_scheduler"].state_dict()
    torch.save(optim, tmp / "optim.pt")
    probe, buffer = parts["probe"], parts["buffer"]
    tensors = {f"probe.{k}": v for k, v in probe.state_dict().items()}
    tensors.update({f"buffer.{k}": v.contiguous() for k, v in buffer.state_dict().items()})
    save_file(tensors, str(tmp / "probe.safetensors"))
    states = parts.get("rng_states") or [(torch.get_rng_state(), parts["generator"].get_state())]
    if len(states) == 1:
        rng = {"torch": states[0][0], "generator": states[0][1]}
    else:  # several processes: every rank's torch and sampling-generator states
        rng = {f"{name}.rank{r}": t for r, pair in enumerate(states) for name, t in zip(("torch", "generator"), pair)}
    save_file(rng, str(tmp / "rng.safetensors"))
    np_state = np.random.get_state()
    stream = parts["stream"]
    state = {
        "step": step,
        "stream": {"order": stream.order, "rng": _jsonable(stream.rng.getstate())},
        "python_random": _jsonable(random.getstate()),
        "numpy_random": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "meter": dict(parts["meter"].total),
        "counters": parts.get("counters", {}),
        "probe": probe.metadata(),
        "buffer": buffer.metadata(),
        "versions": _versions(),
        "world_size": len(states),
    }
    (tmp / "state.json").write_text(json.dumps(state))
    save_config(parts["cfg"], tmp / "config.yaml")
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {"step": step, "files": {name: _sha256(tmp / name) for name in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))  # last: marks the checkpoint complete


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (list, tuple)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def problem(path: Path) -> str | None:
    """What is wrong with the checkpoint at `path` (None when `manifest.json` exists and every file it lists is there
    with its recorded sha256)."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return "manifest.json is missing (an interrupted write)"
    try:
        files = json.loads(manifest.read_text())["files"]
        for name, digest in files.items():
            if not (path / name).is_file():
                return f"{name} is missing"
            if _sha256(path / name) != digest:
                return f"{name} does not match its sha256 in manifest.json (changed or corrupted)"
    except (ValueError, KeyError, OSError) as e:
        return f"manifest.json cannot be read ({type(e).__name__}: {e})"
    return None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories with a manifest, oldest first (by step; no hash check)."""
    root = checkpoint_dir(run_dir)
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / "manifest.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that passes its manifest check; broken ones are skipped with a warning."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return None
    candidates = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for path in reversed(candidates):
        why = problem(path)
        if why is None:
            return path
        warnings.warn(f"checkpoint {path} is not usable: {why}; skipping it for the one before", stacklevel=2)
    return None


def load_checkpoint(path: str | Path, parts: dict) -> dict:
    """Restore every object in `parts` (as passed to save_checkpoint) from `path`; returns state.json's dict.

    Probe and buffer are returned rebuilt under keys 'probe' and 'buffer' of the result (they are replaced, not
    updated in place)."""
    from poise.algo.probe import FeatureBuffer, RidgeProbe

    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    optim = torch.load(path / "optim.pt", weights_only=True)

    def load_weights(key: str, opt_key: str, name: str) -> None:
        if fsdp.is_sharded(parts[key]):  # every rank reads the full tensors and keeps its shard
            fsdp.load_full_state(parts[key], load_file(str(path / name)))
            fsdp.load_optimizer_state(parts[key], parts[opt_key], optim[opt_key])
        else:
            load_model(parts[key], str(path / name))
            parts[opt_key].load_state_dict(optim[opt_key])

    load_weights("model", "optimizer", "policy.safetensors")
    parts["scheduler"].load_state_dict(optim["scheduler"])
    if parts.get("critic") is not None:
        load_weights("critic", "critic_optimizer", "critic.safetensors")
        parts["critic_scheduler"].load_state_dict(optim["critic_scheduler"])
    tensors = load_file(str(path / "probe.safetensors"))
    probe_sd = {k[len("probe."):]: v for k, v in tensors.items() if k.startswith("probe.")}
    buffer_sd = {k[len("buffer."):]: v for k, v in tensors.items() if k.startswith("buffer.")}
    state["probe_object"] = RidgeProbe.from_state(probe_sd, state["probe"])
    state["buffer_object"] = FeatureBuffer.from_state(buffer_sd, state["buffer"])
    rng = load_file(str(path / "rng.safetensors"))
    rank = parts["dist"].rank if parts.get("dist") is not None else 0
    suffix = f".rank{rank}" if f"torch.rank{rank}" in rng else ""
    torch.set_rng_state(rng["torch" + suffix])
    try:
        parts["generator"].set_state(rng["generator" + suffix])
    except RuntimeError as e:  # a CPU generator's state does not fit a CUDA one, and the reverse
        raise ValueError(f"{path}: the sampling generator was saved on another kind of device than "
                         f"{parts['generator'].device} ({e}); resume with the run's own `device`") from None
    stream = parts["stream"]
    stream.order = list(state["stream"]["order"])
    stream.rng.setstate(_tuplify(state["stream"]["rng"]))
    random.setstate(_tuplify(state["python_random"]))
    name, keys, *rest = state["numpy_random"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    meter = parts["meter"]
    meter.total.clear()
    meter.total.update(state["meter"])
    return state


# Fields that may differ between a run and its resumption (output_dir: a run directory moved or copied elsewhere).
RESUMABLE_CHANGES = ("resume", "max_steps", "threads", "report_to", "log_samples_every", "log_samples", "output_dir")


def resume(cfg, parts: dict) -> int:
    """Prepare `cfg.output_dir` for the loop; returns the last completed step (0 for a fresh start).

    Fresh run (`cfg.resume` false): refuses a directory that already holds complete checkpoints, so a finished or
    interrupted run is never overwritten by accident. Resume: restores `parts` from the newest valid checkpoint
    (replacing parts['probe'] and parts['buffer']) after checking that the config matches it.
    """
    from poise.io.configio import ConfigError, flatten_dict, load_yaml

    found = complete_checkpoints(cfg.output_dir)
    if not cfg.resume:
        if found:
            raise ConfigError(f"output_dir: {cfg.output_dir} already holds checkpoints ({found[-1].name}); pass "
                              f"--resume to continue that run, or choose another --output-dir")
        return 0
    path = latest_checkpoint(cfg.output_dir)
    if path is None:
        print(f"resume: no complete checkpoint in {checkpoint_dir(cfg.output_dir)}; starting from step 0")
        return 0
    from poise.io.config import to_dict

    saved = load_yaml(path / "config.yaml")
    now = flatten_dict(to_dict(cfg))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)
                     and k not in RESUMABLE_CHANGES and not k.startswith(("budget.", "checkpoint.")))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(f"{changed[0]}: the config differs from the checkpoint {path} ({diffs}); only max_steps, "
                          f"threads, output_dir, budget.* and checkpoint.* may change on resume")
    world = parts["dist"].world if parts.get("dist") is not None else 1
    saved_world = json.loads((path / "state.json").read_text()).get("world_size", 1)
    if saved_world != world:
        raise ConfigError(f"resume: {path} was written by {saved_world} process(es); resume it with the same number "
                          f"(got {world}) so every rank gets back its data share and RNG state")
    state = load_checkpoint(path, parts)
    parts["probe"], parts["buffer"] = state["probe_object"], state["buffer_object"]
    parts["counters"].clear()
    parts["counters"].update(state.get("counters", {}))
    return int(state["step"])
