#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and
# runs each for SECONDS (default 60), starting from the seed corpus in
# tests/fuzz/corpus/. New inputs found go to build-fuzz/corpus-<target>/;
# a crash leaves crash-* there and fails the script.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=env.sh
source "$root/scripts/env.sh"
seconds="${1:-60}"
if ! command -v clang++ >/dev/null; then
  echo "[fuzz] clang++ not found: skipping (scripts/setup.sh installs it)" >&2
  exit 0
fi
build="${LLAMAPRO_FUZZ_BUILD_DIR:-$root/build-fuzz}"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLLAMAPRO_FUZZ=ON -DLLAMAPRO_CUDA=OFF -DLLAMAPRO_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target safetensors_fuzz
for target in safetensors_fuzz; do
  corpus="$build/corpus-$target"
  mkdir -p "$corpus"
  echo "[fuzz] $target for ${seconds}s"
  log="$build/$target.log"
  if ! "$build/tests/fuzz/$target" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="$corpus/" "$corpus" "$root/tests/fuzz/corpus/$target" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[fuzz] $target failed; inputs that fail are in $corpus (log: $log)" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^#[0-9]+ +DONE' "$log" | sed "s/^/[fuzz] $target: /"
done
