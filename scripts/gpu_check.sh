#!/usr/bin/env bash
# The first check of the GPU path, for one CUDA GPU on a node without a network (docs/results/reliability.md, "GPU").
#   bash scripts/gpu_wheels.sh gpu_wheels          # beforehand, on a machine with a network: the wheels it lacks
#   bash scripts/gpu_check.sh [--wheels gpu_wheels] [--out runs/gpu_check]     # on the GPU node, from the checkout
#   bash scripts/gpu_check.sh --dry-run            # the same stages on the CPU with tiny sizes (CI runs this)
# It uses the node's own PyTorch and transformers: the wheels are installed with --no-index --no-deps into a folder
# of their own, and poise is put on the path from this checkout (no build, no download). A torch or transformers
# too old for poise is named in one line with the version it needs. Then benchmarks/reliability/gpu_check.py runs
# the stages (held-out gain of 100 POISE steps, every preset, a resume, phase times of a Qwen3-0.6B-sized model) and writes
# gpu_check.json and gpu_check.md into --out.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=gpu_wheels
out=runs/gpu_check
dry=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --dry-run) dry=(--dry-run); shift ;;
    *) echo "gpu_check: unknown argument $1 (use --wheels DIR, --out DIR, --dry-run)" >&2; exit 2 ;;
  esac
done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
site=""
if [ -d "$wheels" ]; then
  site=$(mktemp -d /tmp/poise-site-XXXX)
  whl=("$wheels"/*.whl)
  python -m pip install -q --no-index --no-deps --no-compile --target "$site" "${whl[@]}"
  for sdist in "$wheels"/*.tar.gz; do  # a compiled package with no wheel for this Python: built here, offline
    [ -e "$sdist" ] && python -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$sdist"
  done
  echo "gpu_check: installed ${#whl[@]} wheels from $wheels into $site"
fi
export PYTHONPATH="$PWD/src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
python scripts/gpu_requirements.py
python benchmarks/reliability/gpu_check.py "${dry[@]}" --out "$out"
