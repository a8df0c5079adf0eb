#!/usr/bin/env bash
# Train a ResNet on every GPU of one server (MirroredStrategy); the global batch is
# PER_GPU_BATCH_SIZE x the number of GPUs, and the learning rate scales with it.
#
# Usage: scripts/train_all_gpus.sh DATA_DIR MODEL_DIR [extra dicom_main.py flags]
#
# Environment overrides (defaults in brackets):
#   GPUS               comma-separated GPU ids to use [CUDA_VISIBLE_DEVICES if set (a
#                      scheduler's allocation), else all that nvidia-smi lists]
#   PER_GPU_BATCH_SIZE [32]  (--num_gpus, --multi_gpu and --batch_size are refused: set
#                      GPUS and this instead)
#   RESNET_SIZE        [50]    VERSION [2]    IMAGE_SIZE [224]
#   TRAIN_EPOCHS       [100]   EPOCHS_BETWEEN_EVALS [1]
#   DTYPE              fp32 | fp16 | bf16 [fp16: tensor cores]
#   EXPORT_DIR         [MODEL_DIR/export]; "none" to skip the export
# Example: GPUS=0,1,2,3 scripts/train_all_gpus.sh /data/converted runs/r50
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "$0")/_common.sh"
check_arguments 2 "$@"
data_dir="$1"; model_dir="$2"; shift 2
refuse_flags "num_gpus|ng=GPUS multi_gpu|mg=GPUS batch_size|bs=PER_GPU_BATCH_SIZE" "$@"

if [[ -z "${GPUS:-}" && -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
  GPUS="$(cuda_visible_ids)"  # on a shared server, only the GPUs allocated to this job
elif [[ -z "${GPUS:-}" ]]; then
  command -v nvidia-smi >/dev/null || {
    echo "train_all_gpus.sh: nvidia-smi not found; set GPUS=0,1,... or use train_single_gpu.sh" >&2
    exit 1; }
  GPUS="$(nvidia_gpu_ids)"
fi
[[ -n "$GPUS" ]] || { echo "train_all_gpus.sh: no GPU found" >&2; exit 1; }
export CUDA_VISIBLE_DEVICES="$GPUS"
IFS=, read -r -a gpu_list <<< "$GPUS"
num_gpus=${#gpu_list[@]}
batch_size=$(( ${PER_GPU_BATCH_SIZE:-32} * num_gpus ))
echo "train_all_gpus.sh: $num_gpus GPU(s) ($GPUS), global batch $batch_size" >&2

export_dir="${EXPORT_DIR:-$model_dir/export}"
flags=(--data_dir="$data_dir" --model_dir="$model_dir" --num_gpus="$num_gpus"
       --batch_size="$batch_size" --resnet_size="${RESNET_SIZE:-50}"
       --version="${VERSION:-2}" --image_size="${IMAGE_SIZE:-224}"
       --train_epochs="${TRAIN_EPOCHS:-100}"
       --epochs_between_evals="${EPOCHS_BETWEEN_EVALS:-1}" --dtype="${DTYPE:-fp16}")
[[ "$export_dir" != "none" ]] && flags+=(--export_dir="$export_dir")

exec python "$repo/networks/resnet/dicom_main.py" "${flags[@]}" "$@"
