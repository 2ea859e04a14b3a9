#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU VM pod slice: copies this checkout to all workers, readies each
# (launch/tpu_vm_setup.sh: the environment with jax[tpu] pinned to the project's jax, stale TPU processes cleared),
# and starts the same training command on each; the trainer joins the slice's workers (jax.distributed).
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
#   bash launch/tpu_pod.sh ofa-v4-64 us-central2-b configs/pretrain.py:large gs://bucket/ofa_large \
#       --config.data.vision_language_path=/data/vision_language_examples.tsv
# WORKDIR must be reachable by every worker (a gs:// bucket): checkpoints, metrics and resumption live there.
# Re-running the same command after a preemption resumes from the latest checkpoint.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,8p' "$0"; exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
remote_dir=ofa-jax
cd "$(dirname "$0")/.."
ssh_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }

tar czf /tmp/ofa-jax.tgz --exclude=.venv --exclude=.git --exclude=workdir .
gcloud compute tpus tpu-vm scp /tmp/ofa-jax.tgz "$tpu:/tmp/ofa-jax.tgz" --zone "$zone" --worker=all
ssh_all "mkdir -p $remote_dir && tar xzf /tmp/ofa-jax.tgz -C $remote_dir && bash $remote_dir/launch/tpu_vm_setup.sh"
args=$(printf ' %q' "$@")
ssh_all "cd $remote_dir && nohup .venv/bin/python -m ofa_jax.train --config $config --workdir $workdir$args \
  > train.log 2>&1 &"
echo "started on every worker of $tpu; follow with:"
echo "  gcloud compute tpus tpu-vm ssh $tpu --zone $zone --worker=0 --command 'tail -f $remote_dir/train.log'"
