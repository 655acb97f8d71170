#!/usr/bin/env bash
# Installs the CRD and the controller's RBAC from deploy/ into the local
# stack (as admin), waits for the ServiceAccount's token and writes a
# kubeconfig that authenticates as that ServiceAccount, so the control plane
# runs with exactly the permissions deploy/ grants it. Prints the path.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S="${KUBERNAUT_STACK_DIR:-${TMPDIR:-/tmp}/kubernaut-stack}"
eval "$("$ROOT/scripts/stack.sh" env)"
k() { kubectl --kubeconfig "$KUBECONFIG" "$@"; }
# Test processes call this at once on a fresh stack; concurrent `kubectl
# apply`s race on creating the same objects, so callers take turns.
exec 8>"$S/.kubeconfig.lock"; flock 8

k apply -f "$ROOT/deploy/crds/remediationrequests.kubernaut.io.yaml" -f "$ROOT/deploy/base/namespace.yaml" -f "$ROOT/deploy/base/rbac.yaml" >/dev/null
k wait --for condition=established --timeout=30s crd/remediationrequests.kubernaut.io >/dev/null
# On 1.20 the token controller puts a token Secret on the ServiceAccount.
secret=""
for _ in $(seq 100); do
  secret=$(k -n kubernaut-system get serviceaccount kubernaut -o jsonpath='{.secrets[0].name}' 2>/dev/null || true)
  [ -n "$secret" ] && break
  sleep 0.2
done
[ -n "$secret" ] || { echo "controller-kubeconfig: no token for ServiceAccount kubernaut" >&2; exit 1; }
token=$(k -n kubernaut-system get secret "$secret" -o jsonpath='{.data.token}' | base64 -d)
server=$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')
out="$S/controller.kubeconfig"
tmp=$(mktemp "$out.XXXXXX")
cat > "$tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority: $S/pki/ca.crt
users:
- name: kubernaut
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: kubernaut, namespace: kubernaut-system}
current-context: local
KC
mv "$tmp" "$out"
echo "$out"
