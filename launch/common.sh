# Shared by the launch scripts (sourced, not run): argument parsing, quoting,
# --dry-run. Each script sets USAGE and OPTIONS_HELP, defines
# `script_option NAME VALUE` for its own options (returns 1 for an unknown one),
# then calls `parse_args "$@"`.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"
PYTHON="${PYTHON:-}"
CONFIG=""
WORKDIR=""
OVERRIDES=()

print_usage() {
  echo "usage: $USAGE"
  echo "$OPTIONS_HELP"
  echo "  --python=PATH     the Python with n2n_jax installed (default: \$PYTHON, else"
  echo "                    ${DEFAULT_PYTHON:-$REPO_ROOT/.venv/bin/python if it exists, else python3})"
  echo "  --dry-run         print what would run and exit 0 (or DRY_RUN=1)"
  echo "CONFIG is configs/NAME.py, WORKDIR the run's folder; --config.x=value overrides follow."
}

usage_error() {
  {
    echo "error: $1"
    print_usage
  } >&2
  exit 2
}

# Options take their value as --name=value or --name value.
parse_args() {
  local arg name value
  while (($#)); do
    arg="$1"
    shift
    case "$arg" in
      -h | --help)
        print_usage
        exit 0
        ;;
      --dry-run) DRY_RUN=1 ;;
      --config=* | --workdir=*) usage_error "give CONFIG and WORKDIR as plain arguments, not $arg" ;;
      --config.* | --noconfig.*) OVERRIDES+=("$arg") ;;
      --*)
        name="${arg%%=*}"
        if [[ "$arg" == *=* ]]; then
          value="${arg#*=}"
        elif (($#)); then
          value="$1"
          shift
        else
          usage_error "$name needs a value"
        fi
        if [[ "$name" == --python ]]; then
          PYTHON="$value"
        elif ! script_option "$name" "$value"; then
          usage_error "unknown option $name"
        fi
        ;;
      -*) usage_error "unknown option $arg" ;;
      *)
        if [[ -z "$CONFIG" ]]; then
          CONFIG="$arg"
        elif [[ -z "$WORKDIR" ]]; then
          WORKDIR="$arg"
        else
          usage_error "unexpected argument '$arg' (overrides look like --config.x=value)"
        fi
        ;;
    esac
  done
  [[ -n "$CONFIG" && -n "$WORKDIR" ]] || usage_error "CONFIG and WORKDIR are required"
  [[ "$CONFIG" == *.py ]] || usage_error "CONFIG must be a configs/NAME.py file, got '$CONFIG'"
  if [[ -z "$PYTHON" ]]; then
    if [[ -n "${DEFAULT_PYTHON:-}" ]]; then
      PYTHON="$DEFAULT_PYTHON"
    elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
      PYTHON="$REPO_ROOT/.venv/bin/python"
    else
      PYTHON=python3
    fi
  fi
}

# CONFIG must exist here (not checked for scripts that run it on other machines).
require_local_config() {
  [[ -f "$CONFIG" ]] || usage_error "config file '$CONFIG' not found"
}

require_int() {  # NAME VALUE MIN
  [[ "$2" =~ ^[0-9]+$ ]] && (($2 >= $3)) || usage_error "$1 must be an integer >= $3, got '$2'"
}

# The words as one command line that a shell reads back as the same words:
# plain words as they are, others in single quotes (like Python's shlex.quote).
quoted() {
  local out="" word q="'"
  for word in "$@"; do
    if [[ ! "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      word="'${word//$q/$q\\$q$q}'"
    fi
    out+="${out:+ }$word"
  done
  printf '%s\n' "$out"
}

# The n2n_jax command for CONFIG, WORKDIR and the overrides, with extra
# overrides (launcher settings) before the user's, so the user's win.
main_command() {
  CMD=("$PYTHON" -m n2n_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" "$@"
    ${OVERRIDES[@]+"${OVERRIDES[@]}"})
}

is_dry_run() {
  [[ "$DRY_RUN" == 1 ]]
}

install_hint() {
  echo "n2n_jax is not importable with $PYTHON; install it first, e.g." \
    "python3 -m venv .venv && .venv/bin/pip install -e '.[$1]'" >&2
  exit 1
}

# Before a real run: this Python must have n2n_jax (nothing is installed for you).
require_n2n_jax() {
  "$PYTHON" -c 'import n2n_jax' 2>/dev/null || install_hint "$1"
}
