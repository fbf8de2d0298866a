# Sourced by the scripts (and safe to source in an interactive shell): create or reuse the
# checkout's virtual environment with the pinned requirements, and put it first on PATH.
# It changes no shell options: the scripts that source it set their own.
#
# DVT_VENV names another environment (default: the checkout's .venv). One this script created
# (marked by .dvt-ms-venv or .requirements.sha256 inside it) is kept up to date with
# requirements.txt. Any other environment (an Ascend host's tuned one, say) is never installed
# into: it is used as it is when it has the requirements, else refused with what it lacks.
DVT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DVT_VENV="${DVT_VENV:-$DVT_ROOT/.venv}"

_dvt_setup() {
  local stamp="$DVT_VENV/.requirements.sha256" marker="$DVT_VENV/.dvt-ms-venv" want missing
  if [ ! -x "$DVT_VENV/bin/python" ]; then
    echo "[dvt-ms] creating virtual environment $DVT_VENV" >&2
    python3 -m venv "$DVT_VENV" || return 1
    echo "created by dvt-ms scripts/_env.sh; requirements.txt is installed into it" > "$marker"
  elif [ ! -f "$marker" ] && [ ! -f "$stamp" ]; then
    missing="$("$DVT_VENV/bin/python" -c 'import importlib.util as u
print(" ".join(m for m in ("mindspore", "mindcv", "numpy", "yaml", "PIL") if u.find_spec(m) is None))')" || return 1
    if [ -n "$missing" ]; then
      echo "[dvt-ms] DVT_VENV=$DVT_VENV is an environment dvt-ms did not create and it lacks: $missing." \
           "Nothing was installed into it: install requirements.txt there yourself, or unset DVT_VENV" \
           "to use the checkout's .venv" >&2
      return 1
    fi
    echo "[dvt-ms] using DVT_VENV=$DVT_VENV as it is (not created by dvt-ms: nothing is installed into it)" >&2
    return 0
  fi
  # Re-install only when requirements.txt changed since the last successful install.
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
