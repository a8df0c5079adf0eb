#!/usr/bin/env bash
# Export a training run as a SavedModel (for TF Serving / dicom_predict.py) and evaluate that
# SavedModel on a split: metrics.json, confusion_matrix.png, misclassified.csv.
#
# Usage: scripts/evaluate_export.sh MODEL_DIR DATA_DIR [extra dicom_eval.py flags]
#
# Environment overrides (defaults in brackets):
#   SPLIT        split to evaluate [test]
#   EXPORT_DIR   where the numbered SavedModel version goes [MODEL_DIR/export]
#   CHECKPOINT   checkpoint prefix to export, e.g. MODEL_DIR/ckpt-400 [the latest]
#   OUTPUT_DIR   report folder [EXPORT_DIR/eval-<version>-<split>]
#   BATCH_SIZE   inference batch [64]
# Example: SPLIT=validation scripts/evaluate_export.sh runs/r18 /data/converted
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "$0")/_common.sh"
check_arguments 2 "$@"
model_dir="$1"; data_dir="$2"; shift 2
[[ -f "$model_dir/config.json" ]] || {
  echo "evaluate_export.sh: $model_dir/config.json not found (not a training --model_dir)" >&2
  exit 2; }
# Before the export: a mistyped DATA_DIR must not cost one, nor leave another version in the
# folder TF Serving watches.
[[ -f "$data_dir/manifest.json" ]] || {
  echo "evaluate_export.sh: $data_dir/manifest.json not found (convert the dataset first)" >&2
  exit 2; }

export_dir="${EXPORT_DIR:-$model_dir/export}"
split="${SPLIT:-test}"

# A rerun (or the training's own export of the same checkpoint) adds no identical version.
version_dir=$(python - "$model_dir" "$export_dir" "${CHECKPOINT:-}" <<'PY'
import sys
from official.core import export, restore
model_dir, export_dir, checkpoint = sys.argv[1], sys.argv[2], sys.argv[3] or None
try:
    checkpoint = restore.resolve_checkpoint(model_dir, checkpoint)
    model, config = restore.load_model_from_dir(model_dir, checkpoint)
except (FileNotFoundError, ValueError) as error:
    sys.exit(f"evaluate_export.sh: {error}")
step = checkpoint.rsplit("-", 1)[-1]
config = {**config, "exported_step": int(step) if step.isdigit() else None, "export_tta": 1}
try:
    version, exported = export.export_unless_done(model, config, export_dir)
except OSError as error:  # EXPORT_DIR a file, unwritable, a full disk: one line
    sys.exit(f"evaluate_export.sh: EXPORT_DIR={export_dir}: cannot export "
             f"({error.strerror or error})")
print(f"evaluate_export.sh: exported {version}" if exported else
      f"evaluate_export.sh: {version} is already of step {step}: not exported again",
      file=sys.stderr)
print(version)
PY
)

flags=(--model="$version_dir" --data_dir="$data_dir" --split="$split"
       --batch_size="${BATCH_SIZE:-64}")
[[ -n "${OUTPUT_DIR:-}" ]] && flags+=(--output_dir="$OUTPUT_DIR")
python "$repo/networks/resnet/dicom_eval.py" "${flags[@]}" "$@"
