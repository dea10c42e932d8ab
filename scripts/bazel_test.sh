#!/usr/bin/env bash
# The Bazel build beside CMake (docs/build.md, "Bazel"): installs Debian's
# bazel-bootstrap if missing (and, through scripts/setup.sh, the shared
# dependencies), runs `bazel test --config=ci //...` offline, then checks that
# Bazel ran the tests ctest runs minus the `cuda` label
# (third_party/bazel/compare_tests.py), and shuts the Bazel server down.
# scripts/test.sh runs it after the CMake tests. Extra arguments go to
# `bazel test` (e.g. --test_tag_filters=unit).
#
# Offline, checked: run as root with unshare(1), every Bazel command runs in
# a network namespace of its own with only loopback up, so a download fails
# the build; in any case the script fails if Bazel's log mentions a fetch.
#
# Environment: LLAMAPRO_BUILD_DIR (the CMake tree to compare with, default
# build/; brought up to date with scripts/build.sh),
# LLAMAPRO_BAZEL_OUTPUT_ROOT (Bazel's --output_user_root; default Bazel's,
# ~/.cache/bazel), LLAMAPRO_BAZEL_COMPARE (0 skips the comparison), and
# those of setup.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { printf '[bazel_test] %s\n' "$*" >&2; }

# --- 1. Setup (needs the network: outside the namespace) ---------------------
if [ -z "${LLAMAPRO_BAZEL_NETNS:-}" ]; then
  start=$(date +%s)
  "$root/scripts/setup.sh"
  # Debian's Bazel 4.2.3. No packaged rule sets: the ones Debian has are too
  # new for it; third_party/bazel/ has the stand-ins.
  if ! dpkg-query -W -f='${Status}' bazel-bootstrap 2>/dev/null | grep -q 'install ok installed'; then
    sudo=()
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null || { log "need root (or sudo) to install bazel-bootstrap"; exit 1; }
      sudo=(sudo)
    fi
    log "installing bazel-bootstrap"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      bazel-bootstrap >/dev/null
  fi
  export LLAMAPRO_BAZEL_START="$start"
  if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null &&
    unshare -n true 2>/dev/null; then
    # A server started outside could not be reached from inside.
    bazel ${LLAMAPRO_BAZEL_OUTPUT_ROOT:+"--output_user_root=$LLAMAPRO_BAZEL_OUTPUT_ROOT"} \
      shutdown >/dev/null 2>&1 || true
    log "running Bazel without network (a namespace with only loopback)"
    # shellcheck disable=SC2016  # $0 and $@ are the inner shell's
    exec unshare -n env LLAMAPRO_BAZEL_NETNS=1 bash -c \
      'ip link set lo up && exec "$0" "$@"' "$root/scripts/bazel_test.sh" "$@"
  fi
  export LLAMAPRO_BAZEL_NETNS=none
  log "not root or no unshare: running Bazel with the network up (the log is still checked)"
fi

# --- 2. bazel test -----------------------------------------------------------
# shellcheck source=env.sh
source "$root/scripts/env.sh"
startup=()
if [ -n "${LLAMAPRO_BAZEL_OUTPUT_ROOT:-}" ]; then
  startup+=("--output_user_root=$LLAMAPRO_BAZEL_OUTPUT_ROOT")
fi
bz() { bazel "${startup[@]}" "$@"; }
# Bazel 4.2 descends into convenience symlinks (bazel-<dir>) that point into
# another output base, e.g. one of an earlier --output_user_root: drop them,
# the build makes them anew.
find "$root" -maxdepth 1 -type l -name 'bazel-*' -delete
tmp=$(mktemp -d)
# The server must not outlive the script (CI waits for its children).
trap 'bz shutdown >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
# Sandboxes on a tmpfs: creating and deleting them on disk cost a seventh of
# the build's time.
flags=(--config=ci)
if [ -d /dev/shm ] && [ -w /dev/shm ]; then flags+=(--sandbox_base=/dev/shm); fi
rc=0
bz test "${flags[@]}" "$@" //... 2>&1 | tee "$tmp/bazel.log" || rc=$?
testlogs=$(bz info "${flags[@]}" bazel-testlogs 2>/dev/null)
# Bazel logs every fetch of a remote repository ("Download from https://...").
if grep -E 'Download from|download_and_extract|Error downloading' "$tmp/bazel.log"; then
  log "FAILED: Bazel fetched from the network (above); the build must be offline"
  exit 1
fi
# ctest's SKIP_RETURN_CODE 77, as ctest_command.sh reports it; GoogleTest's skips.
skipped=$(grep -rl '^\[ctest_command\] SKIPPED' "$testlogs" --include=test.log 2>/dev/null || true)
if [ -n "$skipped" ]; then
  log "skipped (exit 77: a tool scripts/setup.sh installs is missing):"
  sed -e "s|^$testlogs/||" -e 's|/test.log$||' <<<"$skipped" >&2
fi
gtest_skips=$(find "$testlogs" -name test.log -exec cat {} + 2>/dev/null |
  grep -cE '^\[  SKIPPED \] [A-Za-z0-9_/]+\.[A-Za-z0-9_/]+ \(' || true)
[ "$gtest_skips" = 0 ] || log "$gtest_skips GoogleTest cases skipped (GTEST_SKIP)"
if [ "$rc" != 0 ]; then
  log "FAILED: bazel test exited with $rc"
  exit "$rc"
fi

# --- 3. Same tests as ctest, minus the cuda label ----------------------------
if [ "${LLAMAPRO_BAZEL_COMPARE:-1}" != 0 ] && [ $# -eq 0 ]; then
  # ctest lists the cases of the GoogleTest binaries it has built: the CMake
  # tree must be built and current (in CI it is; a no-op then).
  build="${LLAMAPRO_BUILD_DIR:-$root/build}"
  [ -f "$build/CTestTestfile.cmake" ] || log "building the CMake tree to compare with in $build"
  "$root/scripts/build.sh" >/dev/null
  (cd "$build" && ctest --show-only=json-v1 -LE cuda) >"$tmp/ctest.json"
  bz query --output=xml 'tests(//...)' >"$tmp/bazel.xml" 2>/dev/null
  /usr/bin/python3 "$root/third_party/bazel/compare_tests.py" "$tmp/ctest.json" "$tmp/bazel.xml" \
    "$(bz info "${flags[@]}" bazel-bin 2>/dev/null)" || rc=$?
  [ "$rc" = 0 ] || exit "$rc"
fi
log "all passed in $(($(date +%s) - ${LLAMAPRO_BAZEL_START:-$(date +%s)})) s"
