#!/usr/bin/env bash
# The test command (README, .ci/run): setup, build, every ctest test (unit,
# integration; cuda tests skip without a GPU), the Bazel build and tests
# (scripts/bazel_test.sh), a short libFuzzer run of the safetensors header
# parser, then the linters (scripts/lint.sh). Extra arguments go to ctest
# (e.g. -L unit).
#
# Environment: LLAMAPRO_BUILD_DIR (default build/), LLAMAPRO_FUZZ_SECONDS
# (default 20; 0 skips the fuzz run), LLAMAPRO_BAZEL (default 1; 0 skips the
# Bazel run), LLAMAPRO_LINT (all: clang-format and
# clang-tidy, the default; format: clang-format only; 0: none), and those of
# setup.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
start=$(date +%s)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
build="${LLAMAPRO_BUILD_DIR:-$root/build}"
(cd "$build" && ctest --output-on-failure -j"$(nproc)" "$@")
# The Bazel build beside CMake: every non-CUDA target and test again, offline,
# and a check that Bazel runs the tests ctest runs (docs/build.md, "Bazel").
if [ "${LLAMAPRO_BAZEL:-1}" != 0 ]; then
  "$root/scripts/bazel_test.sh"
fi
if [ "${LLAMAPRO_FUZZ_SECONDS:-20}" != 0 ]; then
  "$root/scripts/fuzz.sh" "${LLAMAPRO_FUZZ_SECONDS:-20}"
fi
case "${LLAMAPRO_LINT:-all}" in
  0) ;;
  format) "$root/scripts/lint.sh" --format-only ;;
  *) "$root/scripts/lint.sh" ;;
esac
echo "[test] all passed in $(( $(date +%s) - start )) s"
