#!/usr/bin/env bash
# The quickstart (README): install, build llamaproctl, write a small random
# LLaMA checkpoint, expand it 4 -> 6 blocks with --verify (the expanded model's
# logits must be bit-identical), and print the expanded model's inspect table.
#
# Usage: scripts/quickstart.sh [WORK_DIR]   (default: out/quickstart)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="${1:-$root/out/quickstart}"
"$root/scripts/setup.sh"
"$root/scripts/build.sh" --target llamaproctl >/dev/null
ctl="${LLAMAPRO_BUILD_DIR:-$root/build}/client/llamaproctl"
mkdir -p "$work"
set -x
"$ctl" synth --preset tiny --layers 4 --out "$work/tiny-llama" --force --quiet
"$ctl" expand --model "$work/tiny-llama" --out "$work/tiny-llama-pro" --add-blocks 2 --verify \
  --force
"$ctl" inspect --model "$work/tiny-llama-pro"
