#!/usr/bin/env bash
# The whole test suite on CPU in GRAPH_MODE. Sets up .venv on first use. Extra args go to pytest
# (e.g. tests/test_model.py -k golden runs just those; -m "not slow" the fast set).
#
# The tests run in parallel worker processes (pytest-xdist), one per core up to 4: most of a test's
# time is MindSpore's graph compiler, which uses one core. DVT_TEST_WORKERS=N sets the number
# (0: in this process, as plain pytest does); -n N among the arguments does too. Workers steal
# queued tests from each other (--dist worksteal), so they finish together.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$DVT_ROOT"
workers="${DVT_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
parallel=()
case " $* " in
  *" -n "*|*" -n="*|*" --numprocesses"*|*" -p no:xdist "*) ;;
  *) if python -c 'import xdist' 2>/dev/null; then
       parallel=(-n "$workers")
       [ "$workers" -gt 0 ] && parallel+=(--dist worksteal)
     else
       echo "[dvt-ms] pytest-xdist is not installed in $DVT_VENV: the tests run one at a time" >&2
     fi ;;
esac
exec python -m pytest "${parallel[@]}" "$@"   # pytest.ini: testpaths = tests
