#!/usr/bin/env bash
# OrganAMNIST recipe (MedMNIST v2: 28x28 abdominal CT, 11 organ classes, official split by scan).
#
# Usage: bash scripts/recipe_organamnist.sh WORK_DIR [extra dicom_main.py flags]
#
# Extracts $ORGANAMNIST_TAR (default ../shared/data/OrganAMNIST-trainval.tar.gz: official train
# and val splits as OrganAMNIST/{train,val}/<class>/*.png) into WORK_DIR/raw, converts it with
# --need_split=predefined (the manifest names the splits "train" and "validation"), trains
# $ORGANAMNIST_MEMBERS models (default 1; seeds 1, 2, ...) into WORK_DIR/model_1, model_2, ...,
# exports them as ONE SavedModel (dicom_export.py; members' probabilities averaged) to
# WORK_DIR/export, writes its validation report (per-class recall, confusion matrix) to
# WORK_DIR/eval_validation and prints the per-class recall and the left/right swaps.
# A rerun resumes: finished members are not retrained. Score the held-back official test
# split with the export:
#   python networks/resnet/dicom_eval.py --model=WORK_DIR/export --data_dir=TEST_DATA --split=test
#
# The model: ResNet-18 v2 on images upscaled 4x to 112 px with the ImageNet stem (28x28 maps
# into stage 1, as MedMNIST's own 28-px ResNet has), mixed bfloat16, label smoothing 0.1,
# cosine schedule, 8 epochs, with intensity augmentation (brightness/contrast, gamma, blur,
# noise: other scanners, doses and contrast phases), a front-back flip (below) and an
# exponential moving average of the weights (the average is what is exported). One 112-px
# model replaced two 56-px members on 2026-12-03 (benchmarks/RESULTS.md section 12): in the
# same budget (1,410-1,471 s of training of 1,800; two seeds) it holds up better under the
# geometric shift table, the proxy that ranked the official test's weak organs best
# (0.943-0.949 vs 0.930), is level on the corruption table and on validation (0.9815-0.9841
# vs 0.9832); MedMNIST v2 reports the same direction on the test (ResNet-18 0.935 at 28 px,
# 0.951 upscaled to 224).
# --train_budget_seconds=1710 keeps a member within 30 minutes on a slower CPU: at most 8
# epochs, the steps that fit where they do not (2-core AMD EPYC without AMX: 4.5-5.8 epochs at
# 112 px over six runs, validation 0.9824-0.9849, level with 8 epochs on the AMX machine and
# ahead of 10 epochs at 56 px there; RESULTS.md sections 14-19); the run stops at the budget if
# the machine slows down after it was timed (runs on a shared VM differ by 10-18%) and is
# lengthened halfway if it runs faster.
# The other 90 s of the 30 minutes are for what the budget does not count: the program's
# start, the final validation and the checkpoint (about 70 s).
# ORGANAMNIST_MEMBERS=2 trains a second model (seed 2) and exports the pair: about twice the
# budget. --random_flip, a left-right flip of the picture, keeps every label true here:
# OrganAMNIST's rows run along the patient's left-right axis (the up-down flip is the one that
# swaps left and right organs, 96% of them), so its columns run front to back (RESULTS.md
# section 10). About a fifth of the training split's scans are stored front to back and the
# validation split's 16 scans hardly any (benchmarks/mirror_audit.py, section 21); the recipe
# without the flip scored 0.917 on the validation split mirrored that way (kidneys swapped),
# 0.978-0.979 with it, for 0.3-0.6 points of the unmirrored validation (two seeds): the
# flip pays if more than ~6% of the official test's scans are stored front to back.
# On scans the training never saw (scripts/holdout_organamnist.sh, RESULTS.md section 22) the
# flip costs nothing (+0.3 points, interval -0.7 to +1.3), and this recipe is level with the
# 8-epoch 56-px one of 2026-12-01 (-0.4 points, -1.4 to +0.5): its official test accuracy is
# expected near that recipe's 0.93. Seven changes tried on that hold-out since (RESULTS.md section
# 23: the validation scans added to training, 16 epochs, mixup, cutmix, --mirror_swap, a
# five-model ensemble) moved it by less than retraining with another seed does, nor did weight
# decay, ResNet-34 or no label smoothing (section 24). Over half of that hold-out's errors are
# crops whose box missed its organ (two blind readers, benchmarks/blind_review.py); ensembles
# fix only the rest (eleven models: +0.6 points); --mirror_swap cut the missed-box errors at 56
# px over two seeds (+0.4 and +0.9 points) but added nothing to this recipe (one seed).
# Val is 16 scans, the test 70: val is an easy, optimistic guide (the 8-epoch recipe:
# validation 0.9835, official test 0.9326), so watch the per-class figures, not the mean;
# compare changes on scripts/holdout_organamnist.sh instead.
ORGANAMNIST_RECIPE_FLAGS="--resnet_size=18 --version=2 --image_size=112 --nosmall_input --dtype=bf16 \
--batch_size=128 --train_epochs=8 --epochs_between_evals=8 --lr_schedule=cosine \
--base_learning_rate=0.2 --warmup_epochs=0.2 --label_smoothing=0.1 --color_jitter=0.15 \
--augment_gamma=0.4 --augment_blur=0.7 --augment_noise=0.03 --ema_decay=0.999 --cache \
--steps_per_loop=30 --eval_split=validation --train_budget_seconds=1710 --random_flip"
export ORGANAMNIST_RECIPE_FLAGS

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  # shellcheck source=scripts/_common.sh
  source "$(dirname "$0")/_common.sh"
  check_arguments 1 "$@"
  work_dir="$1"; shift
  members="${ORGANAMNIST_MEMBERS:-1}"
  [[ "$members" =~ ^[1-9][0-9]*$ ]] || { echo "recipe_organamnist.sh: error: ORGANAMNIST_MEMBERS=$members: not a positive number" >&2; exit 2; }
  mkdir -p "$work_dir"
  extract_organamnist "$work_dir"
  if [[ ! -f "$work_dir/data/manifest.json" ]]; then
    python "$repo/tf_convert_data.py" --dataset_name=organamnist \
      --dataset_dir="$work_dir/raw/OrganAMNIST" --output_dir="$work_dir/data" --need_split=predefined
  fi
  start=$(date +%s)
  model_dirs=()
  for (( member = 1; member <= members; member++ )); do
    model_dirs+=("$work_dir/model_$member")
    echo "== member $member of $members"
    # shellcheck disable=SC2086  # the recipe is a list of flags
    python "$repo/networks/resnet/dicom_main.py" --data_dir="$work_dir/data" \
      --model_dir="$work_dir/model_$member" --seed="$member" $ORGANAMNIST_RECIPE_FLAGS "$@"
  done
  echo "training (incl. start-up and validation): $(( $(date +%s) - start )) s"
  python "$repo/networks/resnet/dicom_export.py" --export_dir="$work_dir/export" \
    --model_dir="$(IFS=,; echo "${model_dirs[*]}")"
  python "$repo/networks/resnet/dicom_eval.py" --model="$work_dir/export" \
    --data_dir="$work_dir/data" --split=validation --output_dir="$work_dir/eval_validation"
  print_class_report "$work_dir/eval_validation/metrics.json"
fi
