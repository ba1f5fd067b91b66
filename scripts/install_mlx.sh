#!/usr/bin/env bash
# Installs MLX (its CPU build, mlx[cpu]) and mlx-lm in a virtual environment of its own, for the MLX tests
# (tests/test_mlx.py) and benchmark (benchmarks/bench_mlx.py):
#   bash scripts/install_mlx.sh [VENV]      (default .venv-mlx)
#
# mlx-lm loads a `hopscotch export --format decilm` directory as written (its nemotron-nas model). It needs no
# torch, but pins its own transformers (for tokenizers), so it gets a venv of its own; hopscotch's code never runs
# in it: the tests and the benchmark run MLX there through a subprocess and exchange token ids and results through
# files. On Linux, mlx[cpu] is MLX's CPU backend (mlx-cpu); on a Mac, `pip install mlx mlx-lm` gets the Metal one.
#
# The venv is cached under ${HOPSCOTCH_CACHE:-~/.cache/hopscotch}/mlx/<versions>-<python>-<arch> and VENV is a
# symlink to it: a second run on the same machine only checks that it imports (seconds). Cold: under a minute with
# pip's download cache warm (a 370 MB venv).
# Environment: MLX_VERSION (default 0.32.4), MLX_LM_VERSION (default 0.32.2), MLX_TRANSFORMERS (default 5.25.0,
# pinned so the venv is the same tomorrow), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cached_venv.sh

VENV=${1:-.venv-mlx}
MLX=${MLX_VERSION:-0.32.4}
MLX_LM=${MLX_LM_VERSION:-0.32.2}
TRANSFORMERS=${MLX_TRANSFORMERS:-5.25.0}
PYTHON=${PYTHON:-python3}
pyver=$("$PYTHON" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
CACHE=${HOPSCOTCH_CACHE:-$HOME/.cache/hopscotch}/mlx/$MLX-lm$MLX_LM-transformers$TRANSFORMERS-$pyver-$(uname -m)
start=$(date +%s)

cached_venv install_mlx "$CACHE" "$VENV" "mlx[cpu]==$MLX" "mlx-lm==$MLX_LM" "transformers==$TRANSFORMERS"
check_runtime install_mlx "$VENV" "$CACHE" <<'PY'
import importlib.metadata as m

import mlx.core as mx
from mlx_lm import load  # noqa: F401

x = mx.ones((2, 2)) @ mx.ones((2, 2))
assert x.sum().item() == 8.0, x
versions = "  ".join(f"{p} {m.version(p)}" for p in ("mlx", "mlx-lm", "transformers"))
print(f"install_mlx: mlx imports and computes on {mx.default_device()} ({versions})")
PY
echo "install_mlx: done in $(( $(date +%s) - start )) s ($VENV -> $CACHE)"
