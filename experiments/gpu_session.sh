#!/usr/bin/env bash
# The checks of issue 15 for one lent GPU machine, in the stages its 15 minutes and 64 MiB transfers allow
# (run from the repository root there; results go to $OUT, else to docs/results):
#   bash experiments/gpu_session.sh nccl              the CUDA / NCCL tests (NCCL needs one GPU per rank: as many ranks
#                                                     as there are GPUs), then the whole test suite under that torch
#   bash experiments/gpu_session.sh amp               images/s of the full model and S=2/4/8 sub-ResNets, fp32 /
#                                                     bf16 / fp16 autocast, with and without channels-last
#   bash experiments/gpu_session.sh train DATA E [S]  ResIST vs local SGD, 4 workers, full width, E epochs (14) of real
#                                                     CIFAR-10 in DATA (preset cifar10_gpu_short), tables + run folders;
#                                                     training stops after S seconds (default 420)
#   bash experiments/gpu_session.sh tta DATA [S]      issue 20's GPU twin: full width, 4 workers, 14 epochs, 25 local steps
#                                                     (4 evaluations an epoch): ResIST and local SGD seed 1, the part-3
#                                                     recipe, a time-matched local SGD (8.3 epochs), then seed 0 of the
#                                                     pair; stops after S seconds (default 540), run folders as a tarball
# Uses the machine's own torch (no install): PYTHONPATH points at src/. CIFAR-10 (184 MB) is over one call's
# 64 MiB transfer: send it in three calls (two train_x files each, then the rest) into one folder there
# while the machine stays warm.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
DEST=${OUT:-docs/results}
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
case "${1:-}" in
  amp)
    python3 experiments/micro/subnet_speed.py --device cuda --width 1 --batch 128 --workers 2 4 8 --reps 30 \
      --variants fp32 fp32+cl bf16 bf16+cl fp16 fp16+cl --name subnet_speed_amp_gpu
    [ "$DEST" = docs/results ] || cp docs/results/subnet_speed_amp_gpu.md docs/results/subnet_speed_amp_gpu.json "$DEST"/
    ;;
  train)
    data=$2 epochs=$3 limit=${4:-420} runs=/tmp/gpu_runs
    timeout "$limit" python3 experiments/run.py cifar10 --data-dir "$data" --preset cifar10_gpu_short --workers 4 \
      --seeds 0 --algos resist local_sgd --runs $runs --name cifar10_gpu_w4 -- --epochs "$epochs" \
      || echo "gpu_session: training stopped early; tabulating what finished"
    python3 experiments/run.py cifar10 --data-dir "$data" --preset cifar10_gpu_short --workers 4 --seeds 0 \
      --algos resist local_sgd --runs $runs --name cifar10_gpu_w4 --only-existing -- --epochs "$epochs" || true
    # The run folders without their checkpoints (hundreds of MB at full width), as one file.
    tar -C $runs --exclude checkpoints --exclude model.pt -czf "$DEST/cifar10_gpu_w4_runs.tar.gz" .
    [ "$DEST" = docs/results ] || cp docs/results/cifar10_gpu_w4* "$DEST"/ 2>/dev/null || true
    ;;
  tta)
    data=$2 limit=${3:-540} runs=/tmp/gpu_tta
    timeout "$limit" python3 experiments/run.py tta --data-dir "$data" --runs $runs --only gpu_resist_w4_s1 \
      gpu_lsgd_w4_s1 gpu_recipe_w4_s0 gpu_tmlsgd_w4_s0 gpu_resist_w4_s0 gpu_lsgd_w4_s0 \
      || echo "gpu_session: the twin stopped early; the finished runs are in the tarball"
    nvidia-smi --query-gpu=name --format=csv,noheader > $runs/device.txt
    tar -C $runs --exclude checkpoints --exclude model.pt -czf "$DEST/tta_gpu_runs.tar.gz" .
    ;;
  nccl)
    python3 -m pytest -q -p no:cacheprovider -rs tests/distributed -k "nccl or cuda" 2>&1 | tee "$DEST/pytest_gpu.txt" || true
    python3 -m pytest -q -p no:cacheprovider -n 8 tests 2>&1 | tail -25 | tee "$DEST/pytest_all_on_gpu_machine.txt"
    ;;
  *) echo "usage: bash experiments/gpu_session.sh nccl | amp | train DATA_DIR EPOCHS [SECONDS] | tta DATA_DIR [SECONDS]" >&2; exit 2 ;;
esac
