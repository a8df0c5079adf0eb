#!/usr/bin/env bash
# Quickstart: MedNIST -> TFRecords -> ResNet-18 at 64x64 -> test-split report -> predictions.
#
# Usage: bash scripts/quickstart.sh [--url URL] [--work_dir DIR] [--md5 MD5]
#
#   --url URL       MedNIST.tar.gz to use: https://, file:// or a local path
#                   (default: $MEDNIST_URL, else the public archive MONAI uses)
#   --work_dir DIR  where data, model and reports go (default: $WORK_DIR or runs/quickstart)
#   --md5 MD5       expected md5 of the archive, "none" to skip the check (default:
#                   $MEDNIST_MD5, else the public archive's), as download.py's --md5
#
# Environment overrides (defaults are the recipe in scripts/recipe_mednist.sh):
#   MEDNIST_MD5      expected md5 of the archive ("none" skips the check)
#   TRAIN_FLAGS      extra flags for dicom_main.py, e.g. "--max_train_steps=20" for a smoke run
#   PREDICT_COUNT    how many test images to run through dicom_predict.py (default 6)
# Steps that already finished (download, conversion) are not redone on a rerun; training
# resumes from its last checkpoint. A work_dir whose MedNIST is extracted (WORK_DIR/raw) keeps
# it whatever --url says: use a new --work_dir for another archive. The archive is kept as
# WORK_DIR/raw.tar.gz (its URL in raw.tar.gz.url) and reused only if its md5 matches, or with
# MEDNIST_MD5=none only for the same URL; an archive that is damaged or not MedNIST's layout
# is deleted, so a rerun with a good --url downloads that.
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "$0")/_common.sh"
# shellcheck source=scripts/recipe_mednist.sh
source "$repo/scripts/recipe_mednist.sh"

url="${MEDNIST_URL:-https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/MedNIST.tar.gz}"
work_dir="${WORK_DIR:-runs/quickstart}"
usage_error() { print_usage >&2; echo "quickstart.sh: error: $1" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --url) [[ $# -ge 2 ]] || usage_error "--url needs a value"; url="$2"; shift 2 ;;
    --url=*) url="${1#*=}"; shift ;;
    --work_dir) [[ $# -ge 2 ]] || usage_error "--work_dir needs a value"; work_dir="$2"; shift 2 ;;
    --work_dir=*) work_dir="${1#*=}"; shift ;;
    # download.py's md5 error names its --md5 flag: the same spelling works here.
    --md5) [[ $# -ge 2 ]] || usage_error "--md5 needs a value"; MEDNIST_MD5="$2"; shift 2 ;;
    --md5=*) MEDNIST_MD5="${1#*=}"; shift ;;
    -h|--help) print_usage; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
done
md5="${MEDNIST_MD5:-0bc7306e7427e00ad1c5526a6677552d}"
predict_count="${PREDICT_COUNT:-6}"

start=$(date +%s)
mkdir -p "$work_dir"
if [[ ! -d "$work_dir/raw" ]]; then
  echo "== 1/5 getting MedNIST from $url"
  python -m dataset.download --url="$url" --md5="$md5" --output_dir="$work_dir/raw" \
    --top_folder=MedNIST
else
  echo "== 1/5 MedNIST already in $work_dir/raw (from $(cat "$work_dir/raw.tar.gz.url" \
    2>/dev/null || echo "an earlier run")); not downloaded again"
fi
raw="$work_dir/raw/MedNIST"
# Only an earlier version of this script left a raw/ of another layout behind.
[[ -d "$raw" ]] || {
  echo "quickstart.sh: $raw not found: $work_dir/raw is not MedNIST's layout;" \
    "delete it and rerun" >&2
  exit 1; }

if [[ ! -f "$work_dir/data/manifest.json" ]]; then
  echo "== 2/5 converting to TFRecords (train/validation/test)"
  python "$repo/tf_convert_data.py" --dataset_name=mednist --dataset_dir="$raw" \
    --output_dir="$work_dir/data" --need_split=tvt_split --layout=class_folders
else
  echo "== 2/5 already converted in $work_dir/data; not converted again"
fi

echo "== 3/5 training (model_dir $work_dir/model)"
# shellcheck disable=SC2086  # TRAIN_FLAGS and the recipe are lists of flags
python "$repo/networks/resnet/dicom_main.py" --data_dir="$work_dir/data" --model_dir="$work_dir/model" \
  --export_dir="$work_dir/export" $MEDNIST_RECIPE_FLAGS ${TRAIN_FLAGS:-}

echo "== 4/5 evaluating on the test split"
python "$repo/networks/resnet/dicom_eval.py" --model="$work_dir/export" --data_dir="$work_dir/data" \
  --split=test --output_dir="$work_dir/report"

echo "== 5/5 predicting $predict_count files"
mapfile -t files < <(find "$raw" -type f -name '*.jpeg' | sort | awk -v n="$predict_count" \
  'NR % 5000 == 1 && c < n { print; c++ }')
python "$repo/networks/resnet/dicom_predict.py" --model="$work_dir/export" \
  --output_csv="$work_dir/predictions.csv" "${files[@]}"

elapsed=$(( $(date +%s) - start ))
# Rounded as dicom_eval.py printed it in stage 4.
accuracy=$(python -c "import json, sys
print(format(json.load(open(sys.argv[1]))['accuracy'], '.4f'))" "$work_dir/report/metrics.json")
# Quoted for the shell, so that the command can be pasted whatever the folder's name holds.
printf -v logdir '%q' "$work_dir/model"
cat <<SUMMARY

Quickstart finished in ${elapsed} s; test accuracy ${accuracy}.
  report:       $work_dir/report/metrics.json
  plot:         $work_dir/report/confusion_matrix.png
  mistakes:     $work_dir/report/misclassified.csv
  predictions:  $work_dir/predictions.csv
  SavedModel:   $work_dir/export/
  TensorBoard:  tensorboard --logdir $logdir
SUMMARY
