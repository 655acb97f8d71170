#!/usr/bin/env bash
# `make loadtest`: the default storm scenario (loadtest/scenarios/default.yaml,
# or SCENARIO=path) against the local stack, end to end: two release
# replicas of `kubernaut serve` (config/dev.yaml; SNS trusting a test
# signing certificate made here), the runner's open-loop storm over four
# sources, every accepted alert accounted for from the cluster, and a
# Markdown report with plots in $CARGO_TARGET_DIR/loadtest/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kubernaut/target}"
S="${KUBERNAUT_STACK_DIR:-${TMPDIR:-/tmp}/kubernaut-stack}"
SCENARIO=${SCENARIO:-loadtest/scenarios/default.yaml}
OUT="$CARGO_TARGET_DIR/loadtest"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "the local stack, with the pod simulator"
bash scripts/stack.sh up --pods
eval "$(bash scripts/stack.sh env)"
CONTROLLER_KUBECONFIG=$(bash scripts/controller-kubeconfig.sh)

say "release builds of kubernaut and the runner (minutes when cold)"
cargo build --release -p kubernaut -p kubernaut-loadtest
BIN="$CARGO_TARGET_DIR/release"

# A signing certificate the gateway trusts, as an operator without access
# to AWS would configure it; the runner signs with its key.
SNS="$S/loadtest-sns"
TOPIC="arn:aws:sns:eu-west-1:123456789012:kubernaut-loadtest"
if [ ! -s "$SNS/key.der" ]; then
  mkdir -p "$SNS"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=sns.amazonaws.com" \
    -keyout "$SNS/key.pem" -out "$SNS/cert.pem" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$SNS/key.pem" -outform DER -out "$SNS/key.der"
fi

# Pods that a remediation replaces get new names, and alerts that name the
# old ones are then not acted on (target_not_found): one restarting rule
# keeps that share small.
RULES='[{"signal": "KubePodCrashLooping", "action": "notify_only"},
        {"signal": "KubeDeploymentReplicasMismatch", "action": "notify_only"},
        {"signal": "HighErrorRate", "action": "notify_only"},
        {"signal": "BackOff", "action": "restart_pod",
         "parameters": {"namespace": "{{resource.namespace}}", "name": "{{resource.name}}"}}]'
KPIDS=()
stop() {
  for p in "${KPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${KPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT
LOG="$S/loadtest-kubernaut.log"
: >"$LOG"
for i in 0 1; do
  env KUBECONFIG="$CONTROLLER_KUBECONFIG" DATABASE_URL="$DATABASE_URL" REDIS_URL="$REDIS_URL" \
    POD_NAME="storm-$i" \
    KUBERNAUT__GATEWAY__LISTEN=127.0.0.1:$((18280 + i)) \
    KUBERNAUT__ADMIN__LISTEN=127.0.0.1:$((18290 + i)) \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_IDENTITY__PER_SECOND=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_IDENTITY__BURST=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_SOURCE_IP__PER_SECOND=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_SOURCE_IP__BURST=1000000 \
    KUBERNAUT__GATEWAY__CLOUDWATCH__TOPICS="[\"$TOPIC\"]" \
    KUBERNAUT__GATEWAY__CLOUDWATCH__TRUSTED_CERTIFICATE_FILES="[\"$SNS/cert.pem\"]" \
    KUBERNAUT__GATEWAY__CLOUDWATCH__FETCH_CERTIFICATES=false \
    KUBERNAUT__RULES="$RULES" \
    KUBERNAUT__LOGGING__LEVEL=warn \
    "$BIN/kubernaut" serve --config config/dev.yaml >>"$LOG" 2>&1 &
  KPIDS+=($!)
done
for i in 0 1; do
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$((18290 + i))/readyz" >/dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:$((18290 + i))/readyz" >/dev/null \
    || { echo "replica $i did not become ready; see $LOG" >&2; exit 1; }
done

say "the storm: $SCENARIO"
rm -rf "$OUT" && mkdir -p "$OUT"
"$BIN/loadtest" --scenario "$SCENARIO" \
  --url http://127.0.0.1:18280,http://127.0.0.1:18281 \
  --admin-url http://127.0.0.1:18290,http://127.0.0.1:18291 \
  --sns-key "$SNS/key.der" --sns-topic "$TOPIC" --out "$OUT"
