#!/usr/bin/env bash
# The test command: installs poise and its test extras into the current Python (a no-op when they are already
# there), then runs the whole suite offline. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[test]"
HF_HUB_OFFLINE=1 python -m pytest -q "$@"
