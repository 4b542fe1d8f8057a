#!/bin/bash
# Data-parallel training of one cross-validation fold on SLURM: one torchrun per node, one training
# process per GPU, rendezvous on the job's first node. A job array trains the folds as independent jobs:
#
#   sbatch --array=0-4 examples/slurm_train.sh                 # folds 0..4 (extra train flags may follow)
#   imagemasknet evaluate --cv "$RUNS"/lesion-resunet-fold{0,1,2,3,4} --json cv.json   # afterwards: one CV report
#
# Re-submitting a fold whose job stopped (time limit, pre-emption, a dead node) resumes it from its last
# checkpoint; torchrun's --max-restarts also resumes after a failed rank within the job.
#SBATCH --job-name=imagemasknet
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
FOLD=${FOLD:-${SLURM_ARRAY_TASK_ID:-0}}
RUNS=${IMAGEMASKNET_RUNS:-$PWD/runs}            # must be storage every node sees
OUT="$RUNS/lesion-resunet-fold$FOLD"
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export IMAGEMASKNET_RUNS="$RUNS"

if [ -f "$OUT/status.json" ] && grep -q '"state": "finished"' "$OUT/status.json"; then
    echo "fold $FOLD already finished: $OUT"; exit 0
elif [ -f "$OUT/last.state.pt" ]; then
    ACTION=(--resume "$OUT")                    # continue after the last checkpoint, with the run's own settings
else
    ACTION=(--preset lesion-resunet --fold "$FOLD" --out-dir "$OUT" --num-workers 4 "$@")
fi

# --batch-size is the global batch and must divide by nodes × GPUs per node. The preset's 16 over 8 GPUs
# leaves 2 scans per GPU, few for batch norm (not synchronised across GPUs): with many GPUs pass a larger
# batch, e.g. `sbatch --array=0-4 examples/slurm_train.sh --batch-size 64 --lr 4e-3`.
srun --ntasks-per-node=1 torchrun \
    --nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HEAD_NODE:29500" \
    --max-restarts 1 \
    -m imagemasknet train --no-progress "${ACTION[@]}"
