"""Before a GPU check: can this Python run poise? One line per problem, naming the package, the version found and
the version needed (from pyproject.toml's ranges, read here without installing anything); exit status 1 if any."""

import importlib.metadata as md
import importlib.util
import re
import sys

# The versions poise needs of what an NVIDIA/PyTorch image brings (pyproject.toml pins torch 2.13.0 for CI; any
# torch from 2.6, the first with FSDP2's fully_shard, runs it), and the modules that the wheels bring.
NEEDS = {"torch": "2.6", "transformers": "4.56", "accelerate": "1.0", "safetensors": "0.4", "tokenizers": "0.21",
         "numpy": "1.26", "huggingface_hub": "0.34", "tensorboard": "2.15", "pyyaml": "6", "tqdm": "4.60"}
MODULES = {"reasoning_gym": "reasoning-gym", "math_verify": "math-verify", "draccus": "draccus",
           "latex2sympy2_extended": "latex2sympy2-extended", "pycosat": "pycosat"}


def version_tuple(v: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def problems() -> list[str]:
    out = []
    for name, least in NEEDS.items():
        try:
            found = md.version(name)
        except md.PackageNotFoundError:
            out.append(f"{name} is not installed; poise needs {name}>={least}")
            continue
        if version_tuple(found) < version_tuple(least):
            out.append(f"{name} {found} is too old; poise needs {name}>={least} (pip install '{name}>={least}')")
    if md.version("transformers").startswith(("6.", "7.")):
        out.append(f"transformers {md.version('transformers')} is too new; poise needs transformers<6")
    for module, dist in MODULES.items():
        if importlib.util.find_spec(module) is None:
            out.append(f"{module} is missing; bring its wheel with `bash scripts/gpu_wheels.sh` ({dist})")
    return out


if __name__ == "__main__":
    found = problems()
    for line in found:
        print(f"gpu_check: {line}", file=sys.stderr)
    if found:
        sys.exit(1)
    import torch

    print(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}, "
          f"{torch.cuda.device_count()} GPU(s) visible), transformers {md.version('transformers')}: ready")
