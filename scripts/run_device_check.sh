#!/usr/bin/env bash
# Check this machine's device in a few minutes and write device_check.md + device_check.json
# (attach them to a report): golden parity, training of every preset, export and the early-exit
# engine, the most expensive kernels.
#
#   bash scripts/run_device_check.sh [--device_target auto|Ascend|GPU|CPU] [--quick] [--out DIR]
#        [--presets NAME ...] [--steps N]
#
# --quick: reduced-width training only (skips the full presets). See docs/devices.md.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
exec python -m dvt_ms.devicecheck "$@"
