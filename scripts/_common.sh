# Sourced by the scripts in this folder, never run alone: the --help and argument-count
# handling every script shares, and the environment the Python tools need.
# shellcheck shell=bash

# The calling script's usage: its leading comment block without the '#' marks.
print_usage() {
  awk 'NR == 1 || /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# check_arguments MIN_ARGS "$@": -h/--help as the first argument prints the usage on stdout
# and exits 0; fewer than MIN_ARGS arguments print it on stderr and exit 2.
check_arguments() {
  local min_args="$1"; shift
  if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then print_usage; exit 0; fi
  if (( $# < min_args )); then
    print_usage >&2
    echo "$(basename "$0"): error: needs at least $min_args argument(s), got $#" >&2
    exit 2
  fi
}

# The repository root, on PYTHONPATH so the command-line tools import dataset/ and networks/
# from any working directory; TensorFlow's C++ start-up logs stay quiet unless asked for.
# shellcheck disable=SC2034  # repo is read by the scripts that source this file
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
