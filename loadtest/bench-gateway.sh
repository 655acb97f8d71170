#!/usr/bin/env bash
# Benchmark of the gateway's signal paths on the local stack (a benchmark,
# not a test: it prints figures and asserts only the outcome counts).
#
#   raw-create the limit: as many RemediationRequests created straight on the
#              API server at the same concurrency
#   new        one alert per target, each with its own alert name (one name
#              over many targets would be a storm), every one creates a
#              request; printed as a share of raw-create
#   duplicate  re-deliveries of alerts whose request exists (Redis instance
#              index, then the group-committed occurrence count)
#   no-redis   the duplicate path again with Redis switched off in kubernaut
#
# It runs release builds of `kubernaut serve` (gateway and admin on their own
# ports; the controller watches an empty namespace, so the figures are the
# gateway's alone) and of the loadtest runner, then redis-benchmark against
# the same Redis for reference. Usage: loadtest/bench-gateway.sh [TARGETS]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${1:-200}
DUPS=${DUPS:-5000}
SLOW_DUPS=${SLOW_DUPS:-500}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kubernaut/target}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
S="${KUBERNAUT_STACK_DIR:-${TMPDIR:-/tmp}/kubernaut-stack}"
CONTROLLER_KUBECONFIG=$(bash scripts/controller-kubeconfig.sh)
say "building release binaries (kubernaut, loadtest)"
cargo build --release -q -p kubernaut -p kubernaut-loadtest
BIN="$CARGO_TARGET_DIR/release"

NS="bench-$(date +%s)"
say "$N Deployments with one pod each in $NS"
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" kubernaut.io/managed=true kubernaut.io/environment=staging >/dev/null
for i in $(seq -w 1 "$N"); do
  cat <<YAML
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata: {labels: {app: app-$i}}
    spec: {containers: [{name: app, image: registry.local/app:1.0}]}
YAML
done | kubectl apply -f - >/dev/null
for _ in $(seq 300); do
  [ "$(kubectl -n "$NS" get pods --no-headers 2>/dev/null | wc -l)" -ge "$N" ] && break
  sleep 0.5
done
PODS=$(kubectl -n "$NS" get pods -o jsonpath='{range .items[*]}{.metadata.name}{","}{end}')
PODS=${PODS%,}
ONE=${PODS%%,*}

GW=127.0.0.1:18080
serve() { # extra env...
  env KUBECONFIG="$CONTROLLER_KUBECONFIG" DATABASE_URL="$DATABASE_URL" \
    KUBERNAUT__GATEWAY__LISTEN=$GW KUBERNAUT__ADMIN__LISTEN=127.0.0.1:18090 \
    KUBERNAUT__CONTROLLER__WATCH_NAMESPACE=kubernaut-bench-idle \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_IDENTITY__PER_SECOND=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_IDENTITY__BURST=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_SOURCE_IP__PER_SECOND=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_SOURCE_IP__BURST=1000000 \
    KUBERNAUT__LOGGING__LEVEL=warn "$@" \
    "$BIN/kubernaut" serve --config config/dev.yaml >>"$S/bench-kubernaut.log" 2>&1 &
  KPID=$!
  for _ in $(seq 150); do curl -sf http://127.0.0.1:18090/readyz >/dev/null && return; sleep 0.2; done
  echo "kubernaut did not become ready; see $S/bench-kubernaut.log" >&2; exit 1
}
stop() { kill "$KPID" 2>/dev/null || true; wait "$KPID" 2>/dev/null || true; }
trap stop EXIT
LT=("$BIN/loadtest" --url "http://$GW/api/v1/signals/alertmanager" --namespace "$NS")

say "the limit: $N RemediationRequests created on the API server, concurrency 8"
"$BIN/loadtest" --raw-create --namespace "$NS" --label raw-create --pods "$PODS" --requests "$N" \
  --concurrency 8 --expect-created "$N" | tee "$S/bench-raw.txt"

serve REDIS_URL="$REDIS_URL"
say "new-signal path: $N alerts with distinct names, $N targets, concurrency 8"
"${LT[@]}" --label new --pods "$PODS" --requests "$N" --concurrency 8 --expect-created "$N" \
  --distinct-alertnames --svg "$S/bench-new.svg" | tee "$S/bench-new.txt"
rate() { awk '/^elapsed/ {print $5}' "$1"; }
awk -v new="$(rate "$S/bench-new.txt")" -v raw="$(rate "$S/bench-raw.txt")" \
  'BEGIN { printf "new-signal path: %.0f alerts/s = %.3f x the raw create rate (%.0f/s)\n", new, new / raw, raw }'
say "duplicate path (Redis): $DUPS re-deliveries of one alert, concurrency 32"
"${LT[@]}" --label duplicate --pods "$ONE" --requests "$DUPS" --concurrency 32 --duplicate-share 1 \
  --expect-created 0 --svg "$S/bench-duplicate.svg"
stop

serve REDIS_URL=
say "duplicate path (no Redis): $SLOW_DUPS re-deliveries of one alert, concurrency 32"
"${LT[@]}" --label duplicate-no-redis --pods "$ONE" --requests "$SLOW_DUPS" --concurrency 32 \
  --duplicate-share 1 --expect-created 0
stop

say "reference: redis-benchmark on the same Redis (100000 requests, 32 clients)"
redis-benchmark -p "${REDIS_URL##*:}" -q -n 100000 -c 32 -t set,get
kubectl delete namespace "$NS" --wait=false >/dev/null
