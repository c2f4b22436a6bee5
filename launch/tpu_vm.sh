#!/usr/bin/env bash
# A Cloud TPU VM slice: the same command on every worker at once, through
# gcloud; jax.distributed.initialize() finds the workers itself
# (runtime.distributed=on). Run it where gcloud is set up, e.g. your laptop.
# WORKDIR must be one folder that every worker sees (a Filestore/NFS share or
# a gcsfuse mount at the same path): orbax writes from worker 0 and the others
# read what it wrote when a run resumes. Install n2n_jax on every worker first
# (nothing is installed for you):
#   gcloud compute tpus tpu-vm ssh NAME --worker=all --command="git clone REPO_URL n2n_jax && cd n2n_jax && python3 -m venv .venv && .venv/bin/pip install -e '.[tpu]'"
USAGE="launch/tpu_vm.sh --tpu=NAME [--zone=ZONE] [--project=PROJECT] [--repo=DIR] [--python=PATH] [--dry-run] CONFIG WORKDIR [--config.x=value ...]"
OPTIONS_HELP="  --tpu=NAME        the TPU VM (required)
  --zone=ZONE       its zone (default: gcloud's configured zone)
  --project=ID      its project (default: gcloud's configured project)
  --repo=DIR        the n2n_jax checkout on the workers, CONFIG is relative to it (default n2n_jax)"
DEFAULT_PYTHON=.venv/bin/python  # on the workers, relative to --repo
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU=""
ZONE=""
PROJECT=""
REPO=n2n_jax
script_option() {
  case "$1" in
    --tpu) TPU="$2" ;;
    --zone) ZONE="$2" ;;
    --project) PROJECT="$2" ;;
    --repo) REPO="$2" ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
[[ -n "$TPU" ]] || usage_error "--tpu=NAME is required"
main_command --config.runtime.distributed=on
REMOTE="cd $(quoted "$REPO") && $(quoted "${CMD[@]}")"
RUN=(gcloud compute tpus tpu-vm ssh "$TPU")
[[ -z "$ZONE" ]] || RUN+=("--zone=$ZONE")
[[ -z "$PROJECT" ]] || RUN+=("--project=$PROJECT")
RUN+=(--worker=all "--command=$REMOTE")
if is_dry_run; then
  quoted "${RUN[@]}"
  exit 0
fi
command -v gcloud >/dev/null || { echo "error: gcloud not found (install the Google Cloud CLI)" >&2; exit 1; }
exec "${RUN[@]}"
