#!/usr/bin/env bash
# Train a ResNet on one GPU of a shared server (resumes when MODEL_DIR has checkpoints).
#
# Usage: scripts/train_single_gpu.sh DATA_DIR MODEL_DIR [extra dicom_main.py flags]
#
# Environment overrides (defaults in brackets):
#   GPU            which GPU (sets CUDA_VISIBLE_DEVICES) [the first of CUDA_VISIBLE_DEVICES
#                  if set (a scheduler's allocation), else 0]
#   NUM_GPUS       1, or 0 to train on the CPU [1; when nvidia-smi finds no GPU, a
#                  line says so before dicom_main.py refuses --num_gpus=1]
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

if [[ -n "${GPU:-}" || -z "${CUDA_VISIBLE_DEVICES+set}" ]]; then
  export CUDA_VISIBLE_DEVICES="${GPU:-0}"
fi  # else a scheduler's allocation stands: --num_gpus=1 takes its first GPU

# Without a GPU the default NUM_GPUS=1 fails in dicom_main.py's words ("--num_gpus=1 but 0
# GPU(s) are visible"), a flag the user never typed: name NUM_GPUS first. nvidia-smi comes
# with the NVIDIA driver, so its absence almost always means no GPU; still the run goes ahead
# and TensorFlow has the last word (asking it here would cost its ~5 s start-up).
if [[ -z "${NUM_GPUS:-}" ]]; then
  if ! command -v nvidia-smi >/dev/null; then
    no_gpu="nvidia-smi is not installed"
  elif ! grep -q '^GPU ' <<< "$(nvidia-smi -L 2>/dev/null || true)"; then
    no_gpu="nvidia-smi -L lists none"
  fi
  if [[ -n "${no_gpu:-}" ]]; then
    echo "train_single_gpu.sh: no GPU found ($no_gpu); NUM_GPUS=0 trains on the CPU" >&2
  fi
fi

export_dir="${EXPORT_DIR:-$model_dir/export}"
flags=(--data_dir="$data_dir" --model_dir="$model_dir" --num_gpus="${NUM_GPUS:-1}"
       --resnet_size="${RESNET_SIZE:-50}" --version="${VERSION:-2}"
       --image_size="${IMAGE_SIZE:-224}" --batch_size="${BATCH_SIZE:-32}"
       --train_epochs="${TRAIN_EPOCHS:-100}"
       --epochs_between_evals="${EPOCHS_BETWEEN_EVALS:-1}" --dtype="${DTYPE:-fp32}")
[[ "$export_dir" != "none" ]] && flags+=(--export_dir="$export_dir")

exec python "$repo/networks/resnet/dicom_main.py" "${flags[@]}" "$@"
