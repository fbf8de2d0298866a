#!/usr/bin/env bash
# DVT end to end on a CPU in minutes: embedded dataset -> train a small DVT -> calibrate thresholds
# -> export MindIR -> early-exit inference at a few budgets (a quarter to a half of the last exit's
# GFLOPs) -> summary table and pictures.
#
#   bash scripts/run_demo.sh [OUT_DIR] [key=value ...]     (default OUT_DIR: outputs/demo)
#
# key=value overrides go to the training config (configs/demo.yaml), e.g. epochs=3.
# DVT_DEMO_TRAIN_PER_CLASS / DVT_DEMO_VAL_PER_CLASS / DVT_DEMO_CALIB_PER_CLASS size the dataset.
set -euo pipefail
caller_dir="$PWD"
source "$(dirname "$0")/_env.sh"
cd "$caller_dir"
start=$(date +%s)

out="outputs/demo"
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then out="$1"; shift; fi
config="$DVT_ROOT/configs/demo.yaml"
data="$out/data"
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

step "1/6 embedded dataset -> $data"
python -m dvt_ms.demo.dataset "$data" \
  --train_per_class "${DVT_DEMO_TRAIN_PER_CLASS:-1250}" \
  --calib_per_class "${DVT_DEMO_CALIB_PER_CLASS:-150}" \
  --val_per_class "${DVT_DEMO_VAL_PER_CLASS:-150}" --image_size 64

step "2/6 train (configs/demo.yaml)"
bash "$DVT_ROOT/scripts/run_train.sh" "$config" data_dir="$data" output_dir="$out/train" resume=auto "$@"
ckpt="$out/train/best.ckpt"

step "3/6 evaluate every exit, calibrate thresholds on the held-out calib split"
bash "$DVT_ROOT/scripts/run_eval.sh" "$config" --ckpt "$ckpt" --data "$data" --out "$out/eval" \
  --calib_split calib --overwrite "$@"

step "4/6 export one MindIR per exit"
bash "$DVT_ROOT/scripts/run_export.sh" "$config" --ckpt "$ckpt" --out "$out/mindir" \
  --thresholds "$out/eval/thresholds.yaml" --overwrite data_dir="$data" "$@"

step "5/6 early-exit inference on the validation images"
runs=()
for budget in $(python -m dvt_ms.demo budgets --eval "$out/eval"); do
  echo "--- budget $budget GFLOPs per image"
  # The engine chooses its batch size from the model's cost and the image count (no tuning flag);
  # --compare also runs every image through every exit: the demo reports the measured speedup.
  bash "$DVT_ROOT/scripts/run_infer.sh" --model "$out/mindir" --budget "$budget" "$data/val" --compare \
    --out "$out/infer/results_$budget.json" --summary "$out/infer/summary_$budget.json"
  runs+=("$budget:$out/infer/results_$budget.json:$out/infer/summary_$budget.json")
done

step "6/6 summary"
python -m dvt_ms.demo summarize --eval "$out/eval" --infer "${runs[@]}" --out "$out" --data "$data" \
  --seconds "$(( $(date +%s) - start ))"
echo "plots: $out/budget_curve.png, $out/exits_grid.png"
echo "demo finished in $(( $(date +%s) - start ))s"
