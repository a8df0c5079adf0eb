#!/usr/bin/env bash
# The small-image recipe for MedNIST (64x64 grey, 6 classes), sourced by quickstart.sh.
# Run it alone to train on an already converted MedNIST:
#   bash scripts/recipe_mednist.sh DATA_DIR MODEL_DIR [extra dicom_main.py flags]
# No horizontal flip: radiographs have laterality (MedNIST's classes do not depend on it,
# but the recipe keeps the safe default).
MEDNIST_RECIPE_FLAGS="--resnet_size=18 --version=2 --image_size=64 --train_epochs=3 \
--epochs_between_evals=3 --batch_size=128"
export MEDNIST_RECIPE_FLAGS

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  if [[ $# -lt 2 ]]; then
    sed -n '2,6p' "$0"; exit 2
  fi
  data_dir="$1"; model_dir="$2"; shift 2
  # shellcheck disable=SC2086
  exec python "$(dirname "$0")/../networks/resnet/dicom_main.py" --data_dir="$data_dir" --model_dir="$model_dir" \
    $MEDNIST_RECIPE_FLAGS "$@"
fi
