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

# refuse_flags "FLAG|SHORT=VARIABLE ..." "$@": an extra dicom_main.py flag that the script
# computes (from VARIABLE), by its name or its short name (absl takes -bs=64 as --batch_size),
# exits 2 in one line. The trainer would take the later value, and the GPUs or global batch
# the script sized and printed would not be the ones that train.
refuse_flags() {
  local pairs="$1" arg pair name; shift
  for arg in "$@"; do
    for pair in $pairs; do
      name="${pair%%=*}"
      if [[ "$arg" =~ ^--?(no)?($name)(=|$) ]]; then
        echo "$(basename "$0"): error: ${arg%%=*}: this script sizes the GPUs and the" \
             "global batch; set ${pair#*=} instead" >&2
        exit 2
      fi
    done
  done
}

# The repository root, on PYTHONPATH so the command-line tools import dataset/ and networks/
# from any working directory; TensorFlow's C++ start-up logs stay quiet unless asked for.
# shellcheck disable=SC2034  # repo is read by the scripts that source this file
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

# cuda_visible_ids: CUDA_VISIBLE_DEVICES's entries as CUDA reads them, comma-separated: up to
# the first invalid one (e.g. -1), blanks dropped. Only call it when the variable is set (a
# scheduler's allocation: nvidia-smi ignores it, TensorFlow does not).
cuda_visible_ids() {
  local visible device ids=()
  IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
  for device in "${visible[@]}"; do
    device="${device// /}"
    [[ "$device" == -* ]] && break
    [[ -n "$device" ]] && ids+=("$device")
  done
  (IFS=,; echo "${ids[*]}")
}

# nvidia_gpu_ids: the GPU indices nvidia-smi lists, comma-separated. A failing nvidia-smi (a
# driver/library mismatch, no driver loaded) says so in one line and exits 1; inside
# "$(...)" under `set -e` that stops the calling script too.
nvidia_gpu_ids() {
  local output status=0
  output="$(nvidia-smi --query-gpu=index --format=csv,noheader 2>&1)" || status=$?
  if (( status != 0 )); then
    echo "$(basename "$0"): error: nvidia-smi failed (exit $status): $(head -n 1 <<< "$output")" \
         "; set the GPUs yourself or fix the driver" >&2
    exit 1
  fi
  paste -sd, - <<< "$output"
}

# print_class_report METRICS_JSON: dicom_eval.py's per-class recall and the five commonest
# confusions from its metrics.json, the figures to read on OrganAMNIST rather than the mean.
print_class_report() {
  python - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
names, matrix = m["class_names"], m["confusion_matrix"]
print(f"recall per class on {m['num_examples']} {m['split']} images:")
for name, row in m["per_class"].items():
    print(f"  {name:<13} {row['recall']:.4f}  ({row['support']} images)")
confusions = sorted(((matrix[i][j], names[i], names[j]) for i in range(len(names))
                     for j in range(len(names)) if i != j and matrix[i][j]), reverse=True)
print("commonest confusions (true->predicted): "
      + (", ".join(f"{a}->{b} {n}" for n, a, b in confusions[:5]) or "none"))
PY
}

# extract_organamnist WORK_DIR: $ORGANAMNIST_TAR (default ../shared/data/
# OrganAMNIST-trainval.tar.gz) into WORK_DIR/raw/OrganAMNIST unless it is there already.
# Extracted beside it first and moved into place whole, so an interrupted or failed
# extraction leaves no half folder for the next run to take as done.
extract_organamnist() {
  local work_dir="$1" staging
  local tarball="${ORGANAMNIST_TAR:-$repo/../shared/data/OrganAMNIST-trainval.tar.gz}"
  [[ -d "$work_dir/raw/OrganAMNIST" ]] && return 0
  [[ -f "$tarball" ]] || { echo "$(basename "$0"): error: $tarball not found (set ORGANAMNIST_TAR)" >&2; exit 1; }
  mkdir -p "$work_dir/raw"
  staging="$(mktemp -d "$work_dir/raw/.extracting.XXXXXX")"
  if ! tar xzf "$tarball" -C "$staging" 2>/dev/null || [[ ! -d "$staging/OrganAMNIST" ]]; then
    rm -rf "$staging"
    echo "$(basename "$0"): error: $tarball: not a tarball holding OrganAMNIST/" >&2
    exit 1
  fi
  mv "$staging/OrganAMNIST" "$work_dir/raw/OrganAMNIST"
  rm -rf "$staging"
}
