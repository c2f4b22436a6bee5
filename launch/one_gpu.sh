#!/usr/bin/env bash
# One GPU machine: the whole run in one process on one GPU.
# Install first (nothing is installed for you):
#   python3 -m venv .venv && .venv/bin/pip install -e '.[cuda]'
USAGE="launch/one_gpu.sh [--gpu=N] [--python=PATH] [--dry-run] CONFIG WORKDIR [--config.x=value ...]"
OPTIONS_HELP="  --gpu=N           the GPU to run on (CUDA_VISIBLE_DEVICES; default 0)"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GPU=0
script_option() {
  case "$1" in
    --gpu) require_int --gpu "$2" 0 && GPU="$2" ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require_local_config
main_command
RUN=(env "CUDA_VISIBLE_DEVICES=$GPU" "${CMD[@]}")
if is_dry_run; then
  quoted "${RUN[@]}"
  exit 0
fi
require_n2n_jax cuda
exec "${RUN[@]}"
