# Sourced by the scripts: create or reuse the checkout's virtual environment with the requirements.
set -euo pipefail
DVT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DVT_VENV="${DVT_VENV:-$DVT_ROOT/.venv}"
if [ ! -x "$DVT_VENV/bin/python" ]; then
  echo "[dvt-ms] creating virtual environment $DVT_VENV" >&2
  python3 -m venv "$DVT_VENV"
fi
# Re-install only when requirements.txt changed since the last successful install.
stamp="$DVT_VENV/.requirements.sha256"
want="$(sha256sum "$DVT_ROOT/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[dvt-ms] installing requirements into $DVT_VENV" >&2
  "$DVT_VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$DVT_VENV/bin/python" -m pip install --quiet -r "$DVT_ROOT/requirements.txt" >&2
  echo "$want" > "$stamp"
fi
# msrun starts `python` from PATH: put the venv first.
export PATH="$DVT_VENV/bin:$PATH"
export PYTHONPATH="$DVT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_v="${GLOG_v:-3}"   # MindSpore: errors only, unless the user asks for more

