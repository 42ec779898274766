#!/usr/bin/env bash
# Set-up plus the main job: ResIST vs local SGD on 4 workers, side by side (resist demo).
# CIFAR-10 is taken from $RESIST_DATA_DIR, ./data, or the shared data folder beside this checkout;
# without it the demo downloads it, and offline it falls back to scikit-learn's bundled digits.
# The plot extra comes too, so that `resist plot` works on the demo's runs straight after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo,plot
if [ -z "${RESIST_DATA_DIR:-}" ] && [ -d ../shared/data/cifar10 ]; then
  export RESIST_DATA_DIR=../shared/data/cifar10
fi
echo "demo: training ResIST, then local SGD (a line per round as they go)..." >&2
exec resist demo "$@"
