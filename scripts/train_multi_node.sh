#!/usr/bin/env bash
# Train one ResNet on several servers (MultiWorkerMirroredStrategy): run this once on every
# host, with the same HOSTS list and flags, and that host's position in the list.
#
# Usage: HOSTS=host1,host2[,...] scripts/train_multi_node.sh TASK_INDEX DATA_DIR MODEL_DIR \
#          [extra dicom_main.py flags]
#
#   TASK_INDEX  this host's 0-based position in HOSTS, or "auto": the position of
#               $(hostname) / $(hostname -s) in HOSTS. Task 0 is the chief: it alone writes
#               checkpoints, summaries and the export (the others use temporary folders).
# Environment overrides (defaults in brackets):
#   HOSTS          comma-separated host or host:port list (required), same order everywhere
#   PORT           port for hosts given without one [2222]
#   GPUS_PER_HOST  GPUs used on each host, the same on every host [the count in
#                  CUDA_VISIBLE_DEVICES if set, else every GPU nvidia-smi lists; 0 = CPU]
#   PER_GPU_BATCH_SIZE  batch per replica [32]: a replica is one GPU, or the CPU when
#                  GPUS_PER_HOST=0; global batch = this x replicas per host x hosts
#                  (--num_gpus, --multi_gpu and --batch_size are refused: set these instead)
#   RESNET_SIZE [50]  VERSION [2]  IMAGE_SIZE [224]  TRAIN_EPOCHS [100]  DTYPE [fp32]
#   EXPORT_DIR     [MODEL_DIR/export]; "none" to skip
#   DRY_RUN=1      print TF_CONFIG and the command instead of running it
# DATA_DIR must be readable on every host (shared or copied); MODEL_DIR should be shared so
# a restarted cluster resumes (only the chief reads it; it sends the state to the others).
# A host that dies makes the others exit with an error within about a minute; restart all.
# Example (2 servers):
#   host1$ HOSTS=host1,host2 scripts/train_multi_node.sh 0 /nfs/data /nfs/runs/r50
#   host2$ HOSTS=host1,host2 scripts/train_multi_node.sh 1 /nfs/data /nfs/runs/r50
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "$0")/_common.sh"
check_arguments 3 "$@"
[[ -n "${HOSTS:-}" ]] || {
  echo "train_multi_node.sh: error: HOSTS is not set (HOSTS=host1,host2,...)" >&2; exit 2; }
task_index="$1"; data_dir="$2"; model_dir="$3"; shift 3
refuse_flags "num_gpus|ng=GPUS_PER_HOST multi_gpu|mg=GPUS_PER_HOST \
  batch_size|bs=PER_GPU_BATCH_SIZE" "$@"

port="${PORT:-2222}"
IFS=, read -r -a hosts <<< "$HOSTS"
workers=()
for host in "${hosts[@]}"; do
  host="${host// /}"
  [[ -n "$host" ]] || continue
  [[ "$host" == *:* ]] || host="$host:$port"
  workers+=("$host")
done
(( ${#workers[@]} > 0 )) || { echo "train_multi_node.sh: HOSTS is empty" >&2; exit 2; }

if [[ "$task_index" == "auto" ]]; then
  task_index=""
  for i in "${!workers[@]}"; do
    name="${workers[$i]%:*}"
    if [[ "$name" == "$(hostname)" || "$name" == "$(hostname -s)" ]]; then
      task_index="$i"; break
    fi
  done
  [[ -n "$task_index" ]] || {
    echo "train_multi_node.sh: $(hostname) is not in HOSTS=$HOSTS; give TASK_INDEX" >&2
    exit 2; }
fi
if ! [[ "$task_index" =~ ^[0-9]+$ ]] || (( task_index >= ${#workers[@]} )); then
  echo "train_multi_node.sh: TASK_INDEX=$task_index must be 0-$(( ${#workers[@]} - 1 ))" >&2
  exit 2
fi

# TF_CONFIG: the cluster and this task, read by dicom_main.py (worker 0 is the chief).
cluster=$(printf '"%s",' "${workers[@]}")
# The quotes are JSON, meant literally (SC2089/SC2090 warn about shell quoting).
# shellcheck disable=SC2089
printf -v TF_CONFIG '{"cluster": {"worker": [%s]}, "task": {"type": "worker", "index": %d}}' \
  "${cluster%,}" "$task_index"
# shellcheck disable=SC2090
export TF_CONFIG

# The trainer splits --batch_size over every replica of every host: --num_gpus GPUs per host,
# or one CPU replica. An exact --num_gpus, not --multi_gpu ("all visible"), so that the batch
# below is sized for the GPUs that train (and dicom_main.py fails if they are not there).
if [[ -n "${GPUS_PER_HOST:-}" ]]; then
  gpus="$GPUS_PER_HOST"
elif [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then  # nvidia-smi ignores it; TensorFlow does not
  IFS=, read -r -a gpu_ids <<< "$(cuda_visible_ids)"
  gpus=${#gpu_ids[@]}
elif command -v nvidia-smi >/dev/null; then
  listed_ids="$(nvidia_gpu_ids)"  # a failing nvidia-smi stops the script here, in one line
  IFS=, read -r -a gpu_ids <<< "$listed_ids"
  gpus=${#gpu_ids[@]}
else
  gpus=0
fi
if ! [[ "$gpus" =~ ^[0-9]+$ ]]; then
  echo "train_multi_node.sh: error: GPUS_PER_HOST=$gpus must be a count (0 = CPU)" >&2
  exit 2
fi
replicas_per_host=$(( gpus > 0 ? gpus : 1 ))
batch_size=$(( ${PER_GPU_BATCH_SIZE:-32} * replicas_per_host * ${#workers[@]} ))

export_dir="${EXPORT_DIR:-$model_dir/export}"
flags=(--data_dir="$data_dir" --model_dir="$model_dir" --batch_size="$batch_size"
       --resnet_size="${RESNET_SIZE:-50}" --version="${VERSION:-2}"
       --image_size="${IMAGE_SIZE:-224}" --train_epochs="${TRAIN_EPOCHS:-100}"
       --dtype="${DTYPE:-fp32}")
flags+=(--num_gpus="$gpus")
[[ "$export_dir" != "none" ]] && flags+=(--export_dir="$export_dir")
command=(python "$repo/networks/resnet/dicom_main.py" "${flags[@]}" "$@")

echo "train_multi_node.sh: task $task_index of ${#workers[@]} (${workers[$task_index]}), $replicas_per_host replica(s) per host, global batch $batch_size" >&2
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  printf 'TF_CONFIG=%s\n' "$TF_CONFIG"
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
exec "${command[@]}"
