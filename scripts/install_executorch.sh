#!/usr/bin/env bash
# Installs ExecuTorch (export and the prebuilt CPU runtime: portable kernels + XNNPACK) in a virtual environment of
# its own, for `hopscotch export --format executorch`'s .pte, the ExecuTorch tests (tests/test_executorch.py) and
# benchmark (benchmarks/bench_executorch.py):   bash scripts/install_executorch.sh [VENV]   (default .venv-executorch)
#
# The executorch wheel does not bundle torch but links against it (its runtime's pybindings load libtorch), so it
# needs a torch of its own choosing, not necessarily hopscotch's: torch 2.13.0+cpu here, with which its Llama export
# and runtime pass the tests. hopscotch's code never runs in this venv: `hopscotch export --format executorch
# --executorch-python VENV/bin/python` runs ExecuTorch's export there (hopscotch/export/executorch_pte.py), the tests
# and the benchmark run the .pte there through a subprocess.
#
# The venv is cached under ${HOPSCOTCH_CACHE:-~/.cache/hopscotch}/executorch/<versions>-<python>-<arch> and VENV is
# a symlink to it: a second run on the same machine only checks that it imports (seconds). Cold: about 2 minutes
# with pip's download cache warm (a 1.5 GB venv: torch, and coremltools / scikit-learn / pandas, which the
# executorch wheel requires).
# Environment: EXECUTORCH_VERSION (default 1.5.1), EXECUTORCH_TORCH (default 2.13.0+cpu), PYTHON (default python3),
# EXECUTORCH_TORCH_INDEX (an extra index for torch's +cpu wheels where the default index lacks them, e.g.
# https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cached_venv.sh

VENV=${1:-.venv-executorch}
VERSION=${EXECUTORCH_VERSION:-1.5.1}
TORCH=${EXECUTORCH_TORCH:-2.13.0+cpu}
PYTHON=${PYTHON:-python3}
pyver=$("$PYTHON" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
CACHE=${HOPSCOTCH_CACHE:-$HOME/.cache/hopscotch}/executorch/$VERSION-torch$TORCH-$pyver-$(uname -m)
start=$(date +%s)

extra=()
if [ -n "${EXECUTORCH_TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$EXECUTORCH_TORCH_INDEX"); fi
cached_venv install_executorch "$CACHE" "$VENV" "${extra[@]}" "torch==$TORCH" "executorch==$VERSION"
check_runtime install_executorch "$VENV" "$CACHE" <<'PY'
import importlib.metadata as m

from executorch.examples.models.llama.export_llama_lib import build_args_parser  # noqa: F401  (the export)
from executorch.runtime import Runtime

backends = Runtime.get().backend_registry.registered_backend_names
assert "XnnpackBackend" in backends, backends
versions = "  ".join(f"{p} {m.version(p)}" for p in ("executorch", "torch", "torchao"))
print(f"install_executorch: executorch imports, its runtime has {', '.join(backends)} ({versions})")
PY
echo "install_executorch: done in $(( $(date +%s) - start )) s ($VENV -> $CACHE)"
