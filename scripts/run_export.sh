#!/usr/bin/env bash
# One MindIR per exit plus manifest.yaml: bash scripts/run_export.sh CONFIG --ckpt X.ckpt --out DIR [--thresholds T.yaml]
set -euo pipefail
source "$(dirname "$0")/_env.sh"
DVT_PROG="$0" exec python -m dvt_ms.export "$@"
