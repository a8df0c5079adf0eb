#!/usr/bin/env bash
# OrganAMNIST recipe (MedMNIST v2: 28x28 abdominal CT, 11 organ classes, official split by scan).
#
# Usage: bash scripts/recipe_organamnist.sh WORK_DIR [extra dicom_main.py flags]
#
# Extracts $ORGANAMNIST_TAR (default ../shared/data/OrganAMNIST-trainval.tar.gz: official train
# and val splits as OrganAMNIST/{train,val}/<class>/*.png) into WORK_DIR/raw, converts it with
# --need_split=predefined (the manifest names the splits "train" and "validation"), trains
# $ORGANAMNIST_MEMBERS models (default 2; seeds 1, 2, ...) into WORK_DIR/model_1, model_2, ...,
# exports them as ONE SavedModel (dicom_export.py; members' probabilities averaged) to
# WORK_DIR/export, writes its validation report (per-class recall, confusion matrix) to
# WORK_DIR/eval_validation and prints the per-class recall and the left/right swaps.
# A rerun resumes: finished members are not retrained. Score the held-back official test
# split with the export:
#   python networks/resnet/dicom_eval.py --model=WORK_DIR/export --data_dir=TEST_DATA --split=test
#
# The model: two ResNet-18 v2 members (seeds 1 and 2; $ORGANAMNIST_MEMBERS sets how many) on
# images upscaled 2x to 56 px with the ImageNet stem, mixed bfloat16, label smoothing 0.1, cosine
# schedule, 8 epochs, and the mirror swap: half the kidney, femur and lung crops are mirrored
# across the patient's left-right axis (the image's up-down axis here, RESULTS.md section 10)
# and relabelled as the other side, so each side learns from the other's scans. Why this and
# not the 112-px model with intensity augmentation, EMA and a flip it replaced on 2026-12-05
# (RESULTS.md section 25): on scans the training never saw (scripts/holdout_organamnist.sh, the
# one proxy that reproduced the official test, section 22) every 112-px variant measured scored
# 0.927-0.941, and this recipe 0.9521 (+1.1 points over the 112-px recipe, interval +0.0 to
# +2.3; its members alone 0.948-0.951; four members no better than two); the augmentation, the
# EMA and the flip had been chosen on the 16-scan validation split and the stress tables, which
# do not predict new scans (section 22). Half the resolution makes room for two members.
# Official validation 0.9874; 1,495 s of training on a 2-core AMD EPYC without AMX; on a 2-core
# Xeon with AMX 0.9886 and 1,128 s (RESULTS.md section 26).
# Expect about 0.94 on the official test, not the issue's 0.96: over half the hold-out's
# errors are crops whose box missed its organ (two blind readers, section 24).
# --train_budget_seconds=800 keeps each member within 15 minutes on a slower CPU: at most 8
# epochs, the steps that fit where they do not (8 epochs of the training split took 726 and
# 731 s on a 2-core AMD EPYC without AMX, 521 and 547 s on a 2-core Xeon with AMX); the run
# stops at the budget if the machine slows down after it was timed and is lengthened halfway if
# it runs faster. The rest of the 30 minutes is for what the budget does not count: each
# member's start, final validation and checkpoint (about 20 s on the EPYC), the export and the
# validation report (the whole script took 1,533 s there and 1,167 s on the Xeon, conversion
# included).
# Val is 16 scans, the test 70: val is an easy, optimistic guide (the 8-epoch recipe:
# validation 0.9835, official test 0.9326), so watch the per-class figures, not the mean;
# compare changes on scripts/holdout_organamnist.sh instead.
ORGANAMNIST_RECIPE_FLAGS="--resnet_size=18 --version=2 --image_size=56 --nosmall_input --dtype=bf16 \
--batch_size=128 --train_epochs=8 --epochs_between_evals=8 --lr_schedule=cosine \
--base_learning_rate=0.2 --warmup_epochs=0.2 --label_smoothing=0.1 --mirror_swap=0.5 \
--mirror_axis=up_down --cache --steps_per_loop=30 --eval_split=validation --train_budget_seconds=800"
export ORGANAMNIST_RECIPE_FLAGS

# check_organamnist_members: $ORGANAMNIST_MEMBERS defaults to 2 and must be a positive number,
# checked before any work is done.
check_organamnist_members() {
  ORGANAMNIST_MEMBERS="${ORGANAMNIST_MEMBERS:-2}"
  [[ "$ORGANAMNIST_MEMBERS" =~ ^[1-9][0-9]*$ ]] || { echo "$(basename "$0"): error: ORGANAMNIST_MEMBERS=$ORGANAMNIST_MEMBERS: not a positive number" >&2; exit 2; }
}

# train_organamnist_members DATA_DIR MODEL_PREFIX EXPORT_DIR [extra dicom_main.py flags]: the
# recipe's members (seeds 1..$ORGANAMNIST_MEMBERS) into MODEL_PREFIX_1, MODEL_PREFIX_2, ...,
# exported as ONE SavedModel to EXPORT_DIR. Shared with holdout_organamnist.sh, so the hold-out
# scores the recipe as it is committed. A finished member resumes at its last step: not retrained.
train_organamnist_members() {
  local data_dir="$1" prefix="$2" export_dir="$3" member start model_dirs=()
  shift 3
  start=$(date +%s)
  for (( member = 1; member <= ORGANAMNIST_MEMBERS; member++ )); do
    model_dirs+=("${prefix}_$member")
    echo "== member $member of $ORGANAMNIST_MEMBERS"
    # shellcheck disable=SC2086  # the recipe is a list of flags
    python "$repo/networks/resnet/dicom_main.py" --data_dir="$data_dir" \
      --model_dir="${prefix}_$member" --seed="$member" $ORGANAMNIST_RECIPE_FLAGS "$@"
  done
  echo "training (incl. start-up and validation): $(( $(date +%s) - start )) s"
  python "$repo/networks/resnet/dicom_export.py" --export_dir="$export_dir" \
    --model_dir="$(IFS=,; echo "${model_dirs[*]}")"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  # shellcheck source=scripts/_common.sh
  source "$(dirname "$0")/_common.sh"
  check_arguments 1 "$@"
  check_organamnist_members
  work_dir="$1"; shift
  mkdir -p "$work_dir"
  extract_organamnist "$work_dir"
  if [[ ! -f "$work_dir/data/manifest.json" ]]; then
    python "$repo/tf_convert_data.py" --dataset_name=organamnist \
      --dataset_dir="$work_dir/raw/OrganAMNIST" --output_dir="$work_dir/data" --need_split=predefined
  fi
  train_organamnist_members "$work_dir/data" "$work_dir/model" "$work_dir/export" "$@"
  python "$repo/networks/resnet/dicom_eval.py" --model="$work_dir/export" \
    --data_dir="$work_dir/data" --split=validation --output_dir="$work_dir/eval_validation"
  print_class_report "$work_dir/eval_validation/metrics.json"
fi
