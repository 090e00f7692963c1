#!/usr/bin/env bash
# One unattended check of the CUDA kernels on a GPU machine with no network, whose python3 already
# has a CUDA build of torch: builds tat_ext in place against THAT torch, runs the CUDA tests
# (every failure reported), compute-sanitizer memcheck, initcheck and racecheck on a small
# forward+backward, `tat-ext verify` (the kernel-vs-reference grid) and `tat-ext bench` on CUDA.
#
#   bash bench/gpu_check.sh OUTDIR
#   GPU_CHECK_DRY_RUN=1    bash bench/gpu_check.sh OUTDIR  # print the plan; run nothing
#   GPU_CHECK_BUILD_ONLY=1 bash bench/gpu_check.sh OUTDIR  # the build alone (nvcc, no GPU)
#
# PYTHON selects the interpreter (default python3); CUDA_HOME, if set, must be a toolkit root
# (else setup.py finds one: /usr/local/cuda, or the root of the nvcc on PATH, wrapper or not).
# OUTDIR gets at most 8 files, no subfolders, each written as its step runs:
#   env.txt        GPU, driver, versions
#   summary.md     step table, test counts, sanitizer verdicts, bandwidth, benchmark vs goals
#                  (rewritten after every step: a run cut short still leaves one)
#   build.log  tests.log (pytest, then tat-ext verify)  sanitizer.log  bench.log
#   bench/bench.json, model/bench.json   tat-ext bench's results (activation and fixed cost per
#                                        call; training step), rewritten after each configuration
# Every step has a time limit, and the limits sum to less than the budget (GPU_CHECK_BUDGET_S,
# default 480 s: the whole run ends within 8 minutes); a step also stops at the deadline. A
# failing step is recorded and the next one runs. Exit status: the number of failed steps.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out="$1"
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.." || exit 2
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # tests and bench/*.py import tat_ext here
dry="${GPU_CHECK_DRY_RUN:-0}"
build_only="${GPU_CHECK_BUILD_ONLY:-0}"
budget="${GPU_CHECK_BUDGET_S:-480}"
start=$SECONDS
steps_tsv="$(mktemp)"  # name, status, seconds, log (kept out of OUTDIR: at most 8 files there)
trap 'rm -f "$steps_tsv"' EXIT
failed=0

# ---- the steps and their time limits (seconds) ----------------------------------------------
# To add a step, give it a limit here (keep the sum within the budget, e.g. by taking time from
# bench), list it in `steps`, and add its run_step call below.
declare -A limit=(
  [build]=95 [tests]=110 [verify]=35 [memcheck]=35 [initcheck]=20 [racecheck]=20 [bench]=75
  [bench_model]=70
)
steps="build tests verify memcheck initcheck racecheck bench bench_model"
total=0 limits_text=""
for s in $steps; do
  total=$((total + limit[$s]))
  limits_text+="$s=${limit[$s]} "
done
if [ "$total" -gt $((budget - 20)) ]; then
  echo "the step limits sum to ${total}s, more than the ${budget}s budget less 20s" >&2
  exit 2
fi
# Build only (no GPU: a check of the build path, e.g. on a 2-core machine): all the time to it.
[ "$build_only" = "1" ] && limit[build]=$((budget - 20))

write_summary() {
  "$py" bench/gpu_check_summary.py "$out" "$steps_tsv" || echo "(summary.md not updated)" >&2
}

record() {  # NAME STATUS SECONDS LOG
  printf '%s\t%s\t%s\t%s\n' "$@" >>"$steps_tsv"
  write_summary
}

# run_step NAME LOG CMD...: runs CMD within limit[NAME] seconds (less when the deadline is
# nearer), appending its output to OUTDIR/LOG; records ok / FAIL (exit N) / TIMEOUT / skipped.
run_step() {
  local name="$1" log="$2"
  shift 2
  local lim="${limit[$name]}" left=$((budget - (SECONDS - start) - 10))  # 10 s: --kill-after
  [ "$lim" -gt "$left" ] && lim=$left
  if [ "$dry" = "1" ] || { [ "$build_only" = "1" ] && [ "$name" != "build" ]; }; then
    echo "== [skipped] $name (limit ${lim}s) -> $log: ${*%%$'\n'*}"
    record "$name" "skipped ($([ "$dry" = "1" ] && echo dry run || echo build only))" 0 "$log"
    return 0
  fi
  if [ "$lim" -lt 10 ]; then
    echo "== $name: skipped, $((budget - (SECONDS - start)))s left of the ${budget}s budget"
    record "$name" "skipped (no time left)" 0 "$log"
    failed=$((failed + 1))
    return 1
  fi
  echo "== $name (limit ${lim}s)"
  local t0=$SECONDS rc status
  {
    echo "### $name: $*"
    timeout --kill-after=10 "$lim" "$@"
  } >>"$out/$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT after ${lim}s" ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  echo "   $status in $((SECONDS - t0))s -> $log"
  record "$name" "$status" "$((SECONDS - t0))" "$log"
  [ $rc -eq 0 ] || failed=$((failed + 1))
  return $rc
}

# ---- environment -------------------------------------------------------------------------
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "gpu: ${gpu_name:-none found}"
  if [ -n "$gpu_name" ]; then
    nvidia-smi --query-gpu=driver_version,compute_cap,memory.total,clocks.max.sm,clocks.max.mem \
      --format=csv
  fi
  echo "nvcc: $(command -v nvcc || echo not found) $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*')"
  echo "compute-sanitizer: $(command -v compute-sanitizer || echo not found)"
  echo "cores: $(nproc 2>/dev/null)"
  "$py" -c 'import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu available:", torch.cuda.is_available())' 2>&1
  echo "step limits (s): ${limits_text}(sum ${total} of the ${budget} s budget)"
} >"$out/env.txt"
echo "== tat_ext gpu_check -> $out"
cat "$out/env.txt"

# ---- build: in place, against this python's torch -------------------------------------------
# Old outputs first: on a reused machine, a stale tat_ext/_C*.so would otherwise be imported
# (and tested) after a failed build.
# The GPU's own architecture when there is one (9.0 on H100/H200), else sm_90.
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1)"
export TAT_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${arch:-9.0}}"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
build_and_check() {  # PYTHON
  rm -rf build tat_ext/_C*.so || return 1
  "$1" setup.py build_ext --inplace || return 1
  "$1" -c 'import os, torch, tat_ext._C as c
assert c.with_cuda, "built without CUDA kernels"
assert os.path.dirname(os.path.abspath(c.__file__)) == os.path.abspath("tat_ext"), c.__file__
print("built", c.__file__, "| torch", torch.__version__, "| with_cuda", c.with_cuda)'
}
export -f build_and_check
run_step build build.log bash -c 'build_and_check "$1"' build "$py"
built=$?

# ---- tests, sanitizers ----------------------------------------------------------------------
if [ $built -ne 0 ] && [ "$dry" != "1" ] && [ "$build_only" != "1" ]; then
  for s in $steps; do [ "$s" = build ] || record "$s" "skipped (build failed)" 0 -; done
else
  # -v: a line per test, kept even if the step times out; no -x: report every failure.
  # (tests/test_cuda_build.py needs cuobjdump, which this machine may lack; CI runs it.)
  run_step tests tests.log "$py" -m pytest -v -rfEs --tb=short -p no:cacheprovider \
    tests/test_trelu_cuda.py
  # The full kernel-vs-reference grid on every CUDA device (the CPU grid is CI's job).
  run_step verify tests.log "$py" -m tat_ext verify --device cuda --no-progress
  # Only tat_ext's kernels are instrumented; without the caching allocator every tensor is its
  # own allocation, so an access past its end or a read of memory nobody wrote is caught.
  sanitize=(compute-sanitizer --error-exitcode 9 --print-limit 20 --kernel-name kns=tat_ext)
  run_step memcheck sanitizer.log env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "${sanitize[@]}" --tool memcheck "$py" bench/sanitize_small.py
  run_step initcheck sanitizer.log env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "${sanitize[@]}" --tool initcheck "$py" bench/sanitize_small.py --dtypes float32,bfloat16
  # racecheck watches shared memory (the bias-gradient reductions): two dtypes cover it.
  run_step racecheck sanitizer.log "${sanitize[@]}" --tool racecheck "$py" \
    bench/sanitize_small.py --dtypes float32,bfloat16
fi

# ---- benchmark: tat-ext bench's gpu preset, in two runs so that neither starves the other:
# the fixed cost per call and the activation at 64-256 MB (fp32/bf16, both layouts, each timed
# against a same-size copy), then the training step of a vanilla TAT ResNet-50 (SGD, Adam, K-FAC). Each JSON is
# rewritten after every configuration; report.txt duplicates bench.log and is dropped (OUTDIR
# holds at most 8 files).
bench_run() {  # NAME PARTS BUDGET_S [MORE BENCH OPTIONS]
  rm -rf "$out/$1"
  "$py" -m tat_ext bench --device cuda --preset gpu --part "$2" --time-budget "$3" \
    --no-progress --no-plots --out "$out/$1" "${@:4}"
  local rc=$?
  rm -f "$out/$1/report.txt"
  return $rc
}
export -f bench_run
export out py
if [ $built -eq 0 ] || [ "$dry" = "1" ] || [ "$build_only" = "1" ]; then
  run_step bench bench.log bash -c 'bench_run "$@"' bench bench overhead,activation \
    $((limit[bench] - 20))
  # SGD's step first, then Adam's and K-FAC's (curvature every 10 steps; issue 14's cost) while
  # the time budget lasts
  run_step bench_model bench.log bash -c 'bench_run "$@"' bench model model \
    $((limit[bench_model] - 25)) --optimizers sgd,adam,kfac-c10
fi

write_summary
echo "== done in $((SECONDS - start))s: $failed failed step(s); summary: $out/summary.md"
exit "$failed"
