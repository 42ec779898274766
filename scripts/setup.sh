#!/usr/bin/env bash
# Installs resist and what it needs. torch is pinned only when none is installed: 2.13.0 is the
# release this project is tested with (on the project's CPU machines pip takes it from local disk).
# $1: the extras to install, comma-separated (default demo).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-demo}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# pip runs quietly, so each step says what it is doing before it starts: the first install can take minutes.
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (a large download the first time; a few minutes)..." >&2
  "$PY" -m pip install -q "torch==2.13.0"
fi
echo "setup: installing resist with its [$EXTRAS] extras (pip install -e '.[$EXTRAS]')..." >&2
"$PY" -m pip install -q -e ".[$EXTRAS]"
echo "setup: done" >&2
