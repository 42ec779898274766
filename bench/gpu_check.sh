#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (run from the repository root; results are
# copied to $OUT when set, else to docs/results):
#   1. per-worker training throughput of the paper ResNet101 at full width, sub-ResNet vs full model;
#   2. the CUDA / NCCL tests (NCCL needs one GPU per rank: as many ranks as there are GPUs);
#   3. the whole test suite under this machine's torch.
# Uses the machine's own torch (no install): PYTHONPATH points at src/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
DEST=${OUT:-docs/results}
mkdir -p "$DEST"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'gpus', torch.cuda.device_count())"
} 2>&1 | tee "$DEST/gpu_env.txt"
python3 bench/subnet_speed.py --device cuda --width 1 --batch 128 --workers 2 4 8 --reps 30 --name subnet_speed_gpu
[ "$DEST" = docs/results ] || cp docs/results/subnet_speed_gpu.md docs/results/subnet_speed_gpu.json "$DEST"/
python3 -m pytest -q -p no:cacheprovider -rs tests/distributed -k "nccl or cuda" 2>&1 | tee "$DEST/pytest_gpu.txt"
python3 -m pytest -q -p no:cacheprovider -n 8 tests 2>&1 | tail -25 | tee "$DEST/pytest_all_on_gpu_machine.txt"
