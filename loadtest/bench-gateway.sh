#!/usr/bin/env bash
# Benchmark of the gateway's signal paths on the local stack (a benchmark,
# not a test: it prints figures and asserts only the outcome counts).
#
#   raw-create the limit: RemediationRequests created straight on the API
#              server at the same concurrency
#   new        one alert per target, each with its own alert name (one name
#              over many targets would be a storm), every one creates a
#              request; printed as a share of raw-create, once with the
#              namespace nearly empty and again in AFTER pairs (default 3)
#              after FILL more requests (the new-signal path must not slow
#              down as requests pile up).
#              Every new-signal run sends one alert to each of the TARGETS
#              Deployments, and the requests it created are deleted before
#              the next one (a target has one open request: the next alert
#              for it would be a duplicate), so runs can be long without
#              thousands of Deployments more: with 200 alerts a run took a
#              fraction of a second, and one pause of the API server moved
#              a run's rate by half (the pairs' shares went from 0.56 to
#              1.17 in one make bench). Both paths are warmed up first (a
#              just-started replica's first signals open its connections),
#              then measured in PAIRS alternating pairs (default 5), and the
#              share is the median of the pairs' shares. Every measured run
#              starts from a quiet stack (SETTLE seconds, default 3, after
#              the run before): otherwise what one run leaves the API server
#              and etcd to finish lands in the next one, and a raw run
#              measured right after a new-signal run came out at a third of
#              one measured after a raw run (325-421/s against 1 180/s).
#              Each pair also creates raw copies of a request the gateway
#              created (`--like`): the gateway stores more per request
#              than a minimal one (the alert as received, its labels, the
#              owner chain), and its share of that rate is the gateway's
#              own overhead.
#   duplicate  re-deliveries of an alert whose request exists: closed loop
#              at concurrency 32 and 128, and open loop at 5 000/s for 12 s
#   no-redis   the duplicate path again with Redis switched off
#   storm      10 000 alerts over 1 000 pods in 10 s, one alert name: every
#              accepted alert accounted for in the cluster
#   replicas   the new-signal path through 1, 2 and 3 replicas at once
#
# It runs release builds of `kubernaut serve` (gateway and admin on their own
# ports; the controller watches an empty namespace, so the figures are the
# gateway's alone) and of the loadtest runner, then redis-benchmark against
# the same Redis for reference. Figures also go, one `key=value` per line,
# to $BENCH_OUT/gateway.env (for loadtest/bench.sh). Usage:
#   loadtest/bench-gateway.sh [TARGETS]     (default 1000 Deployments, and
#   100 more for the warm-up)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${1:-1000}
PAIRS=${PAIRS:-5}
WARM=100
FILL=${FILL:-10000}
AFTER=${AFTER:-3}
DUPS=${DUPS:-20000}
DUPS5K=${DUPS5K:-60000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kubernaut/target}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
S="${KUBERNAUT_STACK_DIR:-${TMPDIR:-/tmp}/kubernaut-stack}"
OUT=${BENCH_OUT:-$S/bench}
mkdir -p "$OUT"
FIG="$OUT/gateway.env"
# Which code the figures are of: loadtest/bench.sh may write its page
# again later from these figures, at another commit.
echo "gateway_rev=$(git rev-parse --short HEAD)" >"$FIG"
CONTROLLER_KUBECONFIG=$(bash scripts/controller-kubeconfig.sh)
say "building release binaries (kubernaut, loadtest)"
cargo build --release -p kubernaut -p kubernaut-loadtest
BIN="$CARGO_TARGET_DIR/release"

# namespace NAME DEPLOYMENTS: a managed namespace with one pod per Deployment.
namespace() {
  kubectl create namespace "$1" >/dev/null
  kubectl label namespace "$1" kubernaut.io/managed=true kubernaut.io/environment=staging >/dev/null
  for i in $(seq -w 1 "$2"); do
    cat <<YAML
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i, namespace: $1}
spec:
  replicas: 1
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata: {labels: {app: app-$i}}
    spec: {containers: [{name: app, image: registry.local/app:1.0}]}
YAML
  done | kubectl apply -f - >/dev/null
  for _ in $(seq 600); do
    [ "$(kubectl -n "$1" get pods --no-headers 2>/dev/null | wc -l)" -ge "$2" ] && return
    sleep 0.5
  done
  echo "the pods of $1 did not all appear" >&2; exit 1
}
# pods NS FROM COUNT: comma-separated pod names, a slice of the namespace's.
# Pods $2+1 .. $2+$3 of $1 by name, comma-separated. awk reads all its
# input: with `tail | head`, head's early exit could kill tail with SIGPIPE,
# which pipefail turns into a failed run.
pods() {
  kubectl -n "$1" get pods -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' \
    | sort | awk -v from="$2" -v n="$3" 'NR > from && NR <= from + n' | paste -sd, -
}

RUN=$(date +%s)
NS="bench-$RUN"
say "$((N + WARM)) Deployments with one pod each in $NS"
namespace "$NS" $((N + WARM))

GW=127.0.0.1:18080
KPIDS=()
# serve PORT-OFFSET env...: one replica, its gateway on 18080+offset.
serve() {
  local off=$1; shift
  env KUBECONFIG="$CONTROLLER_KUBECONFIG" DATABASE_URL="$DATABASE_URL" \
    KUBERNAUT__GATEWAY__LISTEN=127.0.0.1:$((18080 + off)) \
    KUBERNAUT__ADMIN__LISTEN=127.0.0.1:$((18090 + off)) \
    KUBERNAUT__CONTROLLER__WATCH_NAMESPACE=kubernaut-bench-idle \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_IDENTITY__PER_SECOND=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_IDENTITY__BURST=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_SOURCE_IP__PER_SECOND=1000000 \
    KUBERNAUT__GATEWAY__RATE_LIMIT__PER_SOURCE_IP__BURST=1000000 \
    KUBERNAUT__LOGGING__LEVEL=warn "$@" \
    "$BIN/kubernaut" serve --config config/dev.yaml >>"$S/bench-kubernaut.log" 2>&1 &
  KPIDS+=($!)
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$((18090 + off))/readyz" >/dev/null && return; sleep 0.2; done
  echo "kubernaut did not become ready; see $S/bench-kubernaut.log" >&2; exit 1
}
stop() {
  for p in "${KPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${KPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  KPIDS=()
}
trap stop EXIT
url() { echo "http://127.0.0.1:$((18080 + $1))/api/v1/signals/alertmanager"; }
# figures KEY FILE: the run's throughput and latency percentiles as KEY_*.
figures() {
  awk -v k="$1" '
    /^elapsed/ { printf "%s_rate=%.0f\n", k, $5 }
    /^latency ms/ { printf "%s_p50=%s\n%s_p99=%s\n", k, $4, k, $8 }
    /^accounted/ { printf "%s_accepted=%s\n%s_lost=%s\n%s_requests=%s\n%s_storm_requests=%s\n", k, $4, k, $NF, k, $8, k, substr($10, 2) }
  ' "$2" >>"$FIG"
}
lt() { # KEY loadtest-args...
  local key=$1; shift
  sleep "${SETTLE:-3}"
  "$BIN/loadtest" --namespace "$NS" --label "$key" "$@" | tee "$OUT/$key.txt"
  figures "$key" "$OUT/$key.txt"
}
share() { # NEW RAW
  awk -v n="$(awk -F= -v k="$1_rate" '$1==k {print $2}' "$FIG")" \
    -v r="$(awk -F= -v k="$2_rate" '$1==k {print $2}' "$FIG")" 'BEGIN { printf "%.3f", n / r }'
}
# Runs repeated COUNT times are keyed with their number where KEY has '@'.
# each KEY COUNT: their figures, joined by '/'.
each() {
  for i in $(seq "$2"); do awk -F= -v k="${1/@/$i}" '$1==k {print $2}' "$FIG"; done | paste -sd/ -
}
# median KEY COUNT: the median of their figures.
median() { each "$1" "$2" | tr / '\n' | sort -n | awk -v m=$((($2 + 1) / 2)) 'NR == m'; }
# median_run KEY COUNT: the number of the run whose figure is the median.
median_run() {
  for i in $(seq "$2"); do awk -F= -v k="${1/@/$i}" -v i="$i" '$1==k {print $2, i}' "$FIG"; done |
    sort -n | awk -v m=$((($2 + 1) / 2)) 'NR == m {print $2}'
}
# stands_for RUN KINDS...: run RUN's rates and latencies of each KIND, as
# KIND_rate, KIND_p50 and KIND_p99.
stands_for() {
  local run=$1 m k
  shift
  for m in rate p50 p99; do
    for k in "$@"; do
      awk -F= -v k="$k${run}_$m" -v o="${k}_$m" '$1==k {print o "=" $2}' "$FIG"
    done
  done
}

# The measured runs' targets, and the warm-up's (whose requests stay: one of
# them is the request the `--like` runs copy).
ALL=$(pods "$NS" 0 "$N")
serve 0 REDIS_URL="$REDIS_URL"
say "warm-up: 300 raw creates and $WARM new signals, not measured"
lt warm_raw --raw-create --pods "$ALL" --requests 300 --concurrency 8 --expect-created 300 >/dev/null
lt warm_new --url "$(url 0)" --pods "$(pods "$NS" "$N" "$WARM")" --requests "$WARM" \
  --concurrency 8 --expect-created "$WARM" --distinct-alertnames >/dev/null
LIKE=$(kubectl -n "$NS" get remediationrequests -l app.kubernetes.io/managed-by=kubernaut \
  -o jsonpath='{.items[0].metadata.name}')
# forget: the requests of the measured targets (the gateway's and their
# copies) deleted, so that each target takes a new signal again; returns
# once the API server lists none of them.
forget() {
  local keep=(-l app.kubernetes.io/managed-by=kubernaut --field-selector "metadata.name!=$LIKE")
  kubectl -n "$NS" delete remediationrequests "${keep[@]}" --wait=false >/dev/null
  for _ in $(seq 600); do
    [ -z "$(kubectl -n "$NS" get remediationrequests "${keep[@]}" -o name)" ] && return
    sleep 0.5
  done
  echo "the requests of $NS's targets were not deleted in 5 minutes" >&2; exit 1
}
# size NAME: the bytes of JSON a request's labels and spec take.
size() {
  kubectl -n "$NS" get remediationrequest "$1" -o json | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(len(json.dumps({"labels": r["metadata"].get("labels"), "spec": r["spec"]}, separators=(",", ":"))))'
}
echo "like_bytes=$(size "$LIKE")" >>"$FIG"
for i in $(seq "$PAIRS"); do
  forget
  say "pair $i of $PAIRS: $N RemediationRequests created on the API server (minimal, then copies of $LIKE), then $N new signals (distinct names, one per target), concurrency 8"
  lt "raw$i" --raw-create --pods "$ALL" --requests "$N" --concurrency 8 --expect-created "$N"
  lt "like$i" --raw-create --like "$LIKE" --pods "$ALL" --requests "$N" --concurrency 8 \
    --expect-created "$N"
  lt "new$i" --url "$(url 0)" --pods "$ALL" --requests "$N" --concurrency 8 \
    --expect-created "$N" --distinct-alertnames --svg "$OUT/new$i.svg"
  echo "new${i}_share=$(share "new$i" "raw$i")" >>"$FIG"
  echo "new${i}_like_share=$(share "new$i" "like$i")" >>"$FIG"
done
# The pair whose share is the median stands for the run (its rates and
# latencies are reported as raw_* and new_*); every pair's share is kept.
median_pair=$(median_run new@_share "$PAIRS")
stands_for "$median_pair" raw like new >>"$FIG"
echo "raw_bytes=$(size "$(kubectl -n "$NS" get remediationrequests -o name | sed -n 's|.*/\(raw-.*\)|\1|p' | awk 'NR == 1')")" >>"$FIG"
{
  echo "new_share=$(share "new$median_pair" "raw$median_pair")"
  echo "new_shares=$(each new@_share "$PAIRS")"
  # The median of the shares of the copies, each pair's own.
  echo "new_like_share=$(median new@_like_share "$PAIRS")"
  echo "new_like_shares=$(each new@_like_share "$PAIRS")"
  echo "pairs=$PAIRS"
  echo "targets=$N"
} >>"$FIG"
cp "$OUT/new$median_pair.svg" "$OUT/new.svg"

say "$FILL more requests in $NS, then the new-signal path again"
lt fill --raw-create --pods "$ALL" --requests "$FILL" \
  --concurrency 16 --expect-created "$FILL"
# Several runs after the fill too: one run's rate moves by a fifth from
# run to run here, so "flat" compares medians.
for i in $(seq "$AFTER"); do
  forget
  lt "raw_full$i" --raw-create --pods "$ALL" --requests "$N" \
    --concurrency 8 --expect-created "$N"
  lt "new_full$i" --url "$(url 0)" --pods "$ALL" --requests "$N" --concurrency 8 \
    --expect-created "$N" --distinct-alertnames
  echo "new_full${i}_share=$(share "new_full$i" "raw_full$i")" >>"$FIG"
done
median_after=$(median_run new_full@_share "$AFTER")
stands_for "$median_after" raw_full new_full >>"$FIG"
{
  echo "new_full_share=$(share "new_full$median_after" "raw_full$median_after")"
  echo "new_rates_median=$(median new@_rate "$PAIRS")"
  echo "new_full_rates_median=$(median new_full@_rate "$AFTER")"
  echo "new_full_rates=$(each new_full@_rate "$AFTER")"
  echo "new_rates=$(each new@_rate "$PAIRS")"
  echo "after=$AFTER"
  echo "fill=$FILL"
} >>"$FIG"

ONE=$(pods "$NS" 0 1)
say "duplicate path (Redis): $DUPS re-deliveries of one alert"
lt dup32 --url "$(url 0)" --pods "$ONE" --requests "$DUPS" --concurrency 32 --duplicate-share 1 \
  --expect-created 0 --svg "$OUT/duplicate.svg"
lt dup128 --url "$(url 0)" --pods "$ONE" --requests "$DUPS" --concurrency 128 --duplicate-share 1 \
  --expect-created 0
# 12 s, so that the client's first second (opening its connections) is
# not a quarter of the run.
lt dup5k --url "$(url 0)" --pods "$ONE" --requests "$DUPS5K" --concurrency 512 --rate 5000 \
  --duplicate-share 1 --expect-created 0
stop

serve 0 REDIS_URL=
say "duplicate path (no Redis): $DUPS re-deliveries of one alert"
lt nored32 --url "$(url 0)" --pods "$ONE" --requests "$DUPS" --concurrency 32 --duplicate-share 1 \
  --expect-created 0
lt nored128 --url "$(url 0)" --pods "$ONE" --requests "$DUPS" --concurrency 128 \
  --duplicate-share 1 --expect-created 0
stop

say "replicas: the new-signal path through 1, 2 and 3 replicas, concurrency 8 each"
for r in 1 2 3; do
  urls=""
  for i in $(seq 0 $((r - 1))); do
    serve "$i" REDIS_URL="$REDIS_URL"
    urls="$urls${urls:+,}$(url "$i")"
  done
  forget
  lt "replicas$r" --url "$urls" --pods "$ALL" --requests "$N" \
    --concurrency $((8 * r)) --expect-created "$N" --distinct-alertnames
  stop
done

say "storm: 10000 alerts over 1000 pods in 10 s (1000/s), one alert name"
STORM="bench-storm-$RUN"
namespace "$STORM" 1000
serve 0 REDIS_URL="$REDIS_URL"
"$BIN/loadtest" --namespace "$STORM" --label storm --url "$(url 0)" \
  --pods "$(pods "$STORM" 0 1000)" --requests 10000 --rate 1000 --concurrency 512 \
  --duplicate-share 0 --account --svg "$OUT/storm.svg" | tee "$OUT/storm.txt"
figures storm "$OUT/storm.txt"
{ grep -o '5[0-9][0-9]: [0-9]*' "$OUT/storm.txt" || true; } | awk '{s += $2} END {print "storm_5xx=" s + 0}' >>"$FIG"
stop

say "reference: redis-benchmark on the same Redis (100000 requests, 32 clients)"
redis-benchmark -p "${REDIS_URL##*:}" -q -n 100000 -c 32 -t set,get | tr '\r' '\n' \
  | awk '/^(SET|GET): [0-9]/ { printf "redis_%s=%.0f\n", tolower(substr($1, 1, 3)), $2 }' | tee -a "$FIG"
kubectl delete namespace "$NS" "$STORM" --wait=false >/dev/null
say "figures in $FIG"
