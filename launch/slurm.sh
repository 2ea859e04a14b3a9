#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one task per GPU; the tasks find each other through SLURM's environment
# (jax.distributed reads SLURM_* itself and gives local task i the node's GPU i).
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh configs/finetune.py:vqa,large \
#       /scratch/runs/vqa_large --config.init_from=/scratch/ckpt/ofa_large --config.data.tasks.vqa.path=/scratch/vqa.tsv \
#       --config.data.tasks.vqa.valid_path=/scratch/vqa_val.tsv
# WORKDIR must be on a file system every node sees. The environment (.venv with jax[cuda12], see BUILD.md) must
# exist on that shared file system already. Two minutes before the time limit SLURM sends this script SIGTERM: it
# passes it on to the tasks, which finish their step, checkpoint and exit, and then requeues the job, which resumes
# from that checkpoint. A job preempted by SLURM resumes the same way.
#SBATCH --job-name=ofa-jax
#SBATCH --ntasks-per-node=8
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=slurm-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
config=$1 workdir=$2
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

requeue() {
  echo "SIGTERM: the tasks checkpoint and exit, then job $SLURM_JOB_ID is requeued"
  kill -TERM "$tasks" 2>/dev/null || true
  wait "$tasks" || true
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap requeue TERM
# In the background, so that the shell runs its trap as soon as the signal comes.
srun --kill-on-bad-exit=1 .venv/bin/python -m ofa_jax.train --config "$config" --workdir "$workdir" "$@" &
tasks=$!
wait "$tasks"
