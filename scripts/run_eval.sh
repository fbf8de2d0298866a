#!/usr/bin/env bash
# Evaluate every exit and calibrate thresholds: bash scripts/run_eval.sh CONFIG --ckpt X.ckpt --data DIR [--out REPORT] [...]
set -euo pipefail
source "$(dirname "$0")/_env.sh"
DVT_PROG="$0" exec python -m dvt_ms.calibrate "$@"
