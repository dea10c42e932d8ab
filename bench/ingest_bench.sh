#!/usr/bin/env bash
# Ingestion throughput against the bare single-threaded SentencePiece encoder
# on the same text, in the same run, and resident memory at two input sizes.
#
# Generates SIZE_MB of text (bench/gen_text.py: one document per line, prose,
# code, a little German/Russian/Chinese/Japanese), trains a 32000-piece BPE
# tokenizer on its first 8 MB (llamaproctl tokenizer train), then times
#   baseline: spm_encode --output_format=id < text > /dev/null   (Debian's, 1 thread)
#   ingest:   llamaproctl ingest --split-lines (all cores), into a fresh store
# Both tokenize the same lines into the same ids (tests/unit/tokenizer_test.cc
# checks that), so tokens/s compare directly. The ratio is printed last.
# Memory: peak RSS of the ingest at SIZE_MB and at SIZE_MB/4: flat means the
# two are close.
#
# Usage: bench/ingest_bench.sh [--mb SIZE_MB] [--dir DIR] [--keep]
# Target (issue #3): ingest >= 1.6x spm_encode's tokens/s on 2 cores; RSS < 500 MB.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mb=200 keep=0
dir="${TMPDIR:-/tmp}/llamapro-ingest-bench"
while [ $# -gt 0 ]; do
  case "$1" in
    --mb) mb=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
build="${LLAMAPRO_BUILD_DIR:-$root/build}"
ctl="$build/client/llamaproctl"
if [ ! -x "$ctl" ]; then "$root/scripts/build.sh" --target llamaproctl >/dev/null; fi
spm=/usr/bin/spm_encode
[ -x "$spm" ] || { echo "Debian's spm_encode is needed: apt-get install sentencepiece" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is needed: apt-get install time" >&2; exit 1; }

mkdir -p "$dir"
cleanup() {
  rm -rf "$dir/store" "$dir/store-small"
  if [ "$keep" = 0 ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
text="$dir/text-$mb.txt"
small="$dir/text-small.txt"
if [ ! -f "$text" ]; then
  python3 "$root/bench/gen_text.py" "$text" "$mb" 1
fi
python3 "$root/bench/gen_text.py" "$small" "$(python3 -c "print($mb / 4)")" 2
if [ ! -f "$dir/tokenizer/tokenizer.model" ]; then
  head -c 8000000 "$text" > "$dir/train.txt"
  echo "training a 32000-piece BPE tokenizer on 8 MB ..."
  "$ctl" tokenizer train --input "$dir/train.txt" --vocab-size 32000 --out "$dir/tokenizer" \
    >/dev/null
fi
model="$dir/tokenizer/tokenizer.model"
echo "text: $(du -h "$text" | cut -f1), $(wc -l < "$text") lines; $(nproc) cores"

# Warm the page cache so both read the text from memory.
cat "$text" > /dev/null
read -r t_spm _ < <(/usr/bin/time -f "%e %M" "$spm" --model="$model" --output_format=id \
  < "$text" 2>&1 >/dev/null | tail -1)
rm -rf "$dir/store"
out=$( { /usr/bin/time -f "TIME %e %M" "$ctl" ingest --store "$dir/store" --corpus bench \
  --tokenizer "$model" --split-lines --quiet "$text"; } 2>&1)
t_ingest=$(echo "$out" | awk '/^TIME/{print $2}')
rss=$(echo "$out" | awk '/^TIME/{print $3}')
tokens=$("$ctl" corpora --store "$dir/store" --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['tokens'])")
out_small=$( { /usr/bin/time -f "TIME %e %M" "$ctl" ingest --store "$dir/store-small" \
  --corpus bench --tokenizer "$model" --split-lines --quiet "$small"; } 2>&1)
rss_small=$(echo "$out_small" | awk '/^TIME/{print $3}')
store_mb=$(du -sm "$dir/store" | cut -f1)

python3 - "$tokens" "$t_spm" "$t_ingest" "$rss" "$rss_small" "$mb" "$store_mb" <<'PY'
import sys
tokens, t_spm, t_ingest, rss, rss_small, mb, store_mb = sys.argv[1:]
tokens, t_spm, t_ingest = int(tokens), float(t_spm), float(t_ingest)
rss, rss_small = int(rss) / 1024, int(rss_small) / 1024
spm_rate, ingest_rate = tokens / t_spm, tokens / t_ingest
print(f"tokens: {tokens} ({float(mb) * 1e6 / tokens:.2f} bytes/token); store {store_mb} MB")
print(f"spm_encode (1 thread): {t_spm:7.2f} s  {spm_rate:12.0f} tokens/s")
print(f"llamaproctl ingest:    {t_ingest:7.2f} s  {ingest_rate:12.0f} tokens/s")
print(f"ingest peak RSS: {rss:.1f} MB at {mb} MB of text, {rss_small:.1f} MB at a quarter of it")
ratio = ingest_rate / spm_rate
ok = ratio >= 1.6 and rss < 500
print(f"ingest/spm_encode tokens/s ratio: {ratio:.2f} (target >= 1.60), peak RSS {rss:.0f} MB "
      f"(target < 500 MB): {'PASS' if ok else 'FAIL'}")
PY
