#!/usr/bin/env bash
# A machine with several GPUs. By default one process drives them all: the
# search trains each iteration's students concurrently, one per GPU
# (runtime.student_devices), and teacher training splits its batches over them
# (runtime.teacher_devices). --processes=N instead starts N processes joined by
# jax.distributed, process i on the i-th GPU; each runs the whole job on its
# own GPU, so it is no faster: it is the multi-host setup on one machine, for
# trying it out.
# Install first (nothing is installed for you):
#   python3 -m venv .venv && .venv/bin/pip install -e '.[cuda]'
USAGE="launch/multi_gpu.sh [--gpus=LIST] [--processes=N] [--port=P] [--python=PATH] [--dry-run] CONFIG WORKDIR [--config.x=value ...]"
OPTIONS_HELP="  --gpus=LIST       the GPUs to use, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES; default: all)
  --processes=N     N processes joined by jax.distributed, one per GPU (default 1)
  --port=P          where process 0 listens when N > 1 (default 62417)"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GPUS=""
PROCESSES=1
PORT=62417
script_option() {
  case "$1" in
    --gpus)
      [[ "$2" =~ ^[0-9]+(,[0-9]+)*$ ]] || usage_error "--gpus must be a list like 0,1,2,3, got '$2'"
      GPUS="$2"
      ;;
    --processes) require_int --processes "$2" 1 && PROCESSES="$2" ;;
    --port) require_int --port "$2" 1 && PORT="$2" ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require_local_config
main_command

if ((PROCESSES == 1)); then
  RUN=("${CMD[@]}")
  [[ -z "$GPUS" ]] || RUN=(env "CUDA_VISIBLE_DEVICES=$GPUS" "${RUN[@]}")
  if is_dry_run; then
    quoted "${RUN[@]}"
    exit 0
  fi
  require_n2n_jax cuda
  exec "${RUN[@]}"
fi

IFS=, read -r -a GPU_LIST <<<"${GPUS:-$(seq -s, 0 $((PROCESSES - 1)))}"
((${#GPU_LIST[@]} >= PROCESSES)) ||
  usage_error "--processes=$PROCESSES needs as many GPUs, --gpus lists ${#GPU_LIST[@]}"
process_env() {  # INDEX: the environment of process INDEX (see n2n_jax/distributed.py)
  ENV=(env "CUDA_VISIBLE_DEVICES=${GPU_LIST[$1]}" "JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT"
    "JAX_NUM_PROCESSES=$PROCESSES" "JAX_PROCESS_ID=$1")
}

if is_dry_run; then
  for ((i = 0; i < PROCESSES; i++)); do
    process_env "$i"
    echo "$(quoted "${ENV[@]}" "${CMD[@]}") &"
  done
  echo wait
  exit 0
fi

require_n2n_jax cuda
# SIGTERM (a preemption) goes to every process once, and a process that fails
# stops the others, which would otherwise wait for it until JAX times out.
# Once only: a second SIGTERM would cut short a process's orderly exit.
stopping=0
stop_all() {
  ((stopping)) || kill -TERM $(jobs -pr) 2>/dev/null || true
  stopping=1
}
trap 'stop_all; status=143' TERM INT
for ((i = 0; i < PROCESSES; i++)); do
  process_env "$i"
  "${ENV[@]}" "${CMD[@]}" &
done
status=0
while [[ -n "$(jobs -pr)" ]]; do
  rc=0
  wait -n || rc=$?  # also returns (> 128) when the trap ran
  if ((rc != 0 && rc != 127 && !stopping)); then  # 127: nothing left to wait for
    status=$rc
    stop_all
  fi
done
exit "$status"
