#!/usr/bin/env bash
# Runs one ctest-style command test under Bazel (third_party/bazel/defs.bzl,
# llamapro_command_test): ctest_command.sh SKIP_CODE COMMAND [ARGS...].
# Exit code SKIP_CODE ("none": no such code) is ctest's SKIP_RETURN_CODE: the
# test passes, and the log's last line says it was skipped, which
# scripts/bazel_test.sh reports.
set -uo pipefail
skip_code=$1
shift
"$@"
rc=$?
if [ "$skip_code" != none ] && [ "$rc" = "$skip_code" ]; then
  echo "[ctest_command] SKIPPED: $* exited with $rc (ctest's SKIP_RETURN_CODE)"
  exit 0
fi
exit "$rc"
