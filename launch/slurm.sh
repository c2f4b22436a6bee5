#!/usr/bin/env bash
# A Slurm GPU cluster: submits a batch job whose srun starts one task per node
# (each driving its node's GPUs) or one per GPU; jax.distributed finds the
# other tasks from Slurm's variables (runtime.distributed=auto sees
# SLURM_STEP_NUM_TASKS > 1). Slurm sends SIGTERM to every task 120 s before
# the time limit: the run stops with exit 143 keeping its last finished
# iteration, and submitting the same command again resumes it.
# WORKDIR and the checkout must be on the cluster's shared filesystem.
# Install first, on the shared filesystem (nothing is installed for you):
#   python3 -m venv .venv && .venv/bin/pip install -e '.[cuda]'
USAGE="launch/slurm.sh [--nodes=N] [--gpus-per-node=G] [--tasks=node|gpu] [--time=T] [--partition=P] [--account=A] [--job-name=NAME] [--python=PATH] [--dry-run] CONFIG WORKDIR [--config.x=value ...]"
OPTIONS_HELP="  --nodes=N         nodes (default 1)
  --gpus-per-node=G GPUs per node (default 1)
  --tasks=node|gpu  one process per node (default) or one per GPU
  --time=T          the time limit, e.g. 24:00:00 (default: the partition's)
  --partition=P, --account=A, --job-name=NAME (default n2n_jax): passed to sbatch"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODES=1
GPUS_PER_NODE=1
TASKS=node
TIME=""
PARTITION=""
ACCOUNT=""
JOB_NAME=n2n_jax
script_option() {
  case "$1" in
    --nodes) require_int --nodes "$2" 1 && NODES="$2" ;;
    --gpus-per-node) require_int --gpus-per-node "$2" 1 && GPUS_PER_NODE="$2" ;;
    --tasks)
      [[ "$2" == node || "$2" == gpu ]] || usage_error "--tasks must be node or gpu, got '$2'"
      TASKS="$2"
      ;;
    --time) TIME="$2" ;;
    --partition) PARTITION="$2" ;;
    --account) ACCOUNT="$2" ;;
    --job-name) JOB_NAME="$2" ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require_local_config
main_command
TASKS_PER_NODE=1
[[ "$TASKS" == node ]] || TASKS_PER_NODE=$GPUS_PER_NODE

batch_script() {
  echo '#!/bin/bash'
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$TASKS_PER_NODE"
  # Every task sees all its node's GPUs; with a task per GPU, jax.distributed
  # picks the task's own one (SLURM_LOCALID).
  echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  echo '#SBATCH --signal=TERM@120'
  [[ -z "$TIME" ]] || echo "#SBATCH --time=$TIME"
  [[ -z "$PARTITION" ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z "$ACCOUNT" ]] || echo "#SBATCH --account=$ACCOUNT"
  echo "cd $(quoted "$PWD")"
  echo "srun --kill-on-bad-exit=1 $(quoted "${CMD[@]}")"
}

if is_dry_run; then
  echo "sbatch <<'N2N_JAX_BATCH'"
  batch_script
  echo 'N2N_JAX_BATCH'
  exit 0
fi
command -v sbatch >/dev/null || { echo "error: sbatch not found: run this on a Slurm login node" >&2; exit 1; }
require_n2n_jax cuda
batch_script | sbatch
