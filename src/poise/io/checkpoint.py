"""Crash-safe checkpoints and exact resume: the files of a training state's dictionary
(`poise.train.state.TrainState.state_dict`), written atomically and checked by SHA-256 on the way back.

A checkpoint is a directory `<run>/checkpoints/step-000123/` holding everything the next step depends on:
    policy.safetensors, critic.safetensors   model weights (safetensors; tied weights stored once)
    optim.pt                                 optimizer + scheduler states (loaded with torch.load(weights_only=True);
                                             an FSDP run's optimizer states are keyed by parameter name)
    probe.safetensors                        the fitted probe and the feature buffer's rows (prefixed keys)
    screen.safetensors                       with screen.mode on: the choice generator, the prompt probe and its buffer
    rng.safetensors                          torch's global RNG state and the sampling generator's state (and
                                             every CUDA device's RNG state when the run initialised CUDA)
    state.json                               step, data position, Python / NumPy RNG states, compute totals,
                                             counters, probe/buffer metadata, package versions
    config.yaml                              the resolved config
    manifest.json                            sha256 of every file above; written last
It is written into a temporary sibling directory, the manifest last, then renamed into place, so a run killed at
any moment leaves either a complete checkpoint or a `.tmp-*` directory that is ignored (and removed, with a log line,
when a run starts in that directory: `remove_stale_temporaries`). Before the rename every file and the directory are
fsynced, and the parent directory after it, so a power loss cannot leave a renamed but incomplete checkpoint; older
checkpoints beyond `keep_last` are deleted only after that, once the new one is complete on disk. A checkpoint whose
manifest is missing or whose files do not match it is skipped with a warning. Nothing is unpickled except with
`weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from poise.config.errors import ConfigError
from poise.config.loading import flatten_dict, load_yaml, to_dict

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
    """Bytes of every tensor inside `obj` (nested dicts, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def checkpoint_bytes(run_dir: str | Path, state: dict) -> int:
    """About how many bytes the next checkpoint takes: the newest complete one's size when there is one, else the
    tensors `state` holds (weights, optimizer moments, probe and buffer) plus 1 MB for the rest."""
    done = complete_checkpoints(run_dir)
    if done:
        return _dir_bytes(done[-1])
    return _tensor_bytes(state) + 2**20


def save_checkpoint(run_dir: str | Path, state: dict, keep_last: int = 2) -> Path:
    """Write `state` (a `TrainState.state_dict()`) as the checkpoint of its step, atomically; prune to the newest
    `keep_last` afterwards.

    Raises CheckpointError, before writing anything, when the disk has less free space than the checkpoint needs
    (`checkpoint_bytes`), and when a write fails midway (its temporary directory is removed); either way the
    previous checkpoint stays complete and loadable.
    """
    step = int(state["step"])
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    need, free = checkpoint_bytes(run_dir, state), shutil.disk_usage(root).free
    if free < need:
        raise CheckpointError(f"checkpoint: {final} needs about {_megabytes(need)} and {root} has "
                              f"{_megabytes(free)} free; free some space (or lower checkpoint.keep_last) and resume")
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write(tmp, state)
    except Exception as e:  # noqa: BLE001 - a full disk, a failing device, a tensor writer's error
        shutil.rmtree(tmp, ignore_errors=True)
        previous = complete_checkpoints(run_dir)
        raise CheckpointError(
            f"checkpoint: writing {final} failed ({type(e).__name__}: {e}); {root} has "
            f"{_megabytes(shutil.disk_usage(root).free)} free and a checkpoint needs about {_megabytes(need)}; "
            + (f"the previous checkpoint {previous[-1].name} is intact" if previous else "no earlier checkpoint")) \
            from e
    for f in sorted(tmp.iterdir()):  # durable before it becomes visible: the files, then the directory's entries
        _fsync(f)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)  # the rename itself, before any older checkpoint goes
    for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (for a directory: its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(run_dir: str | Path) -> list[str]:
    """Remove the `.tmp-*` directories an interrupted checkpoint write left in <run_dir>/checkpoints, saying so in one
    line; returns their names. Called at the start of a run, by the one process that writes checkpoints."""
    root = checkpoint_dir(run_dir)
    stale = sorted(p for p in root.glob(".tmp-*") if p.is_dir()) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale:
        print(f"checkpoint: removed {len(stale)} incomplete checkpoint director{'y' if len(stale) == 1 else 'ies'} "
              f"left by an interrupted write in {root}: {', '.join(p.name for p in stale)}")
    return [p.name for p in stale]


OPTIM_KEYS = ("optimizer", "scheduler", "critic_optimizer", "critic_scheduler")
JSON_KEYS = ("step", "stream", "python_random", "numpy_random", "meter", "counters")


def _write(tmp: Path, state: dict) -> None:
    """Every file of the checkpoint into `tmp`, the manifest last."""
    save_file(state["model"], str(tmp / "policy.safetensors"))
    if state.get("critic") is not None:
        save_file(state["critic"], str(tmp / "critic.safetensors"))
    torch.save({k: state[k] for k in OPTIM_KEYS if state.get(k) is not None}, tmp / "optim.pt")
    tensors = {f"probe.{k}": v for k, v in state["probe"].items()}
    tensors.update({f"buffer.{k}": v.contiguous() for k, v in state["buffer"].items()})
    save_file(tensors, str(tmp / "probe.safetensors"))
    pairs = state["rng"]  # one (torch, sampling generator) pair per rank
    if len(pairs) == 1:
        rng = {"torch": pairs[0][0], "generator": pairs[0][1]}
    else:
        rng = {f"{name}.rank{r}": t for r, pair in enumerate(pairs) for name, t in zip(("torch", "generator"), pair)}
    for r, states in enumerate(state.get("cuda_rng") or []):  # each rank's CUDA devices, when it used CUDA
        rng.update({f"cuda.rank{r}.device{d}": t.cpu() for d, t in enumerate(states)})
    save_file(rng, str(tmp / "rng.safetensors"))
    meta = {k: state[k] for k in JSON_KEYS}
    meta.update(probe=state["probe_meta"], buffer=state["buffer_meta"], versions=_versions(), world_size=len(pairs))
    screen = state.get("screen")
    if screen is not None:  # prompt screening: its choice generator, prompt probe and the probe's buffer; the
        # history and the metadata go in state.json
        save_file({"generator": screen["generator"], **{f"probe.{k}": v for k, v in screen["probe"].items()},
                   **{f"buffer.{k}": v for k, v in (screen.get("buffer") or {}).items()}},
                  str(tmp / "screen.safetensors"))
        meta["screen"] = {"probe_meta": screen["probe_meta"], "history": screen["history"],
                          "buffer_meta": screen.get("buffer_meta")}
    (tmp / "state.json").write_text(json.dumps(meta))
    (tmp / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {"step": int(state["step"]), "files": {name: _sha256(tmp / name) for name in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))  # last: marks the checkpoint complete


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


def load_checkpoint(path: str | Path) -> dict:
    """The state dictionary the checkpoint at `path` holds (the keys of `TrainState.state_dict`, plus world_size and
    versions), for `TrainState.load_state_dict`."""
    path = Path(path)
    meta = json.loads((path / "state.json").read_text())
    state = {k: meta[k] for k in JSON_KEYS if k in meta}
    state.update(probe_meta=meta["probe"], buffer_meta=meta["buffer"], world_size=meta.get("world_size", 1),
                 versions=meta.get("versions", {}), config=load_yaml(path / "config.yaml"))
    state["model"] = load_file(str(path / "policy.safetensors"))
    state["critic"] = load_file(str(path / "critic.safetensors")) if (path / "critic.safetensors").is_file() else None
    optim = torch.load(path / "optim.pt", weights_only=True)
    state.update({k: optim.get(k) for k in OPTIM_KEYS})
    tensors = load_file(str(path / "probe.safetensors"))
    for part in ("probe", "buffer"):
        state[part] = {k[len(part) + 1:]: v for k, v in tensors.items() if k.startswith(part + ".")}
    rng = load_file(str(path / "rng.safetensors"))
    if "torch" in rng:
        state["rng"] = [(rng["torch"], rng["generator"])]
    else:
        state["rng"] = [(rng[f"torch.rank{r}"], rng[f"generator.rank{r}"]) for r in range(state["world_size"])]
    cuda = [[rng[f"cuda.rank{r}.device{d}"] for d in range(len(rng)) if f"cuda.rank{r}.device{d}" in rng]
            for r in range(state["world_size"])]
    state["cuda_rng"] = cuda if any(cuda) else None
    state["screen"] = None
    if "screen" in meta:
        tensors = load_file(str(path / "screen.safetensors"))
        state["screen"] = {"generator": tensors["generator"], **meta["screen"],
                           "probe": {k[len("probe."):]: v for k, v in tensors.items() if k.startswith("probe.")},
                           "buffer": {k[len("buffer."):]: v for k, v in tensors.items() if k.startswith("buffer.")}}
    return state


# Fields that may differ between a run and its resumption (output_dir: a run directory moved or copied elsewhere).
RESUMABLE_CHANGES = ("resume", "max_steps", "threads", "report_to", "log_samples_every", "log_samples", "output_dir")


def config_changes(saved_path: Path, cfg, free_prefixes: tuple[str, ...] = ()) -> tuple[list[str], str]:
    """The keys of `cfg` (flattened) whose value differs from the config.yaml at `saved_path`, leaving out
    RESUMABLE_CHANGES and keys starting with `free_prefixes`; a field added since that file was written counts at
    its default. Returns (sorted keys, "key: old -> new, ..." for a message)."""
    saved = load_yaml(saved_path)
    now, default = flatten_dict(to_dict(cfg)), flatten_dict(to_dict(type(cfg)()))
    saved = {**{k: v for k, v in default.items() if k not in saved}, **saved}  # fields added since: at their default
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)
                     and k not in RESUMABLE_CHANGES and not k.startswith(free_prefixes))
    return changed, ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)


def resume(cfg, world: int = 1) -> dict | None:
    """Prepare `cfg.output_dir` for the loop: the state dictionary to go on from, or None for a fresh start.

    Fresh run (`cfg.resume` false): refuses a directory that already holds complete checkpoints, so a finished or
    interrupted run is never overwritten by accident. Resume: loads the newest valid checkpoint after checking that
    the config matches it and that it was written by `world` processes.
    """
    found = complete_checkpoints(cfg.output_dir)
    if not cfg.resume:
        if found:
            raise ConfigError(f"output_dir: {cfg.output_dir} already holds checkpoints ({found[-1].name}); pass "
                              f"--resume to continue that run, or choose another --output-dir")
        return None
    path = latest_checkpoint(cfg.output_dir)
    if path is None:
        print(f"resume: no complete checkpoint in {checkpoint_dir(cfg.output_dir)}; starting from step 0")
        return None
    changed, diffs = config_changes(path / "config.yaml", cfg, ("budget.", "checkpoint.", "eval."))
    if changed:
        raise ConfigError(f"{changed[0]}: the config differs from the checkpoint {path} ({diffs}); only max_steps, "
                          f"threads, output_dir, budget.*, checkpoint.* and eval.* may change on resume")
    saved_world = json.loads((path / "state.json").read_text()).get("world_size", 1)
    if saved_world != world:
        raise ConfigError(f"resume: {path} was written by {saved_world} process(es); resume it with the same number "
                          f"(got {world}) so every rank gets back its data share and RNG state")
    state = load_checkpoint(path)
    state["path"] = str(path)
    return state
