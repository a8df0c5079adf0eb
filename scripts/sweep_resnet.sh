#!/usr/bin/env bash
# Sweep ResNet sizes x versions on one dataset (as the original's experiment scripts did),
# evaluate each run, and collect everything into one table: SWEEP_DIR/results.csv + .md.
#
# Usage: scripts/sweep_resnet.sh DATA_DIR SWEEP_DIR [extra dicom_main.py flags for every run]
#
# Environment overrides (defaults in brackets):
#   SIZES          ResNet depths ["18 34 50 101 152"]
#   VERSIONS       ["1 2"]
#   IMAGE_SIZE     [224]   BATCH_SIZE [32]   TRAIN_EPOCHS [30]   DTYPE [fp32]
#   EPOCHS_BETWEEN_EVALS  [TRAIN_EPOCHS: one evaluation at the end]
#   NUM_GPUS       GPUs per run [1 if nvidia-smi finds one, else 0]
#   EVAL_SPLIT     split dicom_eval.py reports on after training, skipped when the
#                  dataset has no such split; "none" to skip [test]
#   KEEP_GOING     1: a failed run is recorded and the sweep continues [1]
# Run k is SWEEP_DIR/resnet<size>_v<version>/ (a normal --model_dir; train.log gets each
# attempt's log appended under a "== <time> attempt:" line).
# Rerunning resumes unfinished runs; finished ones are only evaluated again. A run's seconds
# add up its attempts that trained (a rerun that only evaluated adds none; one stopped by
# Ctrl-C or SIGTERM counts, and its status is "interrupted" until the run goes on). A rerun
# that fails without touching a finished run's checkpoints (e.g. refused for other settings,
# such as another IMAGE_SIZE) leaves its row to that run, with status "ok (rerun failed)".
# Example: SIZES="18 50" VERSIONS=2 scripts/sweep_resnet.sh /data/converted runs/sweep
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "$0")/_common.sh"
check_arguments 2 "$@"
data_dir="$1"; sweep_dir="$2"; shift 2
[[ -f "$data_dir/manifest.json" ]] || {
  echo "sweep_resnet.sh: $data_dir/manifest.json not found (convert the dataset first)" >&2
  exit 2; }

sizes="${SIZES:-18 34 50 101 152}"
versions="${VERSIONS:-1 2}"
train_epochs="${TRAIN_EPOCHS:-30}"
eval_split="${EVAL_SPLIT:-test}"
keep_going="${KEEP_GOING:-1}"
if [[ -n "${NUM_GPUS:-}" ]]; then
  num_gpus="$NUM_GPUS"
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  num_gpus=1
else
  num_gpus=0
fi
if [[ "$eval_split" != "none" ]] && ! python - "$data_dir/manifest.json" "$eval_split" <<'PY'
import json, sys
sys.exit(0 if sys.argv[2] in json.load(open(sys.argv[1]))["splits"] else 1)
PY
then
  echo "sweep_resnet.sh: $data_dir has no '$eval_split' split; skipping dicom_eval.py" >&2
  eval_split=none
fi

mkdir -p "$sweep_dir"
failed=0
for size in $sizes; do
  for version in $versions; do
    run="$sweep_dir/resnet${size}_v${version}"
    mkdir -p "$run"
    echo "== resnet${size}_v${version} -> $run" >&2
    start=$(date +%s)
    earlier=$(cat "$run/sweep.json" 2>/dev/null || true)
    checkpoint_before=$(cat "$run/checkpoint" 2>/dev/null || true)
    train=(python "$repo/networks/resnet/dicom_main.py" --data_dir="$data_dir" --model_dir="$run"
      --resnet_size="$size" --version="$version" --image_size="${IMAGE_SIZE:-224}"
      --batch_size="${BATCH_SIZE:-32}" --train_epochs="$train_epochs"
      --epochs_between_evals="${EPOCHS_BETWEEN_EVALS:-$train_epochs}"
      --dtype="${DTYPE:-fp32}" --num_gpus="$num_gpus" "$@")
    # Appended: a failed rerun must not erase the log of the run whose results are kept.
    echo "== $(date '+%F %T') attempt: ${train[*]:1}" >> "$run/train.log"
    status=ok
    code=0
    "${train[@]}" >> "$run/train.log" 2>&1 || code=$?
    if (( code == 0 )) && [[ "$eval_split" != "none" ]]; then
      python "$repo/networks/resnet/dicom_eval.py" --model="$run" --data_dir="$data_dir" \
        --split="$eval_split" >> "$run/train.log" 2>&1 || code=$?
    fi
    interrupted=0
    # Ctrl-C or SIGTERM: the programs handle it and exit 130/143 rather than die by it. This
    # run is no failure (its folder resumes when the sweep is run again), but its time and
    # checkpoints count: its row says "interrupted" until then.
    (( code == 130 || code == 143 )) && interrupted=1
    if (( interrupted )); then
      status=interrupted
    elif (( code != 0 )); then
      status=failed
    fi
    seconds=$(( $(date +%s) - start ))
    earlier_seconds=$(sed -n 's/.*"seconds": \([0-9]*\).*/\1/p' <<< "$earlier")
    unchanged=0
    [[ "$(cat "$run/checkpoint" 2>/dev/null || true)" == "$checkpoint_before" ]] && unchanged=1
    if [[ "$status" != ok && "$earlier" == '{"status": "ok'* ]] && (( unchanged )); then
      # The folder still holds the finished run's model and figures: the row stays theirs
      # (with their time), not this attempt's failure or interruption next to them.
      (( interrupted )) ||
        printf '{"status": "ok (rerun failed)", "seconds": %d, "rerun_seconds": %d}\n' \
          "$earlier_seconds" "$seconds" > "$run/sweep.json"
    else
      # The run's time over its attempts: a resume adds its own (the row showed only the last
      # attempt's, 33 s for a run trained 44 s and resumed for 33 s); a rerun that trained
      # nothing (a finished run, only evaluated again) keeps the run's.
      if (( unchanged )) && [[ -n "$earlier_seconds" ]]; then
        seconds=$earlier_seconds
      else
        seconds=$(( ${earlier_seconds:-0} + seconds ))
      fi
      printf '{"status": "%s", "seconds": %d}\n' "$status" "$seconds" > "$run/sweep.json"
    fi
    if (( interrupted )); then
      # Without stopping here, bash would go on to the next run.
      tail -n 1 "$run/train.log" >&2
      echo "sweep_resnet.sh: stopped at resnet${size}_v${version}; run the same command to" \
           "go on" >&2
      exit "$code"
    fi
    if [[ "$status" == failed ]]; then
      failed=$(( failed + 1 ))
      echo "sweep_resnet.sh: resnet${size}_v${version} failed; last lines of $run/train.log:" >&2
      tail -n 3 "$run/train.log" >&2
      [[ "$keep_going" == 1 ]] || break 2
    else
      tail -n 1 "$run/train.log" >&2
    fi
  done
done

python "$repo/scripts/collect_results.py" "$sweep_dir"
cat "$sweep_dir/results.md"
if (( failed > 0 )); then
  echo "sweep_resnet.sh: $failed run(s) failed" >&2
  exit 1
fi
