#!/usr/bin/env bash
# Build sentencepiece 0.1.97 (Debian bookworm source package 0.1.97-3) against
# the *system* protobuf and install it into a cached prefix.
#
# Why: Debian's libsentencepiece.so.0 (0.1.97) bundles and exports its own
# protobuf-lite 3.14. A process that also loads the system protobuf 3.21
# (e.g. through gRPC) aborts at the first model load. Building with
# -DSPM_USE_BUILTIN_PROTOBUF=OFF (plus a small patch, see
# scripts/patches/sentencepiece-0.1.97-system-protobuf.patch) fixes that.
#
# Usage: scripts/build_sentencepiece.sh PREFIX
#   e.g. scripts/build_sentencepiece.sh "$HOME/.cache/llamapro/deps/sentencepiece-0.1.97-sysprotobuf"
#
# Installs include/, lib/ (shared libs), lib/pkgconfig/sentencepiece.pc and
# bin/spm_* into PREFIX, then writes PREFIX/.llamapro-stamp. If the stamp is
# already there and matches (version, patch sha256, system protobuf version,
# recipe revision), exits 0 immediately.
#
# Requires (not installed by this script): dpkg-dev, libprotobuf-dev,
# protobuf-compiler, cmake, g++ (ninja-build optional), and network access to
# the Debian mirrors listed in /etc/apt/sources.list.d/*.sources (deb822) or
# /etc/apt/sources.list. The system apt configuration is not modified: the
# deb-src index is fetched into a private temporary directory.
#
# Environment:
#   SENTENCEPIECE_DSC=/path/sentencepiece_0.1.97-3.dsc  use this already
#       downloaded source package (with its .orig/.debian tarballs next to it)
#       instead of running apt-get source.
#   LLAMAPRO_KEEP_TMP=1  keep the temporary build directory (for debugging).

set -euo pipefail

SPM_VERSION=0.1.97
SPM_DEB_VERSION=0.1.97-3
# Bump when the build recipe below changes in a way that changes the result.
RECIPE_REV=1

log() { printf '[build_sentencepiece] %s\n' "$*" >&2; }
die() { printf '[build_sentencepiece] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 && -n "$1" ]] || die "usage: $0 PREFIX"

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patch_file="$script_dir/patches/sentencepiece-${SPM_VERSION}-system-protobuf.patch"
[[ -f "$patch_file" ]] || die "patch not found: $patch_file"

# Absolute prefix without trailing slash (the directory need not exist yet).
prefix=$1
[[ "$prefix" == /* ]] || prefix="$PWD/$prefix"
prefix=${prefix%/}
[[ -n "$prefix" ]] || die "refusing to install into /"

command -v sha256sum >/dev/null || die "'sha256sum' not found"
command -v protoc >/dev/null ||
  die "'protoc' not found: install protobuf-compiler (and libprotobuf-dev)"
protobuf_version=$(protoc --version | awk '{print $2}')
patch_sha=$(sha256sum "$patch_file" | awk '{print $1}')

stamp_content="sentencepiece=$SPM_DEB_VERSION
patch_sha256=$patch_sha
system_protobuf=$protobuf_version
recipe=$RECIPE_REV"

stamp="$prefix/.llamapro-stamp"
stamp_ok() { [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$stamp_content" ]]; }
if stamp_ok; then
  log "already installed: $prefix"
  exit 0
fi

# Serialize concurrent runs for the same prefix (they share $prefix.tmp).
mkdir -p "$(dirname "$prefix")"
if command -v flock >/dev/null; then
  exec 9>"$prefix.lock"
  if ! flock -n 9; then
    log "another build for $prefix is running; waiting for it"
    flock 9
  fi
  if stamp_ok; then
    log "already installed (by a concurrent run): $prefix"
    exit 0
  fi
fi
if [[ -e "$prefix" ]]; then
  log "$prefix exists but has no matching stamp; it will be rebuilt and replaced"
fi

# ---- tool checks ----------------------------------------------------------
command -v dpkg-source >/dev/null || die "'dpkg-source' not found: install dpkg-dev"
for tool in cmake c++ patch nm c++filt ldd; do
  command -v "$tool" >/dev/null || die "'$tool' not found"
done
[[ -f /usr/include/google/protobuf/message_lite.h ]] ||
  die "system protobuf headers not found: install libprotobuf-dev"
if [[ -z "${SENTENCEPIECE_DSC:-}" ]]; then
  command -v apt-get >/dev/null || die "'apt-get' not found (or set SENTENCEPIECE_DSC)"
fi
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
jobs=$(nproc 2>/dev/null || echo 2)

# ---- temp dir ---------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/build-sentencepiece.XXXXXX")
staging="$prefix.tmp"
cleanup() {
  local rc=$?
  rm -rf "$staging"
  if [[ "${LLAMAPRO_KEEP_TMP:-0}" == 1 ]] || [[ $rc -ne 0 && $rc -ne 130 && $rc -ne 143 ]]; then
    [[ $rc -ne 0 ]] && log "FAILED (rc=$rc); build directory kept for inspection: $tmp"
  else
    [[ $rc -ne 0 ]] && log "interrupted (rc=$rc); nothing installed"
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- fetch the Debian source package ----------------------------------------
# Convert the system's "deb" entries to "deb-src" lines in a private
# sources.list (deb822 *.sources and one-line sources.list are supported).
make_deb_src_list() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk '
      function flush(   n, m, i, j, opt) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no" && uris != "" && suites != "") {
          opt = ""
          if (signedby ~ /^\//) opt = " [signed-by=" signedby "]"
          n = split(uris, U, /[ \t]+/); m = split(suites, S, /[ \t]+/)
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
            if (U[i] != "" && S[j] != "") print "deb-src" opt " " U[i] " " S[j] " " comps
        }
        types = uris = suites = comps = signedby = enabled = ""; last = ""
      }
      function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (last == "signed-by") signedby = signedby "\n" $0; next }  # continuation
      {
        key = tolower(substr($0, 1, index($0, ":") - 1)); val = trim(substr($0, index($0, ":") + 1))
        last = key
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "components") comps = val
        else if (key == "signed-by") signedby = val
        else if (key == "enabled") enabled = val
      }
      END { flush() }
    ' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    sed -n 's/^[[:space:]]*deb[[:space:]]\+/deb-src /p' "$f"
  done
}

dl="$tmp/dl"
mkdir -p "$dl"
if [[ -n "${SENTENCEPIECE_DSC:-}" ]]; then
  [[ -f "$SENTENCEPIECE_DSC" ]] || die "SENTENCEPIECE_DSC=$SENTENCEPIECE_DSC does not exist"
  dsc="$SENTENCEPIECE_DSC"
  log "using source package $dsc"
else
  aptdir="$tmp/apt"
  mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
  make_deb_src_list | sort -u > "$aptdir/sources.list"
  [[ -s "$aptdir/sources.list" ]] ||
    die "could not derive any deb-src line from /etc/apt/sources.list{,.d/*}"
  log "private deb-src list ($aptdir/sources.list):"
  sed 's/^/    /' "$aptdir/sources.list" >&2
  apt_opts=(
    -o "Dir::Etc::SourceList=$aptdir/sources.list"
    -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$aptdir/lists"
    -o "Dir::Cache=$aptdir/cache"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/nonexistent"
    -o "APT::Sandbox::User=$(id -un)"
    -o "Acquire::Languages=none"
    -o "Debug::NoLocking=1"
  )
  log "apt-get update (private lists)"
  apt-get -q "${apt_opts[@]}" update > "$tmp/apt-update.log" 2>&1 ||
    { cat "$tmp/apt-update.log" >&2; die "apt-get update (private deb-src list) failed"; }
  log "apt-get source sentencepiece=$SPM_DEB_VERSION"
  (cd "$dl" && apt-get -q "${apt_opts[@]}" source --download-only "sentencepiece=$SPM_DEB_VERSION") \
    > "$tmp/apt-source.log" 2>&1 ||
    { cat "$tmp/apt-source.log" >&2; die "apt-get source sentencepiece=$SPM_DEB_VERSION failed"; }
  dsc="$dl/sentencepiece_${SPM_DEB_VERSION}.dsc"
  [[ -f "$dsc" ]] || die "apt-get source did not produce $dsc"
fi

src="$tmp/src"
log "unpacking $(basename "$dsc") (with Debian patches)"
# apt-get already verified the files against the signed Sources index.
dpkg-source --no-check -x "$dsc" "$src" > "$tmp/dpkg-source.log" 2>&1 ||
  { cat "$tmp/dpkg-source.log" >&2; die "dpkg-source -x failed"; }
[[ "$(cat "$src/VERSION.txt" 2>/dev/null)" == "$SPM_VERSION" ]] ||
  die "unexpected upstream version in $src/VERSION.txt (want $SPM_VERSION)"

log "applying $(basename "$patch_file")"
patch -d "$src" -p1 --forward --batch < "$patch_file" > "$tmp/patch.log" 2>&1 ||
  { cat "$tmp/patch.log" >&2; die "patch did not apply"; }

# ---- build & install into PREFIX.tmp ------------------------------------------
build="$tmp/build"
log "configuring (${generator[*]:-Unix Makefiles}, $jobs jobs)"
# shellcheck disable=SC2016  # $ORIGIN is for the dynamic linker, not the shell
cmake "${generator[@]}" -S "$src" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$prefix" \
  -DCMAKE_INSTALL_LIBDIR=lib \
  -DCMAKE_INSTALL_RPATH='$ORIGIN:$ORIGIN/../lib' \
  -DSPM_USE_BUILTIN_PROTOBUF=OFF \
  -DSPM_ENABLE_TCMALLOC=OFF \
  -DSPM_ENABLE_SHARED=ON \
  -DSPM_BUILD_TEST=OFF > "$tmp/configure.log" 2>&1 ||
  { cat "$tmp/configure.log" >&2; die "cmake configure failed"; }
grep -q 'Found Protobuf: .*3\.21' "$tmp/configure.log" ||
  log "warning: configure log does not report system protobuf 3.21: $(grep 'Protobuf' "$tmp/configure.log" || true)"

log "building"
cmake --build "$build" --parallel "$jobs" > "$tmp/build.log" 2>&1 ||
  { tail -n 60 "$tmp/build.log" >&2; die "build failed (full log: $tmp/build.log)"; }

rm -rf "$staging"
log "installing into $staging"
# The prefix baked into sentencepiece.pc is $prefix (configure time);
# --prefix only redirects where the files are copied.
cmake --install "$build" --prefix "$staging" > "$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; die "install failed"; }
cp "$src/LICENSE" "$staging/LICENSE.sentencepiece"
cp "$patch_file" "$staging/"

# ---- self-test --------------------------------------------------------------
# Links BOTH libsentencepiece and the full system libprotobuf (the combination
# that used to abort), trains a tiny BPE model, loads it and round-trips text.
t="$tmp/selftest"
mkdir -p "$t"
cat > "$t/selftest.cc" <<'EOF'
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/timestamp.pb.h>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  GOOGLE_PROTOBUF_VERIFY_VERSION;
  if (argc != 3) { std::fprintf(stderr, "usage: selftest INPUT MODEL_PREFIX\n"); return 2; }
  const std::string input = argv[1], model_prefix = argv[2];

  // Exercise the full (descriptor-based) system protobuf runtime, like gRPC does.
  google::protobuf::Timestamp ts;
  ts.set_seconds(1234567890);
  google::protobuf::Timestamp ts2;
  if (!ts2.ParseFromString(ts.SerializeAsString()) || ts2.seconds() != 1234567890 ||
      google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(
          "google.protobuf.Timestamp") == nullptr) {
    std::fprintf(stderr, "system protobuf check failed\n");
    return 1;
  }

  // vocab_size must cover 256 byte pieces + meta pieces + required chars when
  // byte_fallback is on, so it cannot be as small as 60 here.
  const auto st = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + input + " --model_prefix=" + model_prefix +
      " --vocab_size=300 --model_type=bpe --byte_fallback=true"
      " --minloglevel=2");
  if (!st.ok()) { std::fprintf(stderr, "Train: %s\n", st.ToString().c_str()); return 1; }

  sentencepiece::SentencePieceProcessor sp;
  const auto ls = sp.Load(model_prefix + ".model");
  if (!ls.ok()) { std::fprintf(stderr, "Load: %s\n", ls.ToString().c_str()); return 1; }

  // Includes characters absent from the training text (byte fallback path).
  const std::string text = "the lazy fox jumps over 42 dogs \xC3\xA9\xE2\x9C\x93!";
  std::vector<int> ids;
  std::string back;
  if (!sp.Encode(text, &ids).ok() || ids.empty() || !sp.Decode(ids, &back).ok() || back != text) {
    std::fprintf(stderr, "round-trip failed: '%s' -> %zu ids -> '%s'\n", text.c_str(), ids.size(),
                 back.c_str());
    return 1;
  }
  std::printf("selftest OK: vocab=%d, %zu ids, round-trip exact\n", sp.GetPieceSize(), ids.size());
  google::protobuf::ShutdownProtobufLibrary();
  return 0;
}
EOF
for i in $(seq 1 300); do
  echo "the quick brown fox $i jumps over the lazy dog, number $((i * 7 % 101)) of $((i % 13))."
done > "$t/corpus.txt"

log "self-test: compiling against $staging + system libprotobuf"
c++ -std=c++17 -O1 -I"$staging/include" "$t/selftest.cc" -o "$t/selftest" \
  -L"$staging/lib" -lsentencepiece_train -lsentencepiece \
  -Wl,--no-as-needed -lprotobuf -pthread > "$t/compile.log" 2>&1 ||
  { cat "$t/compile.log" >&2; die "self-test: compile failed"; }

check_libs() {  # $1 = lib dir
  local lib bad deps
  # (Outputs are captured first: `cmd | grep -q` can fail under pipefail.)
  for lib in "$1/libsentencepiece.so.0" "$1/libsentencepiece_train.so.0"; do
    [[ -f "$lib" ]] || die "self-test: $lib missing"
    deps=$(ldd "$lib") || die "self-test: ldd $lib failed"
    grep -q 'libprotobuf\.so\.32 => /' <<<"$deps" ||
      { printf '%s\n' "$deps" >&2; die "self-test: $lib does not link the system libprotobuf.so.32"; }
    if grep -q 'libprotobuf-lite' <<<"$deps"; then
      printf '%s\n' "$deps" >&2; die "self-test: $lib links libprotobuf-lite (expected only libprotobuf)"
    fi
    # Strong (non-weak) protobuf runtime symbols defined in the library would
    # mean a bundled protobuf. Weak inline instantiations from the headers and
    # the protoc-generated Arena::CreateMaybeMessage<sentencepiece::...>
    # specializations are expected and excluded.
    bad=$(nm -D --defined-only "$lib" | c++filt | awk '$2 ~ /^[TDBRGS]$/' |
          grep 'google::protobuf::' | grep -v 'sentencepiece::' || true)
    [[ -z "$bad" ]] ||
      { printf '%s\n' "$bad" | head -n 20 >&2; die "self-test: $lib exports its own protobuf symbols"; }
    [[ $(nm -D --undefined-only "$lib" | c++filt | grep -c 'google::protobuf::') -gt 0 ]] ||
      die "self-test: $lib does not import protobuf symbols (unexpected)"
  done
}

run_selftest() {  # $1 = lib dir
  local deps
  check_libs "$1"
  rm -f "$t/m.model" "$t/m.vocab"
  deps=$(LD_LIBRARY_PATH="$1" ldd "$t/selftest") || die "self-test: ldd selftest failed"
  grep -q "libsentencepiece.so.0 => $1/" <<<"$deps" ||
    { printf '%s\n' "$deps" >&2; die "self-test: binary does not resolve libsentencepiece from $1"; }
  grep -q 'libprotobuf\.so\.32 => /' <<<"$deps" ||
    { printf '%s\n' "$deps" >&2; die "self-test: binary does not load the system libprotobuf.so.32"; }
  LD_LIBRARY_PATH="$1" "$t/selftest" "$t/corpus.txt" "$t/m" 2> "$t/run.log" >&2 ||
    { cat "$t/run.log" >&2; die "self-test: program failed against $1"; }
  log "$(grep 'selftest OK' "$t/run.log" 2>/dev/null || true) [$1]"
  [[ -s "$t/m.model" ]] || die "self-test: no model written"
}

run_selftest "$staging/lib"

# ---- stamp & atomic rename ----------------------------------------------------
printf '%s\n' "$stamp_content" > "$staging/.llamapro-stamp"
if [[ -e "$prefix" ]]; then
  old="$prefix.old.$$"
  mv "$prefix" "$old"
  mv "$staging" "$prefix"
  rm -rf "$old"
else
  mv "$staging" "$prefix"
fi

# Last step: re-run the self-test against the final location; on failure drop
# the stamp so the prefix is not taken as complete next time.
log "self-test: final prefix $prefix"
( run_selftest "$prefix/lib" ) ||
  { rm -f "$prefix/.llamapro-stamp"; die "self-test failed in final prefix $prefix"; }
log "done: sentencepiece $SPM_DEB_VERSION (system protobuf $protobuf_version) in $prefix"
