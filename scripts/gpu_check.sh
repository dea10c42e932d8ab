#!/usr/bin/env bash
# The CUDA check for a session that is lent a GPU machine (docs/gpu.md).
#
#   scripts/gpu_check.sh prepare   here (nvcc, our Debian packages, no GPU):
#       builds every CUDA test binary listed in tests/CMakeLists.txt
#       (LLAMAPRO_CUDA_TESTS), checks that each needs no shared library
#       beyond glibc, libstdc++, libgcc_s and libcublasLt, and copies them to
#       .gpu/bin/ (git-ignored; the device tool carries it: carry [".gpu"]).
#   scripts/gpu_check.sh run       there (GPU, PyTorch's venv, none of our
#       packages): points LD_LIBRARY_PATH at the NVIDIA wheels' lib folders,
#       runs each binary with its log and XML under $OUT (default
#       .gpu/out), and prints a table last. Exit 1 if any test failed or a
#       binary did not finish.
#   scripts/gpu_check.sh           run where nvidia-smi exists, else prepare.
#
# bench/gpu_train_bench is not built yet; `run` says so in its table.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gpu_dir="$root/.gpu"

# Test names (cast ops ...) from `set(LLAMAPRO_CUDA_TESTS ...)`, the one list.
cuda_tests() {
  sed -n 's/^ *set(LLAMAPRO_CUDA_TESTS \(.*\))$/\1/p' "$root/tests/CMakeLists.txt"
}

prepare() {
  local build="${LLAMAPRO_BUILD_DIR:-$root/build}"
  local tests targets=() name
  tests=$(cuda_tests)
  if [[ -z "$tests" ]]; then
    echo "gpu_check: no LLAMAPRO_CUDA_TESTS list in tests/CMakeLists.txt" >&2
    exit 2
  fi
  for name in $tests; do targets+=("cuda_${name}_test"); done
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || {
    echo "gpu_check: prepare needs nvcc (CUDA 13); none found" >&2
    exit 2
  }
  LLAMAPRO_BUILD_DIR="$build" LLAMAPRO_CMAKE_ARGS="${LLAMAPRO_CMAKE_ARGS:-} -DLLAMAPRO_CUDA=ON" \
    "$root/scripts/build.sh" --target "${targets[@]}"

  rm -rf "${gpu_dir:?}/bin"
  mkdir -p "$gpu_dir/bin"
  local target lib bad=0
  for target in "${targets[@]}"; do
    # Direct dependencies only: what the GPU machine must provide.
    while read -r lib; do
      case "$lib" in
        libc.so.6 | libm.so.6 | libstdc++.so.6 | libgcc_s.so.1 | ld-linux-x86-64.so.2 | \
          libcublasLt.so.13) ;;
        *)
          echo "gpu_check: $target needs $lib, which the GPU machine does not have" >&2
          bad=1
          ;;
      esac
    done < <(readelf -d "$build/tests/$target" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    # Debug info is not needed there; the carry limit is 64 MiB.
    objcopy --strip-debug "$build/tests/$target" "$gpu_dir/bin/$target"
  done
  if ((bad)); then exit 1; fi
  {
    echo "commit: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- kernels tests || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "nvcc: $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    echo "tests: ${targets[*]}"
    echo "needs: glibc >= $(objdump -T "$gpu_dir"/bin/* | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)," \
      "libstdc++ with $(objdump -T "$gpu_dir"/bin/* | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1)"
  } >"$gpu_dir/MANIFEST"
  if ! git -C "$root" check-ignore -q "$gpu_dir/bin"; then
    echo "gpu_check: warning: .gpu/ is not git-ignored" >&2
  fi
  cat "$gpu_dir/MANIFEST"
  du -sh "$gpu_dir/bin"
  echo "prepared: now one device call, carry [\".gpu\"], command: scripts/gpu_check.sh run"
}

run() {
  local out="${OUT:-$gpu_dir/out}"
  mkdir -p "$out"
  if [[ ! -d "$gpu_dir/bin" ]]; then
    echo "gpu_check: no $gpu_dir/bin: run 'scripts/gpu_check.sh prepare' here first and carry .gpu" >&2
    exit 2
  fi
  [[ -f "$gpu_dir/MANIFEST" ]] && cp "$gpu_dir/MANIFEST" "$out/MANIFEST"

  local gpu="unknown (no nvidia-smi)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
      head -1 || echo "nvidia-smi failed")
  fi

  # cuBLASLt (and later NCCL) come from the NVIDIA wheels of PyTorch's venv.
  local dirs=() d
  shopt -s nullglob
  for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib; do dirs+=("$d"); done
  shopt -u nullglob
  if ((${#dirs[@]})); then
    LD_LIBRARY_PATH="$(
      IFS=:
      echo "${dirs[*]}"
    )${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
  fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >"$out/environment.txt"

  local rows=() failed_any=0 bin name log rc start seconds passed failed skipped status missing
  for bin in "$gpu_dir"/bin/cuda_*_test; do
    name=$(basename "$bin")
    log="$out/$name.log"
    missing=$(ldd "$bin" 2>&1 | grep 'not found' | awk '{print $1}' | paste -sd, || true)
    start=$(date +%s)
    rc=0
    timeout 240 "$bin" --gtest_color=no --gtest_output="xml:$out/$name.xml" >"$log" 2>&1 || rc=$?
    seconds=$(($(date +%s) - start))
    # One line per finished test: "[       OK ] Suite.Name (12 ms)".
    passed=$(grep -cE '^\[ +OK \] .* \([0-9]+ ms\)$' "$log" || true)
    failed=$(grep -cE '^\[ +FAILED +\] .* \([0-9]+ ms\)$' "$log" || true)
    skipped=$(grep -cE '^\[ +SKIPPED +\] .* \([0-9]+ ms\)$' "$log" || true)
    if [[ -n "$missing" ]]; then
      status="missing $missing"
    elif ((rc == 124)); then
      status="timed out"
    elif ((rc != 0 && failed == 0)); then
      status="crashed (exit $rc)"
    elif ((failed > 0)); then
      status="FAILED"
    elif ((skipped > 0)) && [[ "$gpu" != unknown* ]]; then
      status="skipped on a GPU machine (no device seen?)"
    else
      status="ok"
    fi
    [[ "$status" == ok ]] || failed_any=1
    rows+=("$(printf '%-22s %6s %6s %7s %5ss  %s' "$name" "$passed" "$failed" "$skipped" "$seconds" "$status")")
  done

  {
    echo
    echo "GPU: $gpu"
    echo "logs: $out"
    printf '%-22s %6s %6s %7s %6s  %s\n' binary passed failed skipped time status
    printf '%s\n' "${rows[@]}"
    echo "gpu_train_bench: not built yet (issue 6); no benchmark run"
  } | tee "$out/summary.txt"
  return "$failed_any"
}

case "${1:-auto}" in
  prepare) prepare ;;
  run) run ;;
  auto) if command -v nvidia-smi >/dev/null; then run; else prepare; fi ;;
  *)
    echo "usage: scripts/gpu_check.sh [prepare|run]" >&2
    exit 2
    ;;
esac
