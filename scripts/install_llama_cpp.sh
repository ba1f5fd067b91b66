#!/usr/bin/env bash
# Installs llama.cpp (through llama-cpp-python) into a virtual environment, for the gguf export tests and the
# llama.cpp benchmark:   bash scripts/install_llama_cpp.sh [VENV]      (default .venv)
#
# PyPI has no Linux wheel of llama-cpp-python, and its sdist builds llama.cpp's shared library *and* the
# "common" helper library (chat parsers, downloads, ...) that the Python bindings never load. So this script
# builds only what is needed, from the llama.cpp sources vendored in that sdist:
#   1. libllama + libggml (CPU backend, this CPU's instruction sets but AMX), with llama.cpp's own CMake;
#   2. the llama-cpp-python package itself with LLAMA_BUILD=OFF (pure Python, seconds);
#   3. the libraries copied into the installed package's lib/ folder, where it loads them from.
# Both are cached under ${HOPSCOTCH_CACHE:-~/.cache/hopscotch}/llama.cpp/<version>-<cpu flags hash>, so a second
# run on the same kind of machine only reinstalls (seconds). Cold: about 4 minutes on 2 cores.
# Environment: LLAMA_CPP_PYTHON_VERSION (default 0.3.36), MAX_JOBS (default: nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
JOBS=${MAX_JOBS:-$(nproc)}
CACHE_ROOT=${HOPSCOTCH_CACHE:-$HOME/.cache/hopscotch}/llama.cpp
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
[ -x "$VENV/bin/python" ] || { echo "install_llama_cpp: no virtual environment at $VENV (run scripts/setup.sh)" >&2; exit 1; }
command -v cmake >/dev/null && command -v c++ >/dev/null ||
  { echo "install_llama_cpp: needs cmake and a C++ compiler (apt-get install cmake g++)" >&2; exit 1; }

# Libraries built for this CPU's instruction sets only run on CPUs that have them: key the cache by them.
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | sort | tr '\n' ' ' | sha256sum | cut -c1-12)
KEY="$VERSION-$(uname -m)-$flags-noamx"
CACHE="$CACHE_ROOT/$KEY"
start=$(date +%s)

if [ ! -f "$CACHE/done" ]; then
  echo "install_llama_cpp: building llama-cpp-python $VERSION's llama.cpp (cache: $CACHE)"
  work=$(mktemp -d -t llama-cpp-build.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  "${PIP[@]}" download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION" \
    >"$work/download.log" 2>&1 || { tail -30 "$work/download.log"; exit 1; }
  tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  src=$(echo "$work"/llama_cpp_python-"$VERSION")
  generator=()
  if [ -x "$VENV/bin/ninja" ]; then generator=(-G Ninja -DCMAKE_MAKE_PROGRAM="$PWD/$VENV/bin/ninja"); fi
  # The CPU's own vector instruction sets, named one by one, rather than -march=native: on a CPU with AMX
  # (Sapphire Rapids) this version's -march=native build segfaulted in llama_decode on SmolLM2's f16 and q8_0
  # files (tests/test_export_gguf.py); built with these flags, which leave AMX out, every test passes there.
  isa=(-DGGML_NATIVE=OFF)
  cpu=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
  has() { [[ " $cpu " == *" $1 "* ]]; }
  for f in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI \
           avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI bmi2:BMI2; do
    if has "${f%%:*}"; then isa+=("-DGGML_${f##*:}=ON"); else isa+=("-DGGML_${f##*:}=OFF"); fi
  done
  cmake -S "$src/vendor/llama.cpp" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON "${isa[@]}" -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' >"$work/configure.log" 2>&1 ||
    { tail -30 "$work/configure.log"; echo "install_llama_cpp: CMake configure failed" >&2; exit 1; }
  cmake --build "$work/build" --target llama -j "$JOBS" >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log"; echo "install_llama_cpp: build failed" >&2; exit 1; }
  # The Python package alone: its CMake project with LLAMA_BUILD=OFF compiles nothing.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "${PIP[@]}" wheel --quiet --no-deps -w "$work/wheel" "$src" \
    >"$work/wheel.log" 2>&1 || { tail -30 "$work/wheel.log"; echo "install_llama_cpp: wheel failed" >&2; exit 1; }
  rm -rf "$CACHE.partial" && mkdir -p "$CACHE.partial/lib"
  cp -P "$work"/build/bin/lib*.so* "$CACHE.partial/lib/"
  cp "$work"/wheel/*.whl "$CACHE.partial/"
  (cd "$src/vendor/llama.cpp" && git rev-parse HEAD 2>/dev/null || echo unknown) >"$CACHE.partial/llama.cpp-commit"
  touch "$CACHE.partial/done"
  rm -rf "$CACHE" && mv "$CACHE.partial" "$CACHE"
  rm -rf "$work"  # before the check below: the libraries must load from where they are installed
  echo "install_llama_cpp: built in $(( $(date +%s) - start )) s"
fi

"${PIP[@]}" install --quiet --force-reinstall --no-deps "$CACHE"/llama_cpp_python-*.whl
"${PIP[@]}" install --quiet "numpy>=1.20" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"
pkg=$("$VENV/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))')
mkdir -p "$pkg/lib"
cp -P "$CACHE"/lib/lib*.so* "$pkg/lib/"
cp "$CACHE/llama.cpp-commit" "$pkg/lib/llama.cpp-commit"
"$VENV/bin/python" - <<'PY'
import llama_cpp
llama_cpp.llama_backend_init()
info = llama_cpp.llama_print_system_info().decode()
print(f"install_llama_cpp: llama-cpp-python {llama_cpp.__version__} loads ({info.split('|')[0].strip()} ...)")
PY
echo "install_llama_cpp: done in $(( $(date +%s) - start )) s"
