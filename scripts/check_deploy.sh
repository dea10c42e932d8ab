#!/usr/bin/env bash
# Checks everything under deploy/ with the real tools (docs/deploy.md):
#   * Kubernetes: every kustomization (base, overlays, example) rendered with
#     `kubectl kustomize` and validated against the Kubernetes API schemas
#     (kubernetes-validate --strict, offline) for Kubernetes 1.30 and 1.34;
#     with a llamaproctl given, the example pipeline accepted by
#     `llamaproctl submit --dry-run`;
#   * Prometheus: `promtool check config` on both configs, `promtool check
#     rules`, the alert unit tests (`promtool test rules`), and the
#     PrometheusRule in sync with the rule files;
#   * Grafana: the dashboards in sync with their generator;
#   * Docker: hadolint on both Dockerfiles;
#   * shellcheck on the scripts under deploy/.
# Needs what scripts/setup.sh installs (kubectl, promtool, shellcheck, and
# the tools venv $LLAMAPRO_DEPLOY_VENV). ctest runs it as `deploy_check`.
#
# Usage: scripts/check_deploy.sh [LLAMAPROCTL]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=env.sh
source "$root/scripts/env.sh"
venv="$LLAMAPRO_DEPLOY_VENV"
python=/usr/bin/python3
fail() {
  echo "check_deploy: FAILED: $*" >&2
  exit 1
}
for tool in kubectl promtool shellcheck "$venv/bin/kubernetes-validate" "$venv/bin/hadolint"; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing: run scripts/setup.sh"
done

echo "== Kubernetes"
KUBECTL=kubectl KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate" \
  K8S_VERSIONS="1.30.0 1.34.0" LLAMAPROCTL="${1:-}" "$root/deploy/kubernetes/check.sh"

echo "== Prometheus"
cd "$root/deploy/prometheus"
for config in prometheus.yml prometheus-static.yml; do
  promtool check config "$config" >/dev/null || fail "promtool check config $config"
  echo "ok  promtool check config $config"
done
promtool check rules rules/*.yml >/dev/null || fail "promtool check rules"
echo "ok  promtool check rules: $(grep -c -- '- alert:' rules/llamapro-alerts.rules.yml) alerts," \
  "$(grep -c -- '- record:' rules/llamapro-recording.rules.yml) recording rules"
promtool test rules tests/alerts_test.yml >/dev/null || fail "promtool test rules tests/alerts_test.yml"
echo "ok  promtool test rules tests/alerts_test.yml"
"$python" gen_prometheusrule.py --check

echo "== Grafana"
"$python" "$root/deploy/grafana/gen_dashboards.py" --check

echo "== Docker"
cd "$root/deploy/docker"
"$venv/bin/hadolint" --config hadolint.yaml Dockerfile Dockerfile.worker-cuda || fail "hadolint"
echo "ok  hadolint Dockerfile Dockerfile.worker-cuda"

echo "== shellcheck"
mapfile -t scripts < <(find "$root/deploy" -name '*.sh' | sort)
shellcheck "${scripts[@]}" || fail "shellcheck"
echo "ok  shellcheck: ${#scripts[@]} scripts"
echo "check_deploy: all passed"
