#!/usr/bin/env bash
# Convert a folder of DICOM/JPEG/PNG images into TFRecord shards + manifest.json for training.
#
# Usage: scripts/convert_dataset.sh DATASET_DIR OUTPUT_DIR [extra tf_convert_data.py flags]
#
# Environment overrides (defaults in brackets):
#   DATASET_NAME     name recorded in the manifest [basename of DATASET_DIR]
#   LAYOUT           auto | images_labels | class_folders | predefined [auto]
#   NEED_SPLIT       tvt_split | tt_split | predefined | None [tvt_split]
#   VALIDATION_SIZE  validation split: a count (>= 1) or a fraction of all files [0.1]
#   TEST_SIZE        test split: a count (>= 1) or a fraction of all files [0.1]
#   SHARD_SIZE_MB    target shard size in MiB; several shards let workers split by file [128]
#   NUM_WORKERS      decoding processes, 0 = all cores [0]
#   SEED             split and record-order seed [0]
# Example: LAYOUT=class_folders scripts/convert_dataset.sh /data/raw /data/converted
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "$0")/_common.sh"
check_arguments 2 "$@"
dataset_dir="$1"; output_dir="$2"; shift 2
[[ -d "$dataset_dir" ]] || { echo "convert_dataset.sh: $dataset_dir: no such folder" >&2; exit 2; }

flags=(--dataset_dir="$dataset_dir" --output_dir="$output_dir"
       --dataset_name="${DATASET_NAME:-$(basename "$dataset_dir")}"
       --layout="${LAYOUT:-auto}" --need_split="${NEED_SPLIT:-tvt_split}"
       --num_workers="${NUM_WORKERS:-0}")
[[ -n "${VALIDATION_SIZE:-}" ]] && flags+=(--validation_size="$VALIDATION_SIZE")
[[ -n "${TEST_SIZE:-}" ]] && flags+=(--test_size="$TEST_SIZE")
[[ -n "${SHARD_SIZE_MB:-}" ]] && flags+=(--shard_size_mb="$SHARD_SIZE_MB")
[[ -n "${SEED:-}" ]] && flags+=(--seed="$SEED")

exec python "$repo/tf_convert_data.py" "${flags[@]}" "$@"
