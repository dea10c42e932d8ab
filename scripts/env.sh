# shellcheck shell=bash
# Sourced by the scripts: where setup.sh keeps what it builds, and the
# variables CMake and the tests read. Safe to source repeatedly.
export LLAMAPRO_DEPS="${LLAMAPRO_DEPS:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapro}"
export LLAMAPRO_SENTENCEPIECE_PREFIX="$LLAMAPRO_DEPS/sentencepiece-0.1.97"
export LLAMAPRO_HF_VENV="$LLAMAPRO_DEPS/hf-venv"
# kubernetes-validate and hadolint (scripts/check_deploy.sh).
export LLAMAPRO_DEPLOY_VENV="$LLAMAPRO_DEPS/deploy-venv"
case ":${CMAKE_PREFIX_PATH:-}:" in
  *":$LLAMAPRO_SENTENCEPIECE_PREFIX:"*) ;;
  *) export CMAKE_PREFIX_PATH="$LLAMAPRO_SENTENCEPIECE_PREFIX${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}" ;;
esac
# nvcc lives outside PATH on a plain Debian + CUDA install.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
# OpenBLAS's threads and any OpenMP runtime must not oversubscribe the cores.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
