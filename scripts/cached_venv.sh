# Sourced by scripts/install_mlx.sh and scripts/install_executorch.sh: a runtime's virtual environment of its own,
# cached, and VENV a symlink to it.
#
#   cached_venv TAG CACHE VENV PIP_ARGS...
#
# installs PIP_ARGS into a fresh venv at CACHE (once: CACHE/done marks a finished install; a failed one is removed)
# and points the symlink VENV at it. A second run on the same machine only relinks (the caller then checks that the
# runtime imports). TAG prefixes the messages. PYTHON (default python3) makes the venv.
#
#   check_runtime TAG VENV CACHE <<'PY' ... PY
#
# runs the Python code on standard input with VENV's python (a check that the runtime imports and runs): prints the
# lines it prints that start with "TAG:", or its last lines and fails.

cached_venv() {
  local tag=$1 cache=$2 venv=$3
  shift 3
  if [ -e "$venv" ] && [ ! -L "$venv" ]; then
    echo "$tag: $venv exists and is not the link this script makes; remove it or name another VENV" >&2
    return 2
  fi
  if [ ! -f "$cache/done" ]; then
    echo "$tag: installing $* (cache: $cache)"
    local t0 log
    t0=$(date +%s)
    log=$(mktemp -t "$tag.XXXXXX")
    rm -rf "$cache" && mkdir -p "$(dirname "$cache")"
    if ! { "${PYTHON:-python3}" -m venv "$cache" &&
           "$cache/bin/python" -m pip --disable-pip-version-check install "$@"; } >"$log" 2>&1; then
      grep -v "^WARNING: Location" "$log" | tail -30
      rm -rf "$cache" "$log"
      echo "$tag: pip install $* failed" >&2
      return 1
    fi
    rm -f "$log"
    touch "$cache/done"
    echo "$tag: installed in $(( $(date +%s) - t0 )) s"
  fi
  ln -sfn "$cache" "$venv"
}

check_runtime() {
  local tag=$1 venv=$2 cache=$3 out
  out=$("$venv/bin/python" - 2>&1) || {
    echo "$out" | tail -20
    echo "$tag: the runtime does not import or run from $venv (remove $cache to reinstall)" >&2
    return 1
  }
  grep "^$tag:" <<<"$out"
}
