"""Causal LMs from the Hugging Face Hub and the checks every model directory goes through before transformers reads it.

- `hub_model_dir`: `model.name` = 'org/name' or 'org/name@revision' (a branch, tag or commit) resolved to its snapshot
  folder in the Hub cache (`poise.io.hub.snapshot`: downloaded on first use with huggingface_hub's progress bars, read
  from the cache alone under HF_HUB_OFFLINE=1). Only what a causal LM needs is fetched: the config, the tokenizer
  files, the chat template and the safetensors weights; PyTorch .bin weights only when the repository has no
  safetensors, and Python files only with `model.trust_remote_code`. `models.load_local` then loads the folder like
  any local directory, with all its checks.
- `remote_code_refusal`: the one-line refusal for a directory whose config maps the model to custom code
  (`auto_map`) that transformers has no built-in class for, when remote code is not allowed.
"""

from __future__ import annotations

import json
from pathlib import Path

from poise.io.hub import snapshot, snapshot_sha, split_revision

# What a causal LM needs from its repository (fnmatch patterns over the repository's file paths).
CONFIG_FILES = ["config.json", "generation_config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "*.tiktoken",
                   "chat_template.jinja", "chat_template.json"]
SAFETENSORS = ["model*.safetensors", "model.safetensors.index.json"]  # transformers' names, sharded or not
PYTORCH_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
REMOTE_CODE = ["*.py"]


def hub_model_dir(name: str, trust_remote_code: bool = False) -> Path:
    """The local snapshot folder of the Hub model `name` ('org/name[@revision]'), fetched into the Hub cache when it
    is not there yet. Raises `HubError` (one line naming model.name) when it cannot be had."""
    repo, revision = split_revision(name)
    base = CONFIG_FILES + TOKENIZER_FILES + (REMOTE_CODE if trust_remote_code else [])
    path = snapshot(repo, revision=revision, allow_patterns=base + SAFETENSORS, key="model.name")
    if not any(path.glob("*.safetensors")):  # an older repository: PyTorch .bin weights only
        path = snapshot(repo, revision=revision, allow_patterns=base + PYTORCH_BIN, key="model.name")
    print(f"{name}: Hugging Face Hub snapshot {snapshot_sha(path)} ({path})")  # the exact commit, for the record
    return path


def remote_code_refusal(path: Path, label: str) -> str | None:
    """A one-line error when `path`'s config.json maps the model to custom code (`auto_map`) for a `model_type`
    transformers does not know, so that loading it would run that code; None otherwise. A config whose `auto_map` is
    only a leftover beside a built-in architecture loads with transformers' own classes and is not refused."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None  # load_local names a missing or unreadable config itself
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map or config.get("model_type") in CONFIG_MAPPING_NAMES:
        return None
    return (f"model.trust_remote_code: {label} needs its own Python code to load (config.json auto_map: "
            f"{', '.join(auto_map)}; model_type {config.get('model_type')!r} is not built into transformers); "
            "read that code, then pass --model.trust_remote_code true to run it")
