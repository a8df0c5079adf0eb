#!/usr/bin/env bash
# Train a ResNet on one GPU of a shared server (resumes when MODEL_DIR has checkpoints).
#
# Usage: scripts/train_single_gpu.sh DATA_DIR MODEL_DIR [extra dicom_main.py flags]
#
# Environment overrides (defaults in brackets):
#   GPU            which GPU (sets CUDA_VISIBLE_DEVICES) [0]
#   NUM_GPUS       1, or 0 to train on the CPU [1]
#   RESNET_SIZE    18 | 34 | 50 | 101 | 152 | 200 [50]
#   VERSION        1 | 2 [2]
#   IMAGE_SIZE     pixels [224]
#   BATCH_SIZE     [32]
#   TRAIN_EPOCHS   [100]
#   EPOCHS_BETWEEN_EVALS [1]
#   DTYPE          fp32 | fp16 | bf16 [fp32]
#   EXPORT_DIR     SavedModel destination [MODEL_DIR/export]; "none" to skip the export
# Example: GPU=3 RESNET_SIZE=18 scripts/train_single_gpu.sh /data/converted runs/r18
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "$0")/_common.sh"
check_arguments 2 "$@"
data_dir="$1"; model_dir="$2"; shift 2

export CUDA_VISIBLE_DEVICES="${GPU:-0}"

export_dir="${EXPORT_DIR:-$model_dir/export}"
flags=(--data_dir="$data_dir" --model_dir="$model_dir" --num_gpus="${NUM_GPUS:-1}"
       --resnet_size="${RESNET_SIZE:-50}" --version="${VERSION:-2}"
       --image_size="${IMAGE_SIZE:-224}" --batch_size="${BATCH_SIZE:-32}"
       --train_epochs="${TRAIN_EPOCHS:-100}"
       --epochs_between_evals="${EPOCHS_BETWEEN_EVALS:-1}" --dtype="${DTYPE:-fp32}")
[[ "$export_dir" != "none" ]] && flags+=(--export_dir="$export_dir")

exec python "$repo/networks/resnet/dicom_main.py" "${flags[@]}" "$@"
