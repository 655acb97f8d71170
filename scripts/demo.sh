#!/usr/bin/env bash
# The main job: the local stack, `kubernaut serve` with config/dev.yaml (as
# the ServiceAccount deploy/ defines), a demo namespace with a few
# Deployments, a small alert storm (firsts, re-deliveries, a burst, a
# resolution, an out-of-scope alert, an alert the local LLM analyses, a
# production StatefulSet alert that waits for approval, a bad release rolled
# back, a fix that does not help), then the requests, which path analysed
# each, the approvals by annotation, the verification of each fix (score
# and components), and the notifications a local webhook sink received.
# The pod simulator (podsim) runs the pods, so health is real.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kubernaut/target}"
S="${KUBERNAUT_STACK_DIR:-${TMPDIR:-/tmp}/kubernaut-stack}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "the local stack, with the pod simulator (the first run builds it)"
bash scripts/stack.sh up --pods
eval "$(bash scripts/stack.sh env)"
CONTROLLER_KUBECONFIG=$(bash scripts/controller-kubeconfig.sh)
say "the local LLM (llama.cpp's server, Gemma 3 270M; the first run builds it, then it is cached)"
eval "$(bash scripts/llm.sh up)"

say "building kubernaut"
# Not quiet: a cold build takes minutes, and cargo shows its progress.
cargo build -p kubernaut
BIN="$CARGO_TARGET_DIR/debug/kubernaut"

say "demo workloads (namespace kubernaut-demo is opted in; demo-unmanaged is not)"
kubectl delete namespace kubernaut-demo demo-unmanaged --ignore-not-found --wait=true >/dev/null
kubectl create namespace kubernaut-demo >/dev/null
kubectl label namespace kubernaut-demo kubernaut.io/managed=true kubernaut.io/environment=staging \
  podsim.kubernaut.io/enabled=true >/dev/null
kubectl create namespace demo-unmanaged >/dev/null
kubectl label namespace demo-unmanaged podsim.kubernaut.io/enabled=true >/dev/null
# web will get a bad release; worker is killed for memory whatever is done.
kubectl -n kubernaut-demo create deployment worker --image=registry.local/worker:oom >/dev/null
for d in cart:3 checkout:2 payments:2 search:1 web:2; do
  kubectl -n kubernaut-demo create deployment "${d%%:*}" --image=registry.local/"${d%%:*}":1.0 --replicas="${d##*:}" >/dev/null
done
kubectl -n demo-unmanaged create deployment legacy --image=registry.local/legacy:1.0 >/dev/null
kubectl delete namespace kubernaut-prod --ignore-not-found --wait=true >/dev/null
kubectl create namespace kubernaut-prod >/dev/null
kubectl label namespace kubernaut-prod kubernaut.io/managed=true kubernaut.io/environment=production \
  podsim.kubernaut.io/enabled=true >/dev/null
# Kubernaut's actions may write only where they are bound.
"$BIN" rbac kubernaut-demo kubernaut-prod | kubectl apply -f - >/dev/null
kubectl -n kubernaut-prod apply -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 1
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: registry.local/db:1.0}]}
YAML
for _ in $(seq 150); do
  [ "$(kubectl get pods -A -l 'app in (cart,checkout,payments,search,legacy,db,web,worker)' --no-headers 2>/dev/null | grep -c Running)" -ge 13 ] && break
  sleep 0.2
done
say "a bad release of web: its new pods crash-loop"
kubectl -n kubernaut-demo set image deployment/web web=registry.local/web:2.0-crashloop >/dev/null
for _ in $(seq 100); do
  kubectl -n kubernaut-demo get pods -l app=web --no-headers 2>/dev/null | grep -q CrashLoopBackOff && break
  sleep 0.2
done
kubectl -n kubernaut-demo get pods

say "a local webhook sink for the notifications ($S/notifications.jsonl)"
SINK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
: > "$S/notifications.jsonl"
python3 - "$SINK_PORT" "$S/notifications.jsonl" <<'PY' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
PY
SINK_PID=$!

say "starting kubernaut serve --config config/dev.yaml (logs: $S/kubernaut.log)"
# The LLM analyses HighErrorRate; the other alerts go to the rules.
KUBECONFIG="$CONTROLLER_KUBECONFIG" DATABASE_URL="$DATABASE_URL" REDIS_URL="$REDIS_URL" \
  KUBERNAUT__ANALYSIS__LLM__ENABLED=true KUBERNAUT__ANALYSIS__LLM__BASE_URL="$LLM_URL" \
  KUBERNAUT__ANALYSIS__LLM__MODEL="$LLM_MODEL" KUBERNAUT__ANALYSIS__LLM__SCHEMA_MODE=jsonObjectSchema \
  KUBERNAUT__ANALYSIS__LLM__FOLD_SYSTEM_PROMPT=true KUBERNAUT__ANALYSIS__LLM__MAX_TOKENS=400 \
  KUBERNAUT__ANALYSIS__LLM__SIGNALS='[HighErrorRate]' \
  KUBERNAUT__VERIFICATION__WINDOW_SECONDS=8 \
  KUBERNAUT__NOTIFICATIONS__RECEIVERS="[{\"name\": \"sink\", \"webhook\": {\"url\": \"http://127.0.0.1:$SINK_PORT/hook\"}}]" \
  KUBERNAUT__NOTIFICATIONS__ROUTES='[{"receiver": "sink"}]' \
  "$BIN" serve --config config/dev.yaml >"$S/kubernaut.log" 2>&1 &
KPID=$!
trap 'kill $KPID $SINK_PID 2>/dev/null || true; wait $KPID $SINK_PID 2>/dev/null || true' EXIT
for _ in $(seq 150); do curl -sf http://127.0.0.1:9090/readyz >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:9090/readyz >/dev/null || { echo "kubernaut did not become ready; see $S/kubernaut.log" >&2; exit 1; }

# config/dev.yaml accepts this static token (K-GW-7: authentication is on).
AUTH="Authorization: Bearer ${KUBERNAUT_DEV_TOKEN:-dev-token}"
pod() { kubectl -n "$1" get pods -l app="$2" -o jsonpath="{.items[$3].metadata.name}"; }
alert() { # namespace pod alertname status startsAt
  cat <<JSON
{"status":"$4","labels":{"alertname":"$3","namespace":"$1","pod":"$2","severity":"warning"},"annotations":{"summary":"demo"},"startsAt":"$5","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"$(printf '%s' "$1/$2/$3" | sha256sum | cut -c1-16)"}
JSON
}
fire() { # label, alerts...
  local label=$1; shift
  local IFS=,
  local body="{\"version\":\"4\",\"groupKey\":\"demo\",\"truncatedAlerts\":0,\"status\":\"firing\",\"receiver\":\"kubernaut\",\"groupLabels\":{},\"commonLabels\":{},\"commonAnnotations\":{},\"externalURL\":\"\",\"alerts\":[$*]}"
  printf '%-46s ' "$label"
  curl -s -w ' [HTTP %{http_code}]\n' -H "$AUTH" -H 'content-type: application/json' --data "$body" \
    http://127.0.0.1:8080/api/v1/signals/alertmanager | cut -c1-140
}
T0=$(date -u +%Y-%m-%dT%H:%M:%SZ)
CART0=$(pod kubernaut-demo cart 0); CART1=$(pod kubernaut-demo cart 1)
CHECKOUT0=$(pod kubernaut-demo checkout 0); PAY0=$(pod kubernaut-demo payments 0)
SEARCH0=$(pod kubernaut-demo search 0); DB0=$(pod kubernaut-prod db 0)
LEGACY0=$(pod demo-unmanaged legacy 0)
WEB0=$(kubectl -n kubernaut-demo get pods -l app=web --no-headers | awk '/CrashLoopBackOff/ {print $1; exit}')
WORKER0=$(pod kubernaut-demo worker 0)

say "the alert storm"
fire "cart crash-looping (first)" "$(alert kubernaut-demo "$CART0" KubePodCrashLooping firing "$T0")"
fire "cart crash-looping (re-delivered)" "$(alert kubernaut-demo "$CART0" KubePodCrashLooping firing "$T0")"
fire "cart: another pod, same incident" "$(alert kubernaut-demo "$CART1" KubePodNotReady firing "$T0")"
fire "checkout + payments in one batch (207)" \
  "$(alert kubernaut-demo "$CHECKOUT0" KubePodCrashLooping firing "$T0")" \
  "$(alert kubernaut-demo "$PAY0" KubeDeploymentReplicasMismatch firing "$T0")"
fire "payments resolved (recorded on its request)" "$(alert kubernaut-demo "$PAY0" KubeDeploymentReplicasMismatch resolved "$T0")"
fire "search error rate (analysed by the LLM)" "$(alert kubernaut-demo "$SEARCH0" HighErrorRate firing "$T0")"
fire "production db replication lag (approval)" "$(alert kubernaut-prod "$DB0" DatabaseReplicationLag firing "$T0")"
fire "web: the new release crash-loops (rollback)" "$(alert kubernaut-demo "$WEB0" KubeDeploymentRolloutBroken firing "$T0")"
fire "worker OOM-killed (a restart will not help)" "$(alert kubernaut-demo "$WORKER0" KubePodCrashLooping firing "$T0")"
fire "legacy (namespace not opted in)" "$(alert demo-unmanaged "$LEGACY0" KubePodCrashLooping firing "$T0")"
printf '%-46s ' "burst: checkout re-delivered 20x at once"
# In a subshell, so that `wait` waits for the curls and not for kubernaut.
( for _ in $(seq 20); do
    curl -s -o /dev/null -w '%{http_code}\n' -H "$AUTH" -H 'content-type: application/json' \
      --data "{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[$(alert kubernaut-demo "$CHECKOUT0" KubePodCrashLooping firing "$T0")]}" \
      http://127.0.0.1:8080/api/v1/signals/alertmanager &
  done; wait ) | sort | uniq -c | sed 's/^ */HTTP /' | tr '\n' ' '; echo
fire "malformed JSON" '{"broken": '
printf '%-46s ' "no bearer token"
curl -s -w ' [HTTP %{http_code}]\n' -H 'content-type: application/json' --data '{}' \
  http://127.0.0.1:8080/api/v1/signals/alertmanager | cut -c1-140

say "waiting for the requests to finish (or to wait for approval)"
settled() { kubectl get rr -A -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -cvE '^(Completed|Failed|Skipped|TimedOut|Cancelled|AwaitingApproval)$' || true; }
for _ in $(seq 240); do [ "$(settled)" -eq 0 ] && break; sleep 0.5; done

say "kubectl get rr -n kubernaut-demo; kubectl get rr -n kubernaut-prod"
kubectl get rr -n kubernaut-demo; kubectl get rr -n kubernaut-prod
say "which path analysed each request (status.analysis: decidedBy, reason)"
kubectl get rr -n kubernaut-demo -o jsonpath='{range .items[?(@.status.analysis)]}{.spec.signalName}{" on "}{.spec.target.name}{": "}{.status.analysis.decidedBy}{" - "}{.status.analysis.reason}{" ["}{.status.analysis.action}{"]\n"}{end}'
kubectl get rr -n kubernaut-prod -o jsonpath='{range .items[?(@.status.analysis)]}{.spec.signalName}{" on "}{.spec.target.name}{": "}{.status.analysis.decidedBy}{" - "}{.status.analysis.reason}{" ["}{.status.analysis.action}{"]\n"}{end}'
kubectl get rr -n kubernaut-demo -o jsonpath='{range .items[?(@.status.analysis.decidedBy=="llm")]}LLM diagnosis: {.status.analysis.rootCause} (confidence {.status.analysis.confidence}){"\n"}{end}'

approve() { # namespace request
  kubectl -n "$1" get rr "$2" -o jsonpath='{.metadata.name}: {.status.phase} - {.status.message}{"\n"}'
  say "kubectl -n $1 annotate rr $2 kubernaut.io/approval=approved"
  kubectl -n "$1" annotate rr "$2" kubernaut.io/approval=approved >/dev/null
  for _ in $(seq 120); do
    case "$(kubectl -n "$1" get rr "$2" -o jsonpath='{.status.phase}')" in Completed|Failed|TimedOut|Cancelled) break ;; esac
    sleep 0.5
  done
  kubectl -n "$1" get rr "$2" -o jsonpath='{range .status.phaseHistory[*]}{.phase}{" ("}{.reason}{") "}{end}{"\n"}approved by {.status.approval.decidedBy}{"\n"}'
}
say "the production request waits for approval"
PROD=$(kubectl -n kubernaut-prod get rr -o jsonpath='{.items[0].metadata.name}')
approve kubernaut-prod "$PROD"
kubectl -n kubernaut-prod get statefulset db -o jsonpath='db replicas now {.spec.replicas}{"\n"}'
say "the rollback of web is high-risk: it waits for approval too"
WEB_RR=$(kubectl -n kubernaut-demo get rr -o jsonpath='{range .items[?(@.spec.signalName=="KubeDeploymentRolloutBroken")]}{.metadata.name}{end}')
approve kubernaut-demo "$WEB_RR"
kubectl -n kubernaut-demo get deployment web -o jsonpath='web: {.status.availableReplicas}/{.spec.replicas} available, image {.spec.template.spec.containers[0].image}{"\n"}'

say "did the fixes work? (status.verification: outcome, score, components)"
for _ in $(seq 120); do [ "$(settled)" -eq 0 ] && break; sleep 0.5; done
kubectl get rr -n kubernaut-demo -o jsonpath='{range .items[?(@.status.verification.outcome)]}{.spec.signalName}{" on "}{.spec.target.name}{" ["}{.status.analysis.action}{"]: "}{.status.phase}{" - "}{.status.verification.outcome}{" (score "}{.status.verification.score}{")\n"}{range .status.verification.components[*]}{"    "}{.name}{" "}{.score}{": "}{.evidence}{"\n"}{end}{end}'
say "pods after remediation (web rolled back; worker still OOM-killed)"
kubectl -n kubernaut-demo get pods
say "notifications the webhook sink received"
python3 - "$S/notifications.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.strip():
        n = json.loads(line)
        if n["namespace"] not in ("kubernaut-demo", "kubernaut-prod"):
            continue  # requests other runs left on this stack
        print(f"{n['kind']:<18} {n['namespace']}/{n['name']}: {n['summary'][:110]}")
PY
say "gateway and controller metrics"
curl -s http://127.0.0.1:9090/metrics | grep -E '^kubernaut_(gateway_signals_total|controller_actions_total|controller_phase_transitions_total\{from="Verifying")|controller_(analyses|llm_calls|llm_tokens|approval_decisions|verifications|notifications)_total)' || true
echo
echo "The stack keeps running: \`eval \"\$(scripts/stack.sh env)\"\` to use kubectl; \`make stack-down\` stops it."
