#!/usr/bin/env bash
# The small-image recipe for MedNIST (64x64 grey, 6 classes), sourced by quickstart.sh.
# Run it alone to train on an already converted MedNIST, then score its test split.
#
# Usage: bash scripts/recipe_mednist.sh DATA_DIR MODEL_DIR [extra dicom_main.py flags]
#
# ResNet-18 v2 with the ImageNet stem (--nosmall_input: 16x16 maps into stage 1; the small-input
# stem keeps 64x64 and costs ~16x more per image), mixed bfloat16 (oneDNN's AVX512-BF16 kernels),
# 3 epochs with a cosine schedule, decoded images cached after the first epoch, 20 steps per
# tf.function call. Augmentation against the archive's habits (benchmarks/RESULTS.md section 9:
# out-of-fold errors 34 -> 16 of 35,107): 30% of images shrunk onto a border of one random grey
# (framed films, collimator edges: MedNIST's errors were framed hands and chests), 10% turned
# by a quarter turn (radiographs stored sideways). No horizontal flip: radiographs have
# laterality (MedNIST's classes do not depend on it, but the recipe keeps the safe default).
# --train_budget_seconds=285 keeps training within the 5 minutes the quickstart allows it, on a
# slower CPU too (285 s of steps plus ~15 s the budget does not count: program start, final
# validation, export): at most 3 epochs, the steps that fit where they do not (2-core AMD EPYC
# without AMX: 2.3-3 epochs; out of fold 14 errors of 35,107, level with 3 whole epochs:
# RESULTS.md section 17), lengthened halfway when the steps run faster than the first ones
# timed (section 19).
MEDNIST_RECIPE_FLAGS="--resnet_size=18 --version=2 --image_size=64 --nosmall_input --dtype=bf16 \
--batch_size=128 --train_epochs=3 --epochs_between_evals=3 --lr_schedule=cosine \
--base_learning_rate=0.2 --warmup_epochs=0.1 --augment_frame=0.3 --augment_rot90=0.1 --cache \
--steps_per_loop=20 --train_budget_seconds=285"
export MEDNIST_RECIPE_FLAGS

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  # shellcheck source=scripts/_common.sh
  source "$(dirname "$0")/_common.sh"
  check_arguments 2 "$@"
  data_dir="$1"; model_dir="$2"; shift 2
  start=$(date +%s)
  # shellcheck disable=SC2086  # the recipe is a list of flags
  python "$repo/networks/resnet/dicom_main.py" --data_dir="$data_dir" --model_dir="$model_dir" \
    --export_dir="$model_dir/export" $MEDNIST_RECIPE_FLAGS "$@"
  train_seconds=$(( $(date +%s) - start ))
  python "$repo/networks/resnet/dicom_eval.py" --model="$model_dir/export" --data_dir="$data_dir" \
    --split=test --output_dir="$model_dir/eval_test"
  # Only what this run measured: a figure from another run would read as if it were.
  read -r accuracy num_examples < <(python -c "import json, sys
m = json.load(open(sys.argv[1])); print(format(m['accuracy'], '.4f'), m['num_examples'])" \
    "$model_dir/eval_test/metrics.json")
  echo "MedNIST recipe: test accuracy $accuracy on $num_examples images," \
    "training (incl. start-up and validation) ${train_seconds} s"
fi
