#!/usr/bin/env bash
# Renders every kustomization under deploy/kubernetes and validates the
# output against the Kubernetes API schemas, strictly (unknown fields are
# errors). Prints one line per kustomization with its resource count; exits
# non-zero at the first failure.
#
#   deploy/kubernetes/check.sh
#
# Environment:
#   KUBECTL               kubectl to render with (default: kubectl on PATH).
#                         Any kubectl from 1.20 (kustomize v2.0.3) on works.
#   KUBERNETES_VALIDATE   kubernetes-validate (pip install kubernetes-validate)
#                         (default: kubernetes-validate on PATH).
#   K8S_VERSIONS          Space-separated Kubernetes versions to validate
#                         against (default: "1.30.0"); each must be one that
#                         kubernetes-validate ships schemas for.
#   LLAMAPROCTL           Optional: a llamaproctl binary; when set, the
#                         example pipeline is also checked with
#                         `llamaproctl submit --dry-run`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kubectl="${KUBECTL:-kubectl}"
validate="${KUBERNETES_VALIDATE:-kubernetes-validate}"
versions="${K8S_VERSIONS:-1.30.0}"

die() {
  echo "check.sh: FAILED: $*" >&2
  exit 1
}

command -v "$kubectl" >/dev/null 2>&1 || die "kubectl not found: '$kubectl' (set KUBECTL)"
command -v "$validate" >/dev/null 2>&1 ||
  die "kubernetes-validate not found: '$validate' (pip install kubernetes-validate; set KUBERNETES_VALIDATE)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

kustomizations=(base overlays/cpu-local overlays/gpu examples)

for k in "${kustomizations[@]}"; do
  dir="$here/$k"
  [[ -f "$dir/kustomization.yaml" ]] || die "$k: no kustomization.yaml"
  out="$work/${k//\//_}.yaml"
  # kustomize v5 warns about `bases` and `patchesStrategicMerge` on stderr;
  # kept out of the way unless rendering fails.
  if ! "$kubectl" kustomize "$dir" >"$out" 2>"$work/stderr"; then
    cat "$work/stderr" >&2
    die "$k: '$kubectl kustomize' failed"
  fi
  count="$(grep -c '^kind:' "$out" || true)"
  [[ "$count" -gt 0 ]] || die "$k: rendered no resources"
  for v in $versions; do
    if ! "$validate" --strict --quiet --no-warn -k "$v" "$out" >"$work/validate" 2>&1; then
      cat "$work/validate" >&2
      die "$k: kubernetes-validate --strict -k $v rejected the rendered output"
    fi
    # Older kubernetes-validate versions exit 0 on some failures: look too.
    if grep -q 'ERROR' "$work/validate"; then
      cat "$work/validate" >&2
      die "$k: kubernetes-validate --strict -k $v reported errors"
    fi
  done
  echo "ok  $k: $count resources (validated against Kubernetes $versions)"
done

if [[ -n "${LLAMAPROCTL:-}" ]]; then
  if ! "$LLAMAPROCTL" submit --dry-run "$here/examples/pipeline.yaml" >"$work/dry-run" 2>&1; then
    cat "$work/dry-run" >&2
    die "examples/pipeline.yaml: '$LLAMAPROCTL submit --dry-run' refused it"
  fi
  echo "ok  examples/pipeline.yaml: $(grep -c '"spec"' "$work/dry-run") jobs (llamaproctl submit --dry-run)"
fi
