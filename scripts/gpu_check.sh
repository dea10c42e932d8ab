#!/usr/bin/env bash
# The CUDA check for a session that is lent a GPU machine (docs/gpu.md).
#
#   scripts/gpu_check.sh prepare   here (nvcc, our Debian packages, no GPU):
#       builds every CUDA test binary listed in tests/CMakeLists.txt
#       (LLAMAPRO_CUDA_TESTS and LLAMAPRO_CUDA_ENGINE_TESTS) and
#       bench/gpu_train_bench into ${LLAMAPRO_BUILD_DIR:-build}; copies them,
#       debug info stripped, to .gpu/bin/, and every shared library they need
#       that the GPU machine lacks (all but glibc, libstdc++, libgcc_s and the
#       NVIDIA libraries its PyTorch wheels bring: libcublasLt.so.13,
#       libcublas.so.13, libnccl.so.2) to .gpu/lib/, plus OpenBLAS and its
#       dependencies (cuda_train_step_test's CPU reference dlopens it).
#       OpenBLAS travels xz-compressed, and so do the next largest libraries
#       if .gpu/ would otherwise not fit the device tool's carry limit (64
#       MiB with the working tree). Prints the sizes. .gpu/ is git-ignored;
#       the device tool carries it: carry [".gpu"].
#   scripts/gpu_check.sh run       there (GPU, PyTorch's venv, none of our
#       packages): decompresses the carried libraries into a temporary
#       folder, points LD_LIBRARY_PATH at it, .gpu/lib and the NVIDIA
#       wheels' lib folders, runs each test binary, then gpu_train_bench
#       (--config 7b, then --config 1b with the time left), all within
#       ${LLAMAPRO_GPU_CHECK_SECONDS:-450} seconds, and prints a table last,
#       ending with the bench's 7B ratio line. Logs under $OUT (default
#       .gpu/out). Exit 1 if any test failed or a binary did not finish, 77 if
#       no GPU was seen (nothing was checked), else 0.
#   scripts/gpu_check.sh           run where nvidia-smi exists, else prepare.
#
# Environment: LLAMAPRO_BUILD_DIR (prepare), LLAMAPRO_GPU_CHECK_SECONDS and
# LLAMAPRO_GPU_BENCH_ARGS (extra gpu_train_bench flags, e.g. "--steps 3";
# run), OUT (run).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gpu_dir="$root/.gpu"
# The device tool carries at most 64 MiB: the working tree plus .gpu/.
carry_limit=$((64 * 1024 * 1024))

# Test names (cast ops ... train_step nccl) from the `set(LLAMAPRO_CUDA_TESTS
# ...)` and `set(LLAMAPRO_CUDA_ENGINE_TESTS ...)` lists.
cuda_tests() {
  sed -n 's/^ *set(LLAMAPRO_CUDA_\(ENGINE_\)\{0,1\}TESTS \(.*\))$/\2/p' "$root/tests/CMakeLists.txt" |
    tr '\n' ' '
}

# Libraries the GPU machine provides itself: glibc, the C++ runtime, and the
# NVIDIA libraries of PyTorch's wheels.
provided_lib() {
  case "$1" in
    linux-vdso.so.* | ld-linux-x86-64.so.* | libc.so.* | libm.so.* | libpthread.so.* | \
      libdl.so.* | librt.so.* | libresolv.so.* | libutil.so.* | libstdc++.so.* | libgcc_s.so.*) return 0 ;;
    libcublasLt.so.13 | libcublas.so.13 | libnccl.so.2) return 0 ;;
  esac
  return 1
}

# Copies into $1 every library the ELF files $2... need (transitively, as the
# dynamic loader here resolves them) that the GPU machine does not provide,
# symlinks followed, debug info stripped. Fails on a library not found here.
copy_needed_libs() {
  local dest="$1" file name arrow path rest missing=0
  shift
  for file in "$@"; do
    if [[ ! -f "$file" ]]; then
      echo "gpu_check: $file does not exist" >&2
      missing=1
      continue
    fi
    while read -r name arrow path rest; do
      [[ "$arrow" == "=>" ]] || continue
      provided_lib "$name" && continue
      if [[ "$path" == "not" ]]; then
        echo "gpu_check: $(basename "$file") needs $name, which is not found here" >&2
        missing=1
        continue
      fi
      [[ -f "$dest/$name" ]] && continue
      cp -L "$path" "$dest/$name"
      chmod u+w "$dest/$name"
      objcopy --strip-debug "$dest/$name"
    done < <(ldd "$file" 2>&1)
  done
  return "$missing"
}

# The OpenBLAS the build dlopens (kernels/CMakeLists.txt compiles its path in
# as LLAMAPRO_OPENBLAS_PATH; it is not a cache variable), else Debian's.
openblas_path() {
  local build="$1" path=""
  path=$(sed -n 's/^LLAMAPRO_OPENBLAS_PATH:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null | head -1)
  if [[ -z "$path" && -f "$build/build.ninja" ]]; then
    path=$(grep -o 'LLAMAPRO_OPENBLAS_PATH=\\"[^\\"]*' "$build/build.ninja" | head -1 | sed 's/.*\\"//')
  fi
  [[ -n "$path" && -e "$path" ]] || path=/usr/lib/x86_64-linux-gnu/libopenblas.so.0
  echo "$path"
}

bytes_of() { du -sb "$@" | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

prepare() {
  local build="${LLAMAPRO_BUILD_DIR:-$root/build}"
  local tests targets=() name
  tests=$(cuda_tests)
  if [[ -z "${tests// /}" ]]; then
    echo "gpu_check: no LLAMAPRO_CUDA_TESTS list in tests/CMakeLists.txt" >&2
    exit 2
  fi
  for name in $tests; do targets+=("cuda_${name}_test"); done
  targets+=(gpu_train_bench)
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || {
    echo "gpu_check: prepare needs nvcc (CUDA 13); none found" >&2
    exit 2
  }
  LLAMAPRO_BUILD_DIR="$build" LLAMAPRO_CMAKE_ARGS="${LLAMAPRO_CMAKE_ARGS:-} -DLLAMAPRO_CUDA=ON" \
    "$root/scripts/build.sh" --target "${targets[@]}"

  rm -rf "${gpu_dir:?}/bin" "${gpu_dir:?}/lib" "${gpu_dir:?}/out"
  mkdir -p "$gpu_dir/bin" "$gpu_dir/lib"
  local target binary lib bad=0 unexpected=()
  for target in "${targets[@]}"; do
    binary="$build/tests/$target"
    [[ "$target" == gpu_train_bench ]] && binary="$build/bench/$target"
    # Direct dependencies: anything beyond the runtime, Abseil and the NVIDIA
    # libraries is a new dependency that must travel; say so.
    while read -r lib; do
      provided_lib "$lib" && continue
      [[ "$lib" == libabsl_* ]] && continue
      unexpected+=("$target: $lib")
    done < <(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    # Debug info is not needed there; the carry limit is 64 MiB.
    objcopy --strip-debug "$binary" "$gpu_dir/bin/$target"
  done
  copy_needed_libs "$gpu_dir/lib" "$gpu_dir"/bin/* || bad=1

  # OpenBLAS, loaded at run time by the CPU reference (kernels/cpu/blas.cc
  # falls back to dlopen("libopenblas.so.0") through LD_LIBRARY_PATH).
  local openblas
  openblas=$(openblas_path "$build")
  cp -L "$openblas" "$gpu_dir/lib/libopenblas.so.0"
  chmod u+w "$gpu_dir/lib/libopenblas.so.0"
  objcopy --strip-debug "$gpu_dir/lib/libopenblas.so.0"
  copy_needed_libs "$gpu_dir/lib" "$gpu_dir/lib/libopenblas.so.0" || bad=1
  if ((bad)); then exit 1; fi

  # OpenBLAS is xz-compressed always (35 MiB -> about 4; every device call
  # moves .gpu/), and further libraries, largest first, while the working
  # tree plus .gpu/ would leave less than 4 MiB of the 64 MiB carry limit;
  # `run` unpacks them with xz or Python's lzma.
  xz -6 -T0 "$gpu_dir/lib/libopenblas.so.0"
  local tree budget big
  tree=$(git -C "$root" ls-files -co --exclude-standard -z | (cd "$root" && du -cb --files0-from=- 2>/dev/null) |
    tail -1 | cut -f1)
  budget=$((carry_limit - tree - 4 * 1024 * 1024))
  while (($(bytes_of "$gpu_dir") > budget)); do
    big=$(find "$gpu_dir/lib" -maxdepth 1 -type f -name '*.so*' ! -name '*.xz' -printf '%s %p\n' |
      sort -rn | head -1 | cut -d' ' -f2-)
    [[ -n "$big" ]] || break
    xz -6 -T0 "$big"
  done

  {
    echo "commit: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- kernels model train tests bench || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "nvcc: $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    echo "binaries: ${targets[*]}"
    echo "libraries: $(find "$gpu_dir/lib" -type f -printf '%f\n' | sort | tr '\n' ' ')"
    echo "openblas: $openblas"
    echo "needs: glibc >= $(objdump -T "$gpu_dir"/bin/* | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)," \
      "libstdc++ with $(objdump -T "$gpu_dir"/bin/* | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1)," \
      "and from the NVIDIA wheels: $(readelf -d "$gpu_dir"/bin/* | sed -n 's/.*(NEEDED).*\[\(lib\(cublasLt\|cublas\|nccl\)\.so\.[0-9]*\)\]/\1/p' | sort -u | tr '\n' ' ')"
  } >"$gpu_dir/MANIFEST"
  if ! git -C "$root" check-ignore -q "$gpu_dir/bin"; then
    echo "gpu_check: warning: .gpu/ is not git-ignored" >&2
  fi
  cat "$gpu_dir/MANIFEST"
  if ((${#unexpected[@]})); then
    printf 'gpu_check: note: carried beyond Abseil: %s\n' "${unexpected[@]}" >&2
  fi
  local total compressed
  total=$(bytes_of "$gpu_dir")
  compressed=$(find "$gpu_dir/lib" -name '*.xz' -printf '%f ' | sed 's/ $//')
  echo "sizes: bin $(mib "$(bytes_of "$gpu_dir/bin")"), lib $(mib "$(bytes_of "$gpu_dir/lib")")" \
    "(xz-compressed: ${compressed:-none}), .gpu $(mib "$total"), working tree $(mib "$tree"):" \
    "$(mib $((total + tree))) of the 64 MiB carry limit"
  (cd "$gpu_dir" && find bin lib -type f -printf '%s %p\n' | sort -rn |
    awk '{printf "  %8.2f MiB  %s\n", $1 / 1048576, $2}')
  if ((total + tree > carry_limit)); then
    echo "gpu_check: .gpu/ and the working tree are over the 64 MiB carry limit" >&2
    exit 1
  fi
  echo "prepared: now one device call, carry [\".gpu\"], command: scripts/gpu_check.sh run"
}

run() {
  local out="${OUT:-$gpu_dir/out}"
  local budget="${LLAMAPRO_GPU_CHECK_SECONDS:-450}"
  local start_all deadline
  start_all=$(date +%s)
  deadline=$((start_all + budget))
  mkdir -p "$out/logs"
  if [[ ! -d "$gpu_dir/bin" ]]; then
    echo "gpu_check: no $gpu_dir/bin: run 'scripts/gpu_check.sh prepare' here first and carry .gpu" >&2
    exit 2
  fi
  [[ -f "$gpu_dir/MANIFEST" ]] && cp "$gpu_dir/MANIFEST" "$out/logs/MANIFEST"

  local gpu="unknown (no nvidia-smi)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$out/logs/nvidia-smi.txt" 2>&1 || true
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
      head -1 || echo "nvidia-smi failed")
  fi

  # Carried libraries: compressed ones unpacked outside .gpu/ (it must stay
  # small enough to carry again).
  local unpacked f
  unpacked=$(mktemp -d "${TMPDIR:-/tmp}/llamapro-gpu-lib.XXXXXX")
  # shellcheck disable=SC2064  # expand now: the folder is local
  trap "rm -rf '$unpacked'" EXIT
  shopt -s nullglob
  for f in "$gpu_dir"/lib/*.xz; do
    if command -v xz >/dev/null; then
      xz -dc "$f" >"$unpacked/$(basename "$f" .xz)"
    else
      python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as i, open(sys.argv[2], "wb") as o: shutil.copyfileobj(i, o)' \
        "$f" "$unpacked/$(basename "$f" .xz)"
    fi
  done

  # cuBLASLt and NCCL come from the NVIDIA wheels of PyTorch's venv.
  local dirs=("$unpacked" "$gpu_dir/lib") d lib found
  for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib; do dirs+=("$d"); done
  for lib in libcublasLt.so.13 libnccl.so.2; do
    found=0
    for d in "${dirs[@]}"; do [[ -e "$d/$lib" ]] && found=1; done
    if ((!found)); then
      d=$(find /opt/torch/.venv /usr/local/cuda* /usr/lib/x86_64-linux-gnu -name "$lib" 2>/dev/null | head -1 || true)
      [[ -n "$d" ]] && dirs+=("$(dirname "$d")")
    fi
  done
  shopt -u nullglob
  LD_LIBRARY_PATH="$(
    IFS=:
    echo "${dirs[*]}"
  )${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  # The CPU reference's GEMMs: the carried OpenBLAS (oneDNN, preferred where
  # installed, is not carried).
  export LLAMAPRO_BLAS=openblas
  {
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "LLAMAPRO_BLAS=$LLAMAPRO_BLAS"
    echo "python: $(command -v python3 || echo none); baseline python: ${LLAMAPRO_TORCH_PYTHON:-/opt/torch/.venv/bin/python (if present)}"
  } >"$out/logs/environment.txt"

  local rows=() failed_any=0 no_gpu_skips=0 bin name log rc start seconds passed failed skipped status missing limit
  # The tests get at most 150 s together (120 s each); the bench the rest.
  local tests_deadline=$((start_all + (budget < 300 ? budget / 2 : 150)))
  for bin in "$gpu_dir"/bin/cuda_*_test; do
    name=$(basename "$bin")
    log="$out/logs/$name.log"
    limit=$((tests_deadline - $(date +%s)))
    ((limit > 120)) && limit=120
    if ((limit < 10)); then
      rows+=("$(printf '%-22s %6s %6s %7s %6s  %s' "$name" - - - - "not run (time budget)")")
      failed_any=1
      continue
    fi
    missing=$(ldd "$bin" 2>&1 | grep 'not found' | awk '{print $1}' | paste -sd, || true)
    start=$(date +%s)
    rc=0
    timeout "$limit" "$bin" --gtest_color=no --gtest_output="xml:$out/logs/$name.xml" >"$log" 2>&1 || rc=$?
    seconds=$(($(date +%s) - start))
    # One line per finished test: "[       OK ] Suite.Name (12 ms)".
    passed=$(grep -cE '^\[ +OK \] .* \([0-9]+ ms\)$' "$log" || true)
    failed=$(grep -cE '^\[ +FAILED +\] .* \([0-9]+ ms\)$' "$log" || true)
    skipped=$(grep -cE '^\[ +SKIPPED +\] .* \([0-9]+ ms\)$' "$log" || true)
    if [[ -n "$missing" ]]; then
      status="missing $missing"
    elif ((rc == 124)); then
      status="timed out (${limit} s)"
    elif ((rc != 0 && failed == 0)); then
      status="crashed (exit $rc)"
    elif ((failed > 0)); then
      status="FAILED"
    elif ((skipped > 0)) && [[ "$gpu" != unknown* ]]; then
      status="skipped on a GPU machine (no device seen?)"
    elif ((skipped > 0)); then
      status="skipped (no GPU)"
      no_gpu_skips=1
    else
      status="ok"
    fi
    [[ "$status" == ok || "$status" == "skipped (no GPU)" ]] || failed_any=1
    rows+=("$(printf '%-22s %6s %6s %7s %5ss  %s' "$name" "$passed" "$failed" "$skipped" "$seconds" "$status")")
  done

  # The bench: 7B first (the ratio that counts), then 1B with what is left.
  local bench="$gpu_dir/bin/gpu_train_bench" config summaries=() ratio="" no_device=0
  local -a extra=()
  read -r -a extra <<<"${LLAMAPRO_GPU_BENCH_ARGS:-}"
  for config in 7b 1b; do
    name="gpu_train_bench $config"
    log="$out/gpu_train_bench_$config.log"
    if [[ ! -x "$bench" ]]; then
      rows+=("$(printf '%-22s %29s  %s' "$name" "" "not carried (prepare built none)")")
      failed_any=1
      continue
    fi
    limit=$((deadline - $(date +%s)))
    # Leave the 1B run 75 s when there is time for both.
    [[ "$config" == 7b ]] && ((limit > 135)) && limit=$((limit - 75))
    if ((limit < 30)); then
      rows+=("$(printf '%-22s %29s  %s' "$name" "" "not run (time budget)")")
      [[ "$config" == 7b ]] && failed_any=1
      continue
    fi
    missing=$(ldd "$bench" 2>&1 | grep 'not found' | awk '{print $1}' | paste -sd, || true)
    echo "gpu_check: $name (limit ${limit} s)..."
    start=$(date +%s)
    rc=0
    (cd "$root" && timeout "$limit" "$bench" --config "$config" "${extra[@]}") >"$log" 2>&1 || rc=$?
    seconds=$(($(date +%s) - start))
    if [[ -n "$missing" ]]; then
      status="missing $missing"
    elif ((rc == 124)); then
      status="timed out (${limit} s)"
    elif ((rc == 77)); then
      status="no CUDA device ($(sed -n 's/^no CUDA device: //p' "$log" | head -1 | cut -c1-60))"
      no_device=1
    elif ((rc != 0)); then
      status="FAILED (exit $rc)"
    else
      status="ok"
    fi
    # Exit 77 (no device) is expected only where no GPU was seen.
    if [[ "$status" != ok ]] && ! { ((rc == 77)) && [[ "$gpu" == unknown* ]]; }; then
      failed_any=1
    fi
    rows+=("$(printf '%-22s %29s %5ss  %s' "$name" "" "$seconds" "$status")")
    while IFS= read -r line; do summaries+=("$line"); done < <(grep -E '^(summary |MFU peak: )' "$log" || true)
    [[ "$config" == 7b ]] && ratio=$(grep -E '^ratio \(' "$log" | tail -1 || true)
  done
  if [[ -z "$ratio" ]]; then
    ratio="ratio (llamapro / PyTorch tokens/s, 7B LLaMA Pro): n/a ($(
      if ((no_device)); then echo "no CUDA device"; else echo "the 7B bench printed none: see gpu_train_bench_7b.log"; fi
    ))"
  fi

  # At most 8 files come back from $OUT: the summary, the bench logs, the
  # test logs in one file, and everything else in one archive.
  for log in "$out"/logs/cuda_*_test.log; do
    [[ -e "$log" ]] || continue
    echo "===== $(basename "$log" .log)"
    cat "$log"
  done >"$out/tests.log"
  tar -C "$out" -czf "$out/logs.tar.gz" logs && rm -rf "${out:?}/logs"

  {
    echo
    echo "GPU: $gpu"
    echo "logs: $out (summary.txt, tests.log, gpu_train_bench_{7b,1b}.log, logs.tar.gz)"
    echo "time: $(($(date +%s) - start_all)) s of a ${budget} s budget"
    printf '%-22s %6s %6s %7s %6s  %s\n' binary passed failed skipped time status
    printf '%s\n' "${rows[@]}"
    # Each bench log has its "MFU peak" line: print it once.
    ((${#summaries[@]})) && printf '%s\n' "${summaries[@]}" | awk '!seen[$0]++'
    if [[ "$gpu" == unknown* ]] && ((failed_any == 0)); then
      echo "no GPU seen: nothing was checked on a device$( ((no_gpu_skips || no_device)) && echo ' (tests skipped, bench exited 77)')"
    fi
    echo "$ratio"
  } | tee "$out/summary.txt"
  if ((failed_any)); then return 1; fi
  if [[ "$gpu" == unknown* ]]; then return 77; fi
  return 0
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
