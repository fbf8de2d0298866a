#!/usr/bin/env bash
# Early-exit inference on MindIR: bash scripts/run_infer.sh --model DIR [--thresholds T.yaml] [--budget GFLOPS | --accuracy PCT | --hold_budget GFLOPS] [--deadline_ms D] IMAGES_OR_FOLDER [--out FILE] [--compare] [--top_k K]
set -euo pipefail
source "$(dirname "$0")/_env.sh"
DVT_PROG="$0" exec python -m dvt_ms.deploy "$@"
