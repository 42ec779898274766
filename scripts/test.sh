#!/usr/bin/env bash
# Set-up plus the whole test suite (CPU only; multi-process tests use gloo on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec python3 -m pytest "$@"
