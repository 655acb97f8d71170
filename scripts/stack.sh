#!/usr/bin/env bash
# The real local stack every test and the demo run against, on 127.0.0.1:
# etcd, kube-apiserver (RBAC, token auth, TLS) and kube-controller-manager
# v1.20.2, PostgreSQL and Redis, each on a free port with its data under
# $KUBERNAUT_STACK_DIR (default: $TMPDIR/kubernaut-stack).
#
#   scripts/stack.sh up       start what is not running (idempotent)
#   scripts/stack.sh up --pods  the same, plus the pod simulator
#   scripts/stack.sh pods     start the pod simulator (podsim: a kubelet and
#                             scheduler stand-in, tests/src/podsim.rs) for
#                             namespaces labelled podsim.kubernaut.io/enabled=true;
#                             $KUBERNAUT_PODSIM_BIN names a built binary
#   scripts/stack.sh down     stop everything and delete the state
#   scripts/stack.sh status   exit 0 when every service is up
#   scripts/stack.sh env      KUBECONFIG=, DATABASE_URL=, REDIS_URL= lines to eval
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
S="${KUBERNAUT_STACK_DIR:-${TMPDIR:-/tmp}/kubernaut-stack}"
CACHE="${KUBERNAUT_CACHE:-$HOME/.cache/kubernaut}"
K8S_BIN="$CACHE/k8s-1.20.2/bin"
PG_BIN=/usr/lib/postgresql/15/bin
SERVICES=(etcd kube-apiserver kube-controller-manager postgres redis)
# Kubernetes 1.20 has the TTL-after-finished controller (run_job's Jobs
# clean themselves up, as on 1.21+) behind this gate.
FEATURE_GATES=TTLAfterFinished=true
# Bumped when the servers' flags change: a running stack with an older
# revision has its API server and controller-manager restarted.
STACK_REV=4

log() { echo "stack: $*" >&2; }

free_ports() { # N -> N distinct free loopback ports
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

alive() { [ -f "$S/$1.pid" ] && kill -0 "$(cat "$S/$1.pid")" 2>/dev/null; }

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

wait_for() { # description, seconds, command...
  local what=$1 secs=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then log "$what did not come up in ${secs}s; logs in $S"; return 1; fi
    sleep 0.3
  done
}

gen_pki() {
  [ -f "$S/pki/done" ] && return 0
  log "generating certificates, service-account key and tokens"
  mkdir -p "$S/pki"; cd "$S/pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kubernaut-local-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  cat > server.ext <<EXT
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth
EXT
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout server.key -out server.csr 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile server.ext -out server.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  # Static tokens: an admin for tests and tooling, and the controller-manager,
  # whose bootstrap role alone cannot create ReplicaSets, in system:masters.
  echo "$(openssl rand -hex 24),kubernaut-admin,uid-admin,\"system:masters\"" > tokens.csv
  echo "$(openssl rand -hex 24),system:kube-controller-manager,uid-kcm,\"system:masters\"" >> tokens.csv
  touch done
  cd - >/dev/null
}

kubeconfig() { # file user token port
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$4
    certificate-authority: $S/pki/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: local
  context: {cluster: local, user: $2, namespace: default}
current-context: local
KC
}

up() {
  "$ROOT/scripts/deps.sh"
  "$ROOT/scripts/build-k8s.sh"
  mkdir -p "$S"
  # Concurrent test binaries call `up` together. Services are started with
  # fd 9 closed, or they would hold the lock for as long as they run.
  exec 9>"$S/.lock"; flock 9
  if [ "$(cat "$S/rev" 2>/dev/null)" != "$STACK_REV" ]; then
    for svc in kube-controller-manager kube-apiserver; do
      if alive "$svc"; then
        log "restarting $svc with the flags of stack revision $STACK_REV"
        kill "$(cat "$S/$svc.pid")" 2>/dev/null || true
        for _ in $(seq 100); do alive "$svc" || break; sleep 0.1; done
        # An API server with watches open can hang in its shutdown.
        if alive "$svc"; then kill -9 "$(cat "$S/$svc.pid")" 2>/dev/null || true; sleep 0.5; fi
      fi
    done
    echo "$STACK_REV" > "$S/rev"
  fi
  if status >/dev/null 2>&1; then return 0; fi
  log "starting the local stack in $S"
  gen_pki
  if [ ! -f "$S/ports" ]; then
    read -r EP EPP AP PGP RP < <(free_ports 5)
    printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPI_PORT=%s\nPG_PORT=%s\nREDIS_PORT=%s\n' \
      "$EP" "$EPP" "$AP" "$PGP" "$RP" > "$S/ports"
  fi
  # shellcheck disable=SC1091
  . "$S/ports"
  ADMIN_TOKEN=$(sed -n 1p "$S/pki/tokens.csv" | cut -d, -f1)
  KCM_TOKEN=$(sed -n 2p "$S/pki/tokens.csv" | cut -d, -f1)
  kubeconfig "$S/admin.kubeconfig" kubernaut-admin "$ADMIN_TOKEN" "$API_PORT"
  kubeconfig "$S/kcm.kubeconfig" system:kube-controller-manager "$KCM_TOKEN" "$API_PORT"

  if ! alive etcd; then
    mkdir -p "$S/etcd"
    nohup etcd --name local --data-dir "$S/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync \
      > "$S/etcd.log" 2>&1 9>&- &
    echo $! > "$S/etcd.pid"
    wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
  fi

  if ! alive kube-apiserver; then
    nohup "$K8S_BIN/kube-apiserver" \
      --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
      --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" --insecure-port 0 \
      --tls-cert-file "$S/pki/server.crt" --tls-private-key-file "$S/pki/server.key" \
      --client-ca-file "$S/pki/ca.crt" --token-auth-file "$S/pki/tokens.csv" \
      --authorization-mode RBAC \
      --service-account-key-file "$S/pki/sa.pub" --service-account-signing-key-file "$S/pki/sa.key" \
      --service-account-issuer https://kubernetes.default.svc \
      --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
      --allow-privileged=true --profiling=true --feature-gates "$FEATURE_GATES" \
      > "$S/kube-apiserver.log" 2>&1 9>&- &
    echo $! > "$S/kube-apiserver.pid"
    wait_for kube-apiserver 90 curl -sf --cacert "$S/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
      "https://127.0.0.1:$API_PORT/readyz"
  fi

  if ! alive kube-controller-manager; then
    nohup "$K8S_BIN/kube-controller-manager" \
      --kubeconfig "$S/kcm.kubeconfig" --controllers '*,-nodeipam,-nodelifecycle' --leader-elect=false \
      --service-account-private-key-file "$S/pki/sa.key" --root-ca-file "$S/pki/ca.crt" \
      --port 0 --secure-port 0 --feature-gates "$FEATURE_GATES" \
      --kube-api-qps 1000 --kube-api-burst 2000 --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10 \
      > "$S/kube-controller-manager.log" 2>&1 9>&- &
    echo $! > "$S/kube-controller-manager.pid"
    # The service-account controller creating `default` shows it is working.
    wait_for kube-controller-manager 60 kubectl --kubeconfig "$S/admin.kubeconfig" get serviceaccount default -n default
  fi

  if ! alive postgres; then
    if [ ! -f "$S/pg/PG_VERSION" ]; then
      mkdir -p "$S/pg"; chown postgres "$S/pg" 2>/dev/null || true
      as_postgres "$PG_BIN/initdb" -D "$S/pg" --auth=trust --username=postgres -E UTF8 >/dev/null
    fi
    mkdir -p "$S/pgsock"; chown postgres "$S/pgsock" 2>/dev/null || true
    touch "$S/postgres.log"; chown postgres "$S/postgres.log" 2>/dev/null || true
    as_postgres "$PG_BIN/pg_ctl" -D "$S/pg" -l "$S/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -k $S/pgsock -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null 9>&-
    head -n1 "$S/pg/postmaster.pid" > "$S/postgres.pid"
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='kubernaut'" | grep -q 1 ||
      psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE kubernaut" >/dev/null
  fi

  if ! alive redis; then
    mkdir -p "$S/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$S/redis" --save '' --appendonly no \
      --daemonize yes --pidfile "$S/redis.pid" --logfile "$S/redis.log" 9>&-
    wait_for redis 20 redis-cli -p "$REDIS_PORT" ping
  fi

  cat > "$S/env" <<ENV
KUBECONFIG=$S/admin.kubeconfig
DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/kubernaut
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
ENV
  log "up: API server https://127.0.0.1:$API_PORT, PostgreSQL :$PG_PORT, Redis :$REDIS_PORT"
}

pods() {
  [ -f "$S/env" ] || up
  exec 8>"$S/.podsim.lock"; flock 8
  alive podsim && return 0
  local bin="${KUBERNAUT_PODSIM_BIN:-}"
  if [ -z "$bin" ]; then
    log "building the pod simulator (cargo build -p kubernaut-e2e --bin podsim)"
    bin=$(cd "$ROOT" && cargo build -p kubernaut-e2e --bin podsim --message-format=json-render-diagnostics |
      jq -r 'select(.executable != null) | .executable' | tail -n1)
  fi
  KUBECONFIG="$S/admin.kubeconfig" nohup "$bin" > "$S/podsim.log" 2>&1 8>&- 9>&- &
  echo $! > "$S/podsim.pid"
  wait_for podsim 30 grep -q "simulating pods" "$S/podsim.log"
  log "pod simulator up (log: $S/podsim.log)"
}

down() {
  [ -d "$S" ] || return 0
  if alive podsim; then kill "$(cat "$S/podsim.pid")" 2>/dev/null || true; fi
  for svc in redis kube-controller-manager kube-apiserver etcd; do
    if alive "$svc"; then kill "$(cat "$S/$svc.pid")" 2>/dev/null || true; fi
  done
  if alive postgres; then as_postgres "$PG_BIN/pg_ctl" -D "$S/pg" -m fast -w stop >/dev/null || true; fi
  # The LLM server (scripts/llm.sh) keeps its state in here too.
  bash "$ROOT/scripts/llm.sh" down || true
  for d in "$S"/llm-*/; do
    [ -d "$d" ] && KUBERNAUT_LLM_INSTANCE="$(basename "$d" | sed 's/^llm-//')" bash "$ROOT/scripts/llm.sh" down || true
  done
  for svc in redis kube-controller-manager kube-apiserver etcd; do
    for _ in $(seq 50); do alive "$svc" || break; sleep 0.1; done
    alive "$svc" && kill -9 "$(cat "$S/$svc.pid")" 2>/dev/null || true
  done
  rm -rf "$S"
  log "down"
}

status() {
  local ok=0
  for svc in "${SERVICES[@]}"; do
    if alive "$svc"; then echo "$svc: running (pid $(cat "$S/$svc.pid"))"; else echo "$svc: stopped"; ok=1; fi
  done
  [ -f "$S/env" ] || ok=1
  return $ok
}

env_() {
  [ -f "$S/env" ] || { log "the stack is not up: run scripts/stack.sh up"; exit 1; }
  cat "$S/env"
  echo "export KUBECONFIG DATABASE_URL REDIS_URL"
}

case "${1:-}" in
  up) up; if [ "${2:-}" = --pods ]; then pods; fi ;;
  pods) pods ;;
  down) down ;;
  status) status ;;
  env) env_ ;;
  *) echo "usage: $0 up [--pods]|pods|down|status|env" >&2; exit 2 ;;
esac
