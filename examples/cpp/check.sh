#!/usr/bin/env bash
# Builds the example against fastopt installed at PREFIX, runs train_digits and its Python twin
# (with the fastopt that `python` imports) and checks that they print the same lines, bit for
# bit. Prints the C++ run's output; exits non-zero, showing the diff, when the two differ.
#
# Usage: bash examples/cpp/check.sh PREFIX    (PYTHON=... to run another interpreter)
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 PREFIX (where fastopt was installed: cmake --install <build> --prefix PREFIX)" >&2
  exit 2
fi
prefix=$(cd "$1" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! { cmake -S "$here" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" &&
       cmake --build "$work/build"; } >"$work/build.log" 2>&1; then
  cat "$work/build.log" >&2
  echo "check.sh: building the example against $prefix failed" >&2
  exit 1
fi

"$work/build/train_digits" >"$work/cpp.txt"
"${PYTHON:-python}" "$here/train_digits.py" >"$work/py.txt"
cat "$work/cpp.txt"
if ! diff -u --label train_digits "$work/cpp.txt" --label train_digits.py "$work/py.txt"; then
  echo "check.sh: the C++ and Python runs differ" >&2
  exit 1
fi
echo "check.sh: train_digits.py printed the same lines"
