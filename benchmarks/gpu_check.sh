#!/usr/bin/env bash
# The GPU check, in one call, on a machine with one H100/H200 (python3 with PyTorch for CUDA,
# CuPy, nvcc, compute-sanitizer; no network needed): build fastopt for sm_90 only, run every
# cuda-marked test with FASTOPT_REQUIRE_CUDA=1 (a missing engine fails) and a per-test timeout,
# a compute-sanitizer memcheck smoke test, and the CUDA benchmark. Logs and summary.json go
# under the folder given as $1 (build, tests, sanitizer and bench logs, two bench JSON reports,
# summary.json: 7 files; the summary rewritten after each stage); 9 minutes at most (the stages'
# limits below, 515 s, and 5 s of grace after each). Exits with the number of failed stages.
#   usage: bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)  # absolute: the stages run from /tmp
cd "$(dirname "$0")/.."
src=$PWD
py=${PYTHON:-python3}
# The CUDA tools where a bare PATH lacks them; all cores for the build; Python's lines survive a kill.
export PATH="$PATH:/usr/local/cuda/bin" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PYTHONUNBUFFERED=1
stages=()
failed=0

# stage NAME LIMIT_S CMD...: runs CMD with its output in $out/NAME.log (SIGTERM at the limit,
# SIGKILL 5 s later); records its rc and seconds in summary.json.
stage() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (at most ${limit}s)"
  timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  stages+=("{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
  printf '[%s]\n' "$(IFS=,; echo "${stages[*]}")" >"$out/summary.json"
  echo "   rc $rc in $((SECONDS - t0))s; last lines:"
  tail -n 4 "$out/$name.log" | sed 's/^/   /'
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  return $rc
}

# The build log opens with the machine's versions. The machine's torch stays: no dependencies
# installed, no build isolation (no network).
stage build 190 sh -c '{ uname -r; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    nvcc --version | tail -n 1; cmake --version | head -n 1; ninja --version; nproc
    "$0" -m pip list 2>/dev/null | grep -iE "^(torch|cupy|numpy|ml.dtypes|pybind11|scikit.build.core|pytest) "; } 2>&1
  exec "$0" -m pip install -v --no-deps --no-build-isolation --disable-pip-version-check \
    --config-settings=cmake.define.FASTOPT_CUDA=ON --config-settings=cmake.define.FASTOPT_CUDA_ARCHS=90-real .' "$py" ||
  exit "$failed"
cd /tmp  # import the installed package, not the source tree
export FASTOPT_REQUIRE_CUDA=1 FASTOPT_TEST_TIMEOUT=45 PYTHONPATH="$src/benchmarks"
# -v names each test as it starts, and faulthandler prints the stacks of one stuck past 45 s (a
# CUDA call that never returns takes no Python signal: the stage's kill then leaves no report).
# Kernels load eagerly (a lazy first launch synchronises: the no-wait tests would see it).
stage tests 165 env CUDA_MODULE_LOADING=EAGER "$py" -m pytest -v -rfE --tb=short --durations=20 -o faulthandler_timeout=45 -p no:cacheprovider \
  -p test_timeout -m cuda "$src/tests"
# rc 99: memcheck found errors; another rc: the smoke test or the tool failed (compute-sanitizer
# refuses the GPU under gVisor, seen on H200 machines).
stage sanitizer 115 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
  --print-limit 20 "$py" "$src/benchmarks/gpu_smoke.py" ||
  { grep -q "Device not supported" "$out/sanitizer.log" && echo "   compute-sanitizer cannot use this GPU here (not fastopt's fault)"; }
# The benchmark's JSON reports apart from its progress lines (in bench.log); the bf16 run also
# where the fp32 one failed.
stage bench 45 sh -c "'$py' -m fastopt bench --device cuda --optimizers adam,adamw,sgd,lamb --json >'$out/bench_fp32.json'
  r=\$?; '$py' -m fastopt bench --device cuda --optimizers adam,adamw --dtype bfloat16 --json >'$out/bench_bf16.json' &&
  exit \$r"
cat "$out/summary.json"
exit "$failed"
