#!/usr/bin/env bash
# Expansion throughput against `cp` of the same checkpoint, and peak memory.
#
# Generates a synthetic checkpoint shaped like LLaMA-2-7B (32 blocks, hidden
# 4096, FFN 11008, vocab 32000, bf16, ~13.5 GB, sharded at 5 GB), then
# alternately copies it with `cp -r` and expands it 32 -> 40 blocks
# (interleaved, the paper's setting), each followed by `sync` inside the timing
# (expand fsyncs its files; cp's writes must reach the disk too for a fair
# comparison). Throughput = bytes written / seconds; the ratio printed last is
# best expand throughput / best cp throughput. Peak RSS from GNU time.
#
# Usage: bench/expand_bench.sh [--scale S] [--runs N] [--dir DIR] [--keep]
#   --scale S  multiply hidden, FFN and vocab sizes (bytes ~ S^2); default 1
#   --runs N   timed runs of each command (default 2)
#   --dir DIR  work directory (default: $TMPDIR or /tmp, llamapro-expand-bench)
#   --keep     keep the generated checkpoint (reused by the next run)
# Targets (issue #2): ratio >= 0.7, expand peak RSS < 2 GB.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scale=1 runs=2 keep=0
dir="${TMPDIR:-/tmp}/llamapro-expand-bench"
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
build="${LLAMAPRO_BUILD_DIR:-$root/build}"
ctl="$build/client/llamaproctl"
if [ ! -x "$ctl" ]; then "$root/scripts/build.sh" --target llamaproctl >/dev/null; fi
[ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time) is needed: apt-get install time" >&2; exit 1; }

mkdir -p "$dir"
base="$dir/base-$scale"
cleanup() {
  rm -rf "$dir/copy" "$dir/expanded"
  if [ "$keep" = 0 ]; then rm -rf "$base"; fi
}
trap cleanup EXIT

if [ ! -f "$base/config.json" ]; then
  rm -rf "$base"
  echo "generating a LLaMA-2-7B-shaped checkpoint (scale $scale) in $base"
  "$ctl" synth --preset llama2-7b --scale "$scale" \
    --dtype bf16 --out "$base" --quiet
fi
in_bytes=$(du -sb "$base" | cut -f1)
echo "input: $(du -sh "$base" | cut -f1) in $(ls "$base" | grep -c '\.safetensors$') weight files;" \
     "$(nproc) cores; $(df -h "$dir" | awk 'NR==2{print $1" ("$2")"}')"

# time_cmd LABEL BYTES CMD... -> prints "seconds max_rss_kb"
time_cmd() {
  local out
  out=$(/usr/bin/time -f "%e %M" bash -c "$* && sync" 2>&1 >/dev/null | tail -1)
  echo "$out"
}

best_cp=0 best_expand=0 rss_expand=0 rss_cp=0
for run in $(seq 1 "$runs"); do
  rm -rf "$dir/copy" "$dir/expanded"; sync
  read -r t rss < <(time_cmd cp -r "$base" "$dir/copy")
  cp_rate=$(python3 -c "print($in_bytes / max($t, 1e-3))")
  rss_cp=$rss
  rm -rf "$dir/copy"; sync
  read -r t2 rss2 < <(time_cmd "$ctl" expand --model "$base" --out "$dir/expanded" \
    --add-blocks 8 --quiet)
  out_bytes=$(du -sb "$dir/expanded" | cut -f1)
  ex_rate=$(python3 -c "print($out_bytes / max($t2, 1e-3))")
  (( rss2 > rss_expand )) && rss_expand=$rss2
  printf "run %d: cp %6.2f s %8.1f MB/s | expand %6.2f s %8.1f MB/s (%s written), peak RSS %s MB\n" \
    "$run" "$t" "$(python3 -c "print($cp_rate/1e6)")" "$t2" "$(python3 -c "print($ex_rate/1e6)")" \
    "$(du -sh "$dir/expanded" | cut -f1)" "$(python3 -c "print(round($rss2/1024, 1))")"
  best_cp=$(python3 -c "print(max($best_cp, $cp_rate))")
  best_expand=$(python3 -c "print(max($best_expand, $ex_rate))")
done
"$ctl" inspect --model "$dir/expanded" | sed -n '1,6p'
python3 - "$best_expand" "$best_cp" "$rss_expand" "$rss_cp" <<'PY'
import sys
expand, cp, rss_expand, rss_cp = map(float, sys.argv[1:])
ratio = expand / cp
print(f"best throughput: expand {expand/1e6:.1f} MB/s, cp {cp/1e6:.1f} MB/s; "
      f"peak RSS: expand {rss_expand/1024:.1f} MB (cp {rss_cp/1024:.1f} MB)")
ok = ratio >= 0.7 and rss_expand * 1024 < 2e9
print(f"expand/cp throughput ratio: {ratio:.2f} (target >= 0.70), expand peak RSS "
      f"{rss_expand/1024:.1f} MB (target < 2000 MB): {'PASS' if ok else 'FAIL'}")
PY
