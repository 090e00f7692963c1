#!/usr/bin/env bash
# One unattended check of the CUDA kernels on a GPU machine with no network, whose python3 already
# has torch (any recent version): builds tat_ext against that torch, runs the CUDA tests,
# compute-sanitizer memcheck + racecheck on a small forward+backward, the device-to-device copy
# bandwidth ceiling and bench/bench_act.py on CUDA. Writes to OUTDIR (8 files, no subfolders):
#   env.txt        GPU, driver, versions, step status
#   build.log      the extension build
#   tests.log      pytest (CUDA tests, CPU suite, build checks)
#   sanitizer.log  memcheck and racecheck
#   copy_bw.json   copy bandwidth (bytes read + written per second)
#   bench.log      bench_act.py's table; bench.json its results
#   summary.md     step table, test counts, sanitizer verdicts, benchmark table vs the goals
# Every step has a timeout and the whole run a deadline (GPU_CHECK_BUDGET_S, default 460 s, so
# it ends within 8 minutes on an H100); a failing step is recorded and the next one runs.
# Exit status: the number of failed steps.
#
#   bash bench/gpu_check.sh OUTDIR
#   GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh OUTDIR   # no GPU: skip the GPU steps, still
#                                                        # write env.txt and summary.md
# PYTHON selects the interpreter (default python3).
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
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bench/*.py import tat_ext from here
dry="${GPU_CHECK_DRY_RUN:-0}"
budget="${GPU_CHECK_BUDGET_S:-460}"
start=$SECONDS
steps_tsv="$(mktemp)"  # name, status, seconds, log (kept out of OUTDIR: at most 8 files there)
trap 'rm -f "$steps_tsv"' EXIT
failed=0

# run_step NAME LIMIT_S LOG CMD...: runs CMD with at most LIMIT_S seconds (less when the deadline
# is nearer), appending its output to OUTDIR/LOG; records ok / FAIL(rc) / TIMEOUT / skipped.
run_step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local left=$((budget - (SECONDS - start)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$dry" = "1" ]; then
    echo "== [dry run] $name (limit ${limit}s): ${*%%$'\n'*}"
    printf '%s\tskipped (dry run)\t0\t%s\n' "$name" "$log" >>"$steps_tsv"
    return 0
  fi
  if [ "$limit" -lt 15 ]; then
    echo "== $name: skipped, ${left}s left of the ${budget}s budget"
    printf '%s\tskipped (no time left)\t0\t%s\n' "$name" "$log" >>"$steps_tsv"
    failed=$((failed + 1))
    return 1
  fi
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS rc status
  {
    echo "### $name: $*"
    timeout --kill-after=10 "$limit" "$@"
  } >>"$out/$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT after ${limit}s" ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  echo "   $status in $((SECONDS - t0))s -> $log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$log" >>"$steps_tsv"
  [ $rc -eq 0 ] || failed=$((failed + 1))
  return $rc
}

# ---- environment -------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  echo "nvcc: $(command -v nvcc || echo not found) $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*')"
  echo "compute-sanitizer: $(command -v compute-sanitizer || echo not found)"
  "$py" -c 'import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu available:", torch.cuda.is_available())' 2>&1
} >"$out/env.txt"
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
echo "GPU: ${gpu_name:-none found}"
cat "$out/env.txt"

# ---- build ---------------------------------------------------------------------------------
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  export CUDA_HOME
fi
export TAT_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
# In place (tat_ext/_C*.so next to the sources, found through PYTHONPATH) against this python's
# torch; pip's editable install is the fallback for setuptools that refuse setup.py commands.
# shellcheck disable=SC2016  # expanded by the inner bash, $0 = the python
build_cmd='"$0" setup.py build_ext --inplace || "$0" -m pip install --no-build-isolation --no-deps -e .
"$0" -c "import tat_ext._C as c; assert c.with_cuda, \"built without CUDA\"; print(\"with_cuda:\", c.with_cuda)"'
run_step build 240 build.log bash -c "$build_cmd" "$py"
built=$?

# ---- tests, sanitizers ---------------------------------------------------------------------------
if [ $built -eq 0 ] || [ "$dry" = "1" ]; then
  run_step tests 200 tests.log "$py" -m pytest -x -q -rs -p no:cacheprovider \
    tests/test_trelu_cuda.py tests/test_trelu.py tests/test_cuda_build.py
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # every tensor its own allocation: overruns are caught
  run_step memcheck 90 sanitizer.log compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$py" bench/sanitize_small.py
  # racecheck watches shared memory (the bias-gradient reductions): two dtypes cover it.
  run_step racecheck 90 sanitizer.log compute-sanitizer --tool racecheck --error-exitcode 9 \
    "$py" bench/sanitize_small.py --dtypes float32,bfloat16
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
fi

# ---- copy bandwidth ceiling ------------------------------------------------------------------
read -r -d '' copy_bw_py <<'EOF'
import json, statistics, sys, torch
n = 1 << 30  # 1 GiB source, 1 GiB destination: far beyond L2
src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
dst = torch.empty_like(src)
for _ in range(3):
    dst.copy_(src)
times = []
for _ in range(30):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); dst.copy_(src); b.record(); b.synchronize()
    times.append(a.elapsed_time(b) / 1e3)
gbs = [2 * n / t / 1e9 for t in times]
res = dict(gpu=torch.cuda.get_device_name(0), bytes_per_copy=2 * n, reps=len(times),
           median_gbs=statistics.median(gbs), best_gbs=max(gbs))
json.dump(res, open(sys.argv[1], "w"), indent=1)
print(res)
EOF
run_step copy_bw 40 bench.log "$py" -c "$copy_bw_py" "$out/copy_bw.json"

# ---- benchmark ------------------------------------------------------------------------------
if [ $built -eq 0 ] || [ "$dry" = "1" ]; then
  run_step bench 170 bench.log "$py" -m tat_ext bench --device cuda --preset gpu --time-budget 100 \
    --no-progress --out "$out"
fi

# ---- summary --------------------------------------------------------------------------------
"$py" - "$out" "$steps_tsv" "$gpu_name" <<'EOF'
import json, os, re, sys
out, steps_tsv, gpu = sys.argv[1], sys.argv[2], sys.argv[3] or "no GPU found"

def read(name):
    try:
        with open(os.path.join(out, name)) as f:
            return f.read()
    except OSError:
        return ""

lines = [f"# gpu_check: {gpu}", ""]
env = read("env.txt").strip()
lines += ["```", env, "```", "", "| step | status | seconds | log |", "|---|---|---|---|"]
for row in open(steps_tsv):
    lines.append("| " + " | ".join(row.rstrip("\n").split("\t")) + " |")
lines.append("")
tests = re.findall(r"^.*\b(?:passed|failed|error)\b.* in [0-9.]+s.*$", read("tests.log"), re.M)
lines.append(f"**tests:** {tests[-1].strip('= ') if tests else 'no pytest summary'}")
san = read("sanitizer.log")
verdicts = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: .*", san)
lines.append(f"**sanitizer:** {'; '.join(verdicts) if verdicts else 'no summary line'}")
try:
    bw = json.loads(read("copy_bw.json"))
    lines.append(f"**copy bandwidth (read+write):** median {bw['median_gbs']:.0f} GB/s, "
                 f"best {bw['best_gbs']:.0f} GB/s")
except (ValueError, KeyError):
    lines.append("**copy bandwidth:** not measured")
lines.append("")
try:
    bench = json.loads(read("bench.json"))
except ValueError:
    bench = None
if bench:
    lines += [f"bench_act.py ({bench.get('machine')}, torch {bench.get('torch')}; its copy ceiling "
              f"{bench.get('copy_ceiling_gbs', 0):.0f} GB/s). Goals for >= 64 MB: fwd >= 90% and bwd "
              ">= 85% of the ceiling; fwd+bwd >= 1.1x compile and >= 3x eager.", "",
              "| dtype | layout | MB | pass | fused ms | eager ms | compile ms | GB/s | % ceil "
              "| x eager | x compile | goal |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in bench.get("results", []):
        ms, xc = r["ms"], r.get("speedup_vs_compile")
        goal = ""
        if r["mb"] >= 64:
            if r["phase"] == "fwd":
                ok = r["pct_ceiling"] >= 90
            elif r["phase"] == "bwd":
                ok = r["pct_ceiling"] >= 85
            else:
                ok = r["speedup_vs_eager"] >= 3 and (xc is None or xc >= 1.1)
            goal = "met" if ok else "MISSED"
        fmt = lambda v: "-" if v is None else f"{v:.3f}"
        lines.append(f"| {r['dtype']} | {r['layout']} | {r['mb']:.0f} | {r['phase']} | "
                     f"{fmt(ms.get('fused'))} | {fmt(ms.get('eager'))} | {fmt(ms.get('compile'))} | "
                     f"{r['fused_gbs']:.0f} | {r['pct_ceiling']:.1f} | {r['speedup_vs_eager']:.2f} | "
                     f"{'-' if xc is None else f'{xc:.2f}'} | {goal} |")
else:
    lines.append("**bench:** no bench.json (see bench.log for any rows printed before it stopped)")
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

echo "== done in $((SECONDS - start))s: $failed failed step(s); results in $out"
exit "$failed"
