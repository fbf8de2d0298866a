#!/usr/bin/env bash
# The whole test suite on CPU in GRAPH_MODE. Sets up .venv on first use. Extra args go to pytest
# (e.g. tests/test_model.py -k golden runs just those).
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$DVT_ROOT"
exec python -m pytest "$@"   # pytest.ini: testpaths = tests
