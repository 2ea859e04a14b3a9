#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, each driving all of its node's GPUs; the processes
# find each other through SLURM's environment (jax.distributed reads SLURM_* itself).
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm.sh configs/finetune.py:vqa,large /scratch/runs/vqa_large \
#       --config.init_from=/scratch/ckpt/ofa_large --config.data.tasks.vqa.path=/scratch/data/vqa_train.tsv
# WORKDIR must be on a file system every node sees. The environment (.venv with jax[cuda12], see BUILD.md) must
# exist on that shared file system already. `sbatch --requeue` plus the trainer's SIGTERM handling resumes
# preempted jobs from their last checkpoint.
#SBATCH --job-name=ofa-jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0"; exit 2
fi
config=$1 workdir=$2
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# srun starts one task per node; each task calls jax.distributed.initialize(), which reads the coordinator (the
# first node), the process count and this process's id from SLURM_* variables.
srun --kill-on-bad-exit=1 .venv/bin/python -m ofa_jax.train --config "$config" --workdir "$workdir" "$@"
