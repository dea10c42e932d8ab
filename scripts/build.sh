#!/usr/bin/env bash
# Configures and builds llamapro into $LLAMAPRO_BUILD_DIR (default: build/).
# Extra arguments go to cmake --build (e.g. --target llamaproctl).
# Assumes scripts/setup.sh has run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=env.sh
source "$root/scripts/env.sh"
build="${LLAMAPRO_BUILD_DIR:-$root/build}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${LLAMAPRO_BUILD_TYPE:-RelWithDebInfo}" \
  -DLLAMAPRO_WERROR=ON ${LLAMAPRO_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)" "$@"
