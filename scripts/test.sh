#!/usr/bin/env bash
# The test command: installs poise and its test extras into the current Python (a no-op when they are already
# there), then runs both tiers of the suite offline: the default tier (`python -m pytest`, at most 3 minutes on 2
# cores) and the long tier (`python -m pytest -m slow`: multi-process, subprocess and long runs). Extra arguments go
# to pytest (`-m slow` or `-m "not slow"` picks one tier).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[test]"
HF_HUB_OFFLINE=1 python -m pytest -q -m "" "$@"
