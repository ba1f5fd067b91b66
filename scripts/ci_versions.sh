#!/usr/bin/env bash
# CI: the patch, plan, generation, export and CLI tests (and `hopscotch doctor`) on the oldest transformers the
# package claims and on the newest release available today, each in a copy of the main venv whose only change is
# transformers (and what it needs). The copy is hard-linked (instant, no disk), and pip replaces files rather than
# writing into them, so the main venv is untouched.
#   bash scripts/ci_versions.sh [oldest|newest ...]     (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# Tiny-model tests of everything that touches transformers' API, plus the real-model patch tests (SmolLM2:
# cached == uncached generation, the compact cache, PEFT); the slower real-model export tests run in the main run.
TESTS=(tests/test_hf_compat.py tests/test_patch.py tests/test_decode_cache.py tests/test_plan.py tests/test_export.py
       tests/test_cli.py tests/test_dispatch.py)

run_with() {  # NAME, then pip arguments that choose the transformers version
  local name=$1; shift
  local venv=".venv-tf-$name" log
  log=$(mktemp -t hopscotch-ci-versions.XXXXXX)
  rm -rf "$venv"
  cp -al "$VENV" "$venv"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    tail -30 "$log"; echo "CI versions ($name): pip install $* failed" >&2; return 1
  fi
  printf '\n== CI versions: %s: %s\n' "$name" "$("$venv/bin/python" - <<'PY'
import importlib.metadata as m
print("  ".join(f"{p} {m.version(p)}" for p in ("transformers", "torch", "huggingface_hub", "tokenizers", "accelerate", "peft")))
PY
)"
  local start=$SECONDS
  "$venv/bin/python" -m hopscotch doctor
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" "${TESTS[@]}"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_patch_integration.py
  echo "CI versions ($name): took $(( SECONDS - start )) s"
  rm -rf "$venv"
}

# pip installs the newest transformers whose dependencies it can resolve from the reachable index; when that is not
# the newest release (transformers 5.25 needs kernels >= 0.19.1, which the index CI reaches lacked for a while),
# say so, and run the same tests on the newest release installed without its dependencies: its modelling code is
# what the patch must follow, and the package's own loaders never use the missing one
# (hf_compat.FROM_PRETRAINED_KWARGS).
newest_release_without_its_deps() {
  local latest got why
  latest=$("$VENV/bin/python" -m pip index versions transformers 2>/dev/null | sed -n 's/^transformers (\(.*\))$/\1/p')
  got=$("$VENV/bin/python" -m pip install --dry-run --disable-pip-version-check --upgrade transformers 2>/dev/null |
        sed -n 's/^Would install.* transformers-\([^ ]*\).*/\1/p')
  got=${got:-$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("transformers"))')}
  if [ -z "$latest" ] || [ "$latest" = "$got" ]; then return 0; fi
  why=$("$VENV/bin/python" -m pip install --dry-run --disable-pip-version-check "transformers==$latest" 2>&1 |
        grep -m1 '^ERROR: No matching distribution' || true)
  echo "CI versions: the newest transformers release is $latest, but pip installs $got here (${why:-reason not found})"
  run_with "$latest-without-deps" --no-deps "transformers==$latest"
}

for which in "${@:-oldest newest}"; do
  for w in $which; do
    case $w in
      # The oldest release of the range pyproject.toml claims (transformers>=5.17), with a hub it accepts.
      oldest) run_with oldest "transformers==5.17.*" "huggingface_hub<2" ;;
      # The newest release on the day CI runs: not pinned, so CI sees tomorrow's transformers first.
      newest)
        run_with newest --upgrade transformers
        newest_release_without_its_deps ;;
      *) echo "ci_versions: unknown run $w; expected oldest or newest" >&2; exit 2 ;;
    esac
  done
done
