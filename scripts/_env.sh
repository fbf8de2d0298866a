# Sourced by the scripts (and safe to source in an interactive shell): create or reuse the
# checkout's virtual environment with the pinned requirements, and put it first on PATH.
# It changes no shell options: the scripts that source it set their own.
DVT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DVT_VENV="${DVT_VENV:-$DVT_ROOT/.venv}"

_dvt_setup() {
  if [ ! -x "$DVT_VENV/bin/python" ]; then
    echo "[dvt-ms] creating virtual environment $DVT_VENV" >&2
    python3 -m venv "$DVT_VENV" || return 1
  fi
  # Re-install only when requirements.txt changed since the last successful install.
  local stamp="$DVT_VENV/.requirements.sha256" want
  want="$(sha256sum "$DVT_ROOT/requirements.txt" | cut -d' ' -f1)" || return 1
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[dvt-ms] installing requirements into $DVT_VENV" >&2
    "$DVT_VENV/bin/python" -m pip install --quiet --upgrade pip >&2 || return 1
    "$DVT_VENV/bin/python" -m pip install --quiet -r "$DVT_ROOT/requirements.txt" >&2 || return 1
    echo "$want" > "$stamp"
  fi
}

if _dvt_setup; then
  # msrun starts `python` from PATH: put the venv first. The checkout's dvt_ms is imported from
  # DVT_ROOT (pip install -e . does the same for a venv of your own).
  export PATH="$DVT_VENV/bin:$PATH"
  export PYTHONPATH="$DVT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  # MindSpore logs warnings and errors (2): its device warnings (a plugin that did not load, a
  # fallback) must reach the user. GLOG_v=3 keeps errors only, 1 adds info.
  export GLOG_v="${GLOG_v:-2}"
  # Except the graph compiler's (SESSION) notes on CPU gradient expansion, several lines of IR
  # per compile that say nothing to a user. Set MS_SUBMODULE_LOG_v yourself to see them.
  [ -n "${MS_SUBMODULE_LOG_v+set}" ] || export MS_SUBMODULE_LOG_v='{SESSION:3}'
  unset -f _dvt_setup
else
  unset -f _dvt_setup
  echo "[dvt-ms] setting up $DVT_VENV failed (see the messages above)" >&2
  # `return` when sourced, `exit` if run as a script; never closes an interactive shell.
  return 1 2>/dev/null || exit 1
fi
