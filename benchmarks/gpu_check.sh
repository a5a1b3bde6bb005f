#!/usr/bin/env bash
# The GPU check, in one call, on a machine with one H100/H200 (python3 with PyTorch for CUDA,
# CuPy, nvcc, compute-sanitizer; no network needed): build fastopt for sm_90 only, run every
# cuda-marked test with FASTOPT_REQUIRE_CUDA=1 (a missing engine fails) and a per-test timeout,
# a compute-sanitizer memcheck smoke test, and the CUDA benchmark. Logs and summary.json go
# under the folder given as $1 (build, tests, sanitizer and bench logs, two bench JSON reports,
# summary.json: 7 files); 9 minutes at most (each stage's limit below).
#   usage: bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
stages=()

# stage NAME LIMIT_S CMD...: runs CMD with its output in $out/NAME.log; records rc and seconds.
stage() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  stages+=("{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
  echo "   rc $rc in $((SECONDS - t0))s; last lines:"
  tail -n 4 "$out/$name.log" | sed 's/^/   /'
  return $rc
}

# The machine's torch stays: no dependencies installed, no build isolation (no network).
stage build 150 "$py" -m pip install -v --no-deps --no-build-isolation \
  --config-settings=cmake.define.FASTOPT_CUDA=ON --config-settings=cmake.define.FASTOPT_CUDA_ARCHS=90 . || {
  printf '[%s]\n' "$(IFS=,; echo "${stages[*]}")" >"$out/summary.json"
  exit 1
}
cd /tmp  # import the installed package, not the source tree
src=$OLDPWD
export FASTOPT_REQUIRE_CUDA=1 FASTOPT_TEST_TIMEOUT=120 PYTHONPATH="$src/benchmarks"
stage tests 180 "$py" -m pytest -q -p no:cacheprovider -p test_timeout -m cuda "$src/tests"
stage sanitizer 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
  "$py" "$src/benchmarks/gpu_smoke.py"
# The benchmark's JSON reports apart from its progress lines (in bench.log).
stage bench 80 sh -c "'$py' -m fastopt bench --device cuda --optimizers adam,adamw,sgd,lamb --json >'$out/bench_fp32.json' &&
  '$py' -m fastopt bench --device cuda --optimizers adam,adamw --dtype bfloat16 --json >'$out/bench_bf16.json'"
printf '[%s]\n' "$(IFS=,; echo "${stages[*]}")" >"$out/summary.json"
cat "$out/summary.json"
