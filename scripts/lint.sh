#!/usr/bin/env bash
# Checks formatting (.clang-format) and, unless --format-only, runs clang-tidy
# (.clang-tidy) over every C++ source, using build/compile_commands.json.
# Exits non-zero on any finding. `scripts/lint.sh --fix` reformats instead.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mode="${1:-all}"
mapfile -t sources < <(git ls-files '*.cc' '*.h' '*.cu' '*.cuh')
if [ "$mode" = --fix ]; then
  clang-format -i "${sources[@]}"
  exit 0
fi
clang-format --dry-run -Werror "${sources[@]}"
echo "[lint] clang-format: ${#sources[@]} files clean"
[ "$mode" = --format-only ] && exit 0
build="${LLAMAPRO_BUILD_DIR:-$root/build}"
[ -f "$build/compile_commands.json" ] || "$root/scripts/build.sh" >/dev/null
mapfile -t units < <(git ls-files '*.cc' | grep -v '^tests/fuzz/')
# One unit per clang-tidy process: units take 2 to 30 s each, and batches of
# several left one core idle at the end while the other finished a batch.
out=$(printf '%s\n' "${units[@]}" | xargs -P "$(nproc)" -n 1 clang-tidy -p "$build" --quiet 2>/dev/null |
  grep -E 'warning:|error:' || true)
if [ -n "$out" ]; then
  echo "$out" >&2
  echo "[lint] clang-tidy: findings above" >&2
  exit 1
fi
echo "[lint] clang-tidy: ${#units[@]} translation units clean"
