#!/usr/bin/env bash
# Installs resist and what it needs. torch is pinned only when none is installed: 2.13.0 is the
# release this project is tested with (on the project's CPU machines pip takes it from local disk).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[${1:-demo}]"
