#!/usr/bin/env bash
# `make bench`: measures every figure of docs/performance.md on this machine
# against the local stack, then writes the document from them (and copies
# the runner's plots next to it). A benchmark, not a test: it takes about
# twenty minutes here and fails only when a run's outcome counts are wrong.
# Each part starts on a freshly started stack: an API server that has just
# created and deleted tens of thousands of objects answers several times
# slower for a while, and the parts would measure each other's debris.
#
#   loadtest/bench-gateway.sh    the gateway's paths, storm, replicas
#   benches/pipeline.rs          the actor pipeline (PIPELINE_N requests)
#   benches/reaction.rs          alert sent to the first mutating API call
#   benches/audit.rs             the audit writer, per record and batched
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kubernaut/target}"
# Outside the stack's directory, which a fresh stack starts without.
export BENCH_OUT="${BENCH_OUT:-$HOME/.cache/kubernaut/bench}"
mkdir -p "$BENCH_OUT"
PIPELINE_N=${PIPELINE_N:-1000}
# The pipeline bench's line "API calls per KIND request (...): VERB
# resource 1.00, ..." in FILE, as the rows of a markdown table.
calls_table() {
  sed -n "s/^  API calls per $1 request[^:]*: //p" "$2" |
    tr ',' '\n' | awk 'NF == 3 { printf "| %s %s | %s |\n", $1, $2, $3 }'
}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# A freshly started stack (the pod simulator comes up with the first bench
# that needs it).
fresh() {
  bash scripts/stack.sh down >/dev/null
  bash scripts/stack.sh up >/dev/null
  eval "$(bash scripts/stack.sh env)"
}

# GATEWAY=reuse keeps the last run's gateway figures (to redo the rest).
if [ "${GATEWAY:-}" != reuse ]; then
  fresh
  bash loadtest/bench-gateway.sh "${GATEWAY_N:-1000}"
fi

# PIPELINE=reuse keeps the last run's pipeline and reaction figures.
if [ "${PIPELINE:-}" != reuse ]; then
  fresh
  say "the actor pipeline: $PIPELINE_N requests (cargo bench --bench pipeline)"
  cargo bench -p kubernaut-e2e --bench pipeline -- "$PIPELINE_N" | tee "$BENCH_OUT/pipeline.txt"
  awk '
    /KiB per live tree/ { for (i = 1; i <= NF; i++) if ($i == "KiB") printf "tree_kib=%s\n", $(i - 1) }
    /rollout_restart:/ { for (i = 1; i <= NF; i++) if ($i == "requests/s;") printf "restart_rate=%s\n", $(i - 1) }
    /raw status merge patches/ {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /\/s;$/) { v = $i; sub(/\/s;$/, "", v); printf "patch_rate=%s\n", v }
        if ($i == "x") printf "restart_ratio=%s\n", $(i - 1)
      }
    }
    /raw rollout restarts/ {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /\/s;$/) { v = $i; sub(/\/s;$/, "", v); printf "raw_rollout=%s\n", v }
        if ($i == "x") printf "rollout_ratio=%s\n", $(i - 1)
      }
    }
    /waiting for locks held elsewhere/ { for (i = 1; i <= NF; i++) if ($i == "Lease") printf "waiting_leases=%s\n", $(i - 1) }
    /raw pipeline \(create/ {
      for (i = 1; i <= NF; i++) {
        if ($i == "requests/s;") printf "raw_pipeline=%s\n", $(i - 1)
        if ($i == "x") printf "notify_ratio=%s\n", $(i - 1)
      }
    }
    /raw pipeline with the controller.s status \(.*by merge patch/ {
      for (i = 1; i <= NF; i++) {
        if ($i == "requests/s;") printf "raw_like=%s\n", $(i - 1)
        if ($i == "x") printf "like_ratio=%s\n", $(i - 1)
        if ($i == "bytes") { v = $(i - 1); sub(/^\(/, "", v); printf "status_bytes=%s\n", v }
      }
    }
    /raw pipeline with the controller.s status \(.*by server-side apply/ {
      for (i = 1; i <= NF; i++) {
        if ($i == "requests/s;") printf "raw_apply=%s\n", $(i - 1)
        if ($i == "x") printf "apply_ratio=%s\n", $(i - 1)
      }
    }
    /notify_only:/ {
      for (i = 1; i <= NF; i++) {
        if ($i == "requests/s,") printf "notify_rate=%s\n", $(i - 1)
        if ($i == "status" && $(i + 1) == "writes") printf "notify_writes=%s\n", $(i - 1)
      }
    }
    /the control plane.s CPU:/ {
      for (i = 1; i <= NF; i++) if ($i == "ms") printf "notify_cpu_ms=%s\n", $(i - 1)
    }
  ' "$BENCH_OUT/pipeline.txt" >"$BENCH_OUT/pipeline.env"
  echo "pipeline_rev=$(git rev-parse --short HEAD)" >>"$BENCH_OUT/pipeline.env"
  calls_table rollout_restart "$BENCH_OUT/pipeline.txt" >"$BENCH_OUT/restart_calls.md"

  fresh

  # TREES_N=10000 also holds that many full trees on locked targets (about
  # half an hour here); its output is kept in docs/performance/trees.txt,
  # which every later run reports until the next TREES_N run replaces it.
  if [ -n "${TREES_N:-}" ]; then
    say "$TREES_N full trees waiting on locked targets"
    {
      echo "# cargo bench -p kubernaut-e2e --bench pipeline -- $TREES_N --memory-only, $(date -u +%Y-%m-%d) at $(git rev-parse --short HEAD)"
      cargo bench -p kubernaut-e2e --bench pipeline -- "$TREES_N" --memory-only
    } | tee "$BENCH_OUT/trees.txt"
    mkdir -p docs/performance && cp "$BENCH_OUT/trees.txt" docs/performance/trees.txt
    fresh
  fi

  say "memory per live supervisor: 2000 requests waiting for approval, each with an alert of 1500 bytes"
  cargo bench -p kubernaut-e2e --bench pipeline -- 2000 --waiting --payload=1500 | tee "$BENCH_OUT/waiting.txt"
  awk '/KiB per live supervisor/ { for (i = 1; i <= NF; i++) if ($i == "KiB") printf "sup_kib=%s\n", $(i - 1) }' \
    "$BENCH_OUT/waiting.txt" >>"$BENCH_OUT/pipeline.env"
  fresh

  say "where the API server's time goes: a 15 s CPU profile of kube-apiserver during a notify-only run"
  (
    for _ in $(seq 900); do pgrep -f "kubernaut serve" >/dev/null && break; sleep 1; done
    sleep 3
    kubectl get --raw "/debug/pprof/profile?seconds=15" >"$BENCH_OUT/apiserver.prof"
  ) &
  profiler=$!
  cargo bench -p kubernaut-e2e --bench pipeline -- "$PIPELINE_N" --notify-only | tee "$BENCH_OUT/profiled.txt"
  wait "$profiler"
  python3 loadtest/pprof-top.py "$BENCH_OUT/apiserver.prof" >"$BENCH_OUT/apiserver.md"
  calls_table notify_only "$BENCH_OUT/profiled.txt" >"$BENCH_OUT/notify_calls.md"
  fresh
  for rate in 5 10 20; do
    say "reaction time: 200 alerts at $rate/s, alert to first mutating API call"
    cargo bench -p kubernaut-e2e --bench reaction -- 200 "$rate" | tee "$BENCH_OUT/reaction$rate.txt"
    awk -v k="react$rate" '/^  p50/ { gsub(",", ""); printf "%s_p50=%s\n%s_p99=%s\n", k, $2, k, $8 }' \
      "$BENCH_OUT/reaction$rate.txt" >>"$BENCH_OUT/pipeline.env"
    fresh
  done
  # "    <stage>: p50 / p99" per rate, as one table: a stage per row.
  awk '/^    [^:]+: [0-9]+ \/ [0-9]+$/ {
         split($0, kv, ": "); stage = kv[1]; sub(/^ +/, "", stage)
         if (!(stage in row)) { order[++n] = stage; row[stage] = "| " stage }
         row[stage] = row[stage] " | " kv[2] }
       END { for (i = 1; i <= n; i++) print row[order[i]] " |" }' \
    "$BENCH_OUT/reaction5.txt" "$BENCH_OUT/reaction10.txt" "$BENCH_OUT/reaction20.txt" \
    >"$BENCH_OUT/react_stages.md"

  say "the audit writer: 4000 records one transaction each, then through its queue (cargo bench --bench audit)"
  cargo bench -p kubernaut-e2e --bench audit -- 500 | tee "$BENCH_OUT/audit.txt"
  awk '/^audit:/ {
    for (i = 1; i <= NF; i++) {
      if ($i == "records/s;") printf "audit_single=%s\n", $(i - 1)
      if ($i == "records/s:") printf "audit_batched=%s\n", $(i - 1)
      if ($i == "x") printf "audit_ratio=%s\n", $(i - 1)
    }
  }' "$BENCH_OUT/audit.txt" >>"$BENCH_OUT/pipeline.env"

  say "API calls per rollout_restart request (20 alerts at 2/s, apiserver_request_total)"
  # Requests served so far, by verb and resource (every code summed).
  calls() {
    kubectl get --raw /metrics | python3 -c '
import collections, re, sys
n = collections.Counter()
for line in sys.stdin:
    m = re.match(r"apiserver_request_total\{(.*)\} (\S+)$", line)
    if not m:
        continue
    l = dict(re.findall(r"(\w+)=\"([^\"]*)\"", m.group(1)))
    sub = "/" + l["subresource"] if l["subresource"] else ""
    n[l["verb"] + " " + l["resource"] + sub] += float(m.group(2))
for k, v in sorted(n.items()):
    print(k, int(v))
'
  }
  calls >"$BENCH_OUT/calls.before"
  cargo bench -p kubernaut-e2e --bench reaction -- 20 2 | tee "$BENCH_OUT/reaction-profile.txt"
  sleep 5
  calls >"$BENCH_OUT/calls.after"
  awk 'NR == FNR { before[$1 " " $2] = $3; next }
       { d = ($3 - before[$1 " " $2]) / 20; if (d >= 0.5) printf "| %s %s | %.1f |\n", $1, $2, d }' \
    "$BENCH_OUT/calls.before" "$BENCH_OUT/calls.after" | sort -t'|' -k3 -nr >"$BENCH_OUT/calls.md"
fi

say "writing docs/performance.md"
set -a
# shellcheck disable=SC1091
. "$BENCH_OUT/gateway.env"
# shellcheck disable=SC1091
. "$BENCH_OUT/pipeline.env"
set +a
# Verdicts against the goals, from the figures just measured.
judge() { awk "BEGIN { exit !($1) }" && echo "$2" || echo "$3"; }
# The issue set 150/s where status merge patches ran at about 580/s: a
# share of 0.26 of that rate, which this run's share is set against.
notify_patch_share=$(awk "BEGIN { printf \"%.2f\", $notify_rate / $patch_rate }")
# A verified mutating request: seven writes of its own (see "The
# pipeline's API calls") and the rollout, each in status patches' worth.
rollout_patch_share=$(awk "BEGIN { printf \"%.2f\", $raw_rollout / $patch_rate }")
restart_ceiling=$(awk "BEGIN { printf \"%.2f\", 1 / (7 + $patch_rate / $raw_rollout) }")
pipeline_verdict=$(judge "$notify_writes <= 3 && $notify_rate >= 150" "met" \
  "$(judge "$notify_writes <= 3" "writes met; the rate is not on this machine, where status merge patches run at ${patch_rate}/s: the goal was set where they ran at about 580/s, 150/s being 0.26 × that, and notify_only runs at ${notify_patch_share} × this run's (below)" "not met")")
tree_verdict=$(judge "$tree_kib <= 64 && $sup_kib <= 24" "met" \
  "$(judge "$tree_kib <= 64" "met per tree; not per supervisor" "not met")")
restart_verdict=$(judge "$restart_ratio >= 0.5" "met" \
  "$(judge "$rollout_ratio >= 0.5" "not met as written; the same rollouts with no controller at all (the cluster's own work) run at ${raw_rollout}/s here, and against that rate the pipeline is over 0.5" "not met: the safety the specification asks of an action costs seven writes of Kubernaut's own per request, besides the rollout, which caps the rate near ${restart_ceiling} × the patch rate however cheap the rest (below)")")
like_verdict=$(judge "$new_like_share >= 0.8" \
  "most of what a new signal costs over a minimal create is the size of the request, and the gateway's own work (HTTP, authentication, parsing, the owner chain from reflectors, one Redis script for the storm windows) is the rest" \
  "the gateway's own work (HTTP, authentication, parsing, the owner chain from reflectors, one Redis script for the storm windows) costs as much as a larger request does")
# Flat is the goal's "the 10 000th new signal as fast as the first": the
# rates themselves, the median of each side's runs. The raw baseline is
# measured again after the fill and moves from run to run on its own
# (496/s before and 807/s after, once), and so does a single new-signal
# run (382 after and 337 before in one make bench, 355 and 428 in the next).
new_verdict="$(judge "$new_share >= 0.6" "met" "$(judge "$new_like_share >= 0.6" "not met against minimal requests; against the same request as the gateway creates it, ${new_like_share} × (below)" "not met in this run")"); $(judge "$new_full_rates_median >= 0.9 * $new_rates_median" "flat" "slower after the fill"): the median of ${after} runs after the fill ${new_full_rates_median} alerts/s (${new_full_rates}), of the ${pairs} before ${new_rates_median} (${new_rates})"
dup_verdict="$(judge "$dup128_rate >= 10000" "rate met" "rate not met in this run: Kubernaut's share of the two cores is the limit (see the scaling section)"); p99 $(judge "$dup5k_p99 < 10" "met" "not met in this run: an answer waits only for Redis now, and the tail is the wait for a core shared by the gateway, Redis and the load generator")"
nored_verdict=$(judge "$nored128_rate >= 5000" "met: each answer waits for its batch's status PATCH, one PATCH per API round trip" \
  "not met in this run: without Redis each answer waits for its batch's status PATCH")
# The reaction goal, judged at each rate: "5, 10" met, "20" not.
react_met=() react_unmet=()
for r in 5 10 20; do
  p50="react${r}_p50" p99="react${r}_p99"
  if awk "BEGIN { exit !(${!p50} < 300 && ${!p99} < 1000) }"; then react_met+=("$r"); else react_unmet+=("$r"); fi
done
rates() { echo "$*" | sed 's/ /, /g; s/\(.*\), /\1 and /'; }
react_verdict="$([ ${#react_met[@]} -gt 0 ] && echo "met at $(rates "${react_met[@]}") alerts/s" || echo "not met")"
[ ${#react_unmet[@]} -gt 0 ] && react_verdict="$react_verdict; not at $(rates "${react_unmet[@]}")/s, where the same two cores also run the rollouts themselves (the API server, the Deployment and ReplicaSet controllers, the pod simulator), and each stage's tail grows alike (below)"
storm_verdict=$(judge "$storm_lost == 0 && $storm_storm_requests <= 1 && $storm_5xx == 0" "met" "not met")
# The last TREES_N run (see above), if any.
trees_row="| many full trees waiting on locked targets | — | not measured yet: \`TREES_N=10000 make bench\` | |"
trees_goal=""
if [ -f docs/performance/trees.txt ]; then
  trees_goal=$(awk '
    /^# cargo bench/ { n = $9 }
    /waiting for locks held elsewhere/ { for (i = 1; i <= NF; i++) if ($i == "Lease") leases = $(i - 1) }
    END { printf "; %s with %s trees waiting ([output](performance/trees.txt))", leases, n }
  ' docs/performance/trees.txt)
  trees_row=$(awk '
    /^# cargo bench/ { n = $9; when = $11 " at " $13 }
    /KiB per live tree/ { for (i = 1; i <= NF; i++) { if ($i == "KiB") kib = $(i - 1); if ($i == "supervisors") sup = $(i + 1); if ($i == "steps") steps = $(i + 1) } }
    /waiting for locks held elsewhere/ { for (i = 1; i <= NF; i++) if ($i == "Lease") leases = $(i - 1) }
    END { sub(/,$/, "", sup); printf "| %s full trees waiting on targets locked elsewhere (run %s, [output](performance/trees.txt)) | — | %s Lease requests to the API server in 10 s with %s supervisors and %s steps live; %s KiB per tree | |", n, when, leases, sup, steps, kib }
  ' docs/performance/trees.txt)
fi
mkdir -p docs/performance
for p in new duplicate storm; do
  [ -f "$BENCH_OUT/$p.svg" ] && cp "$BENCH_OUT/$p.svg" "docs/performance/$p.svg"
done
REV=$(git rev-parse --short HEAD)
DATE=$(date -u +%Y-%m-%d)
CPUS=$(nproc)
cat >docs/performance.md <<DOC
# Performance

Generated by \`make bench\` (\`loadtest/bench.sh\`) on $DATE at $REV$(
  measured=$(printf '%s\n' "${gateway_rev:-?}" "${pipeline_rev:-?}" | sort -u | paste -sd/ -)
  [ "$measured" != "$REV" ] && printf ' (figures measured at %s)' "$measured"), on this
project's build machine: $CPUS cores, the local stack of
\`scripts/stack.sh\` (kube-apiserver and etcd built from source, PostgreSQL,
Redis) sharing those cores with Kubernaut and the load generator. Every
"limit" is measured in the same run, on the same API server, at the same
concurrency, so the ratios hold better than the absolute figures do on
other machines. Each part (the gateway's paths, the pipeline, memory, each
reaction rate) starts on a freshly started stack: after creating and
deleting tens of thousands of objects, this API server answered several
times slower for a while (kube-apiserver at 1.4 GB of RSS, etcd's data at
470 MB), and each part measured the debris of the one before. Run it again
to check any figure here.

## Where a signal's time goes

A new signal used to cost nine sequential API calls (counted from
\`apiserver_request_total\` around one signal): the pod, its ReplicaSet, its
Deployment and its namespace read one by one, a Lease created as a creation
claim, every request of the namespace listed to look for an open one, the
request created, its first occurrence written into its status, and the Lease
deleted. The list reads every request in the namespace, so each new signal
was slower than the last.

Now it costs one: the create. Owner chains, namespaces and nodes come from
metadata-only reflectors (\`crates/cluster/src/views.rs\`); the open request
of a fingerprint, a signal instance's request and the fingerprint's next
place in its sequence come from a watch-fed index
(\`crates/cluster/src/known.rs\`); the request's name is derived from its
fingerprint and that place, so concurrent creators collide on the create
itself; and the first occurrence is the spec's own (\`status.deduplication\`
appears with the first duplicate).

What that create costs the API server depends on what is created. The
gateway's request carries what K-RR-1 wants in its spec (the alert as
received, its labels and annotations, the owner chain): ${like_bytes} bytes
of labels and spec, where the raw baseline's minimal request has
${raw_bytes}. Created as copies of a request the gateway created, at the
same concurrency, the API server takes ${like_rate} a second here
(${raw_rate} minimal ones), and the new-signal path runs at
${new_like_share} × that (the median of the pairs' own shares,
${new_like_shares}): ${like_verdict}. Each run sends one alert to each of
${targets} Deployments (the requests are deleted before the next pair, so
that every target takes a new signal again) and lasts a second or two; the
${pairs} pairs' shares of the minimal rate (${new_shares}) show how much the
API server's pace still moves from one run to the next. With 200 alerts a
run, as this bench had before, a run took a fraction of a second and the
shares of one make bench went from 0.56 to 1.17. On 2026-12-05, on a
new build machine whose API server took minimal creates faster than
before and the gateway's larger ones slower (the copies at about 0.67 of
the minimal rate, where they had been at 0.78), the 5 pairs of one make
bench gave shares of 0.557/0.586/0.785/0.554/0.478 and the same pairs run
again by hand minutes later 0.630/0.634/0.646/0.716/0.414: the goal of 0.6
sits inside that spread here. The gateway process spent 0.39–0.51 ms of
CPU per new signal in those runs (its \`/proc\` CPU time around each run),
about a quarter of a core at these rates, and a \`perf\` profile of it
showed no cost above 3% of its samples besides the allocator's (about 13%)
and the kernel's scheduling and sockets.

A duplicate used to wait for the status PATCH that counted it (group
commit: one PATCH per batch, on the object the previous write returned),
so its answer took an API round trip, and a stream of duplicates of one
request kept the API server writing that object back to back (here
about 135 PATCHes/s, which took a whole core of kube-apiserver). With Redis
configured, a Lua script numbers the duplicate in the request's journal
(duplicates of one request that arrive while a call is in flight are
numbered together by the next) and it is answered at once; the replica
writes what it numbered to the status every 100 ms, one PATCH per request
however many arrived (under a stream of duplicates: ten writes a second,
not a hundred and more). A
replica that dies before writing leaves its requests in Redis's set of
unsettled requests, and any replica's sweep writes them after 5 s; the
status records how many of its count the journal numbered
(\`status.deduplication.journaled\`), so a journal written twice adds
nothing and counts made meanwhile through the API server (a replica that
lost Redis) are kept (\`crates/intake/src/journal.rs\`). Without Redis,
or while it fails, duplicates wait for their PATCH as before.

## Figures

"Before" is main before this work (the figures of issue 18, and \`bench-gateway.sh\`
at 2d67f45 for the paths the issue did not measure).

| path | before | now | limit (same run) |
|---|---|---|---|
| new signal → request created, concurrency 8, distinct alert names (the median of ${pairs} pairs, each a raw run, a run of copies and a new-signal run of ${targets} alerts, after a warm-up) | 9–11 alerts/s, p50 777–835 ms, 0.025 × raw | **${new_rate} alerts/s**, p50 ${new_p50} ms, p99 ${new_p99} ms: **${new_share} × raw** (the pairs: ${new_shares}); ${new_like_share} × raw copies of the gateway's own request | raw creates: ${raw_rate}/s, p50 ${raw_p50} ms; raw copies of a request the gateway created (${like_bytes} bytes of labels and spec, where a minimal one has ${raw_bytes}): ${like_rate}/s, p50 ${like_p50} ms |
| the same after ${fill} more requests in the namespace (the median of ${after} pairs) | slower with every request (O(n) list) | ${new_full_rate} alerts/s, p50 ${new_full_p50} ms: ${new_full_share} × raw | raw creates: ${raw_full_rate}/s |
| duplicate, concurrency 32 (Redis configured) | 1 373–2 101 alerts/s, p50 13–19 ms | ${dup32_rate} alerts/s, p50 ${dup32_p50} ms, p99 ${dup32_p99} ms | redis-benchmark GET ${redis_get}/s |
| duplicate, concurrency 128 (Redis configured) | — | ${dup128_rate} alerts/s, p50 ${dup128_p50} ms, p99 ${dup128_p99} ms | |
| duplicate, open loop at 5 000/s (Redis configured) | — | ${dup5k_rate} alerts/s, p50 ${dup5k_p50} ms, p99 ${dup5k_p99} ms (from when each was due; 12 s) | |
| duplicate without Redis, concurrency 32 / 128 | 3–12 alerts/s (O(n) list) | ${nored32_rate} / ${nored128_rate} alerts/s, p99 ${nored32_p99} / ${nored128_p99} ms | |
| pipeline, notify_only, creation → Completed (${PIPELINE_N}) | 26 requests/s, ~6 status writes and 5 Events each | ${notify_rate} requests/s, ${notify_writes} status writes each: **${notify_ratio} × raw**; ${like_ratio} × raw with the controller's status | the same writes without a controller (create, a status patch, an Event): ${raw_pipeline}/s; the same with the controller's status (${status_bytes} bytes of JSON) in each: ${raw_like}/s by merge patch, ${raw_apply}/s by server-side apply as the controller writes it |
| pipeline, rollout_restart, verified (${PIPELINE_N}) | — | ${restart_rate} requests/s: ${restart_ratio} × the patch rate; **${rollout_ratio} × raw rollouts** | raw status merge patches: ${patch_rate}/s; the same rollouts without a controller (the pod template patched until the Deployment controller observed it): ${raw_rollout}/s |
| ${PIPELINE_N} full trees waiting on targets locked elsewhere, Lease requests to the API server in 10 s | polling: one claim per step every 0.5–5 s | ${waiting_leases} (membership renewals included) | |
${trees_row}
| alert received → first mutating API call (rule path, 200 alerts at 5 / 10 / 20 per s) | — | p50 ${react5_p50} / ${react10_p50} / ${react20_p50} ms, p99 ${react5_p99} / ${react10_p99} / ${react20_p99} ms | |
| audit trail, a burst of 4 000 records (500 requests' worth) into PostgreSQL | one transaction per record: ${audit_single} records/s | a transaction per batch: **${audit_batched} records/s, ${audit_ratio} ×** | |
| memory per full live tree (supervisor, workflow, step; the control plane's RSS) | 180 KiB | ${tree_kib} KiB | |
| memory per live supervisor (2000 requests waiting for approval, each with an alert of 1 500 bytes as received) | 54 KiB | ${sup_kib} KiB | |
| storm: 10 000 alerts over 1 000 pods in 10 s | — | ${storm_accepted} accepted, **${storm_lost} lost**, ${storm_requests} requests (${storm_storm_requests} storm requests), ${storm_5xx} answers 5xx, p99 ${storm_p99} ms | |

Plots of latency over the run: [new signals](performance/new.svg),
[duplicates](performance/duplicate.svg), [the storm](performance/storm.svg).

## Against the goals of issue 18

| goal | now | |
|---|---|---|
| new-signal path ≥ 0.6 × raw creates, flat as requests accumulate | ${new_share} × raw (median of ${new_shares}); ${new_like_share} × raw copies of the gateway's request; ${new_full_share} × raw after ${fill} more requests | ${new_verdict} |
| duplicates ≥ 10 000/s, p99 < 10 ms at 5 000/s | ${dup128_rate}/s at concurrency 128; p99 ${dup5k_p99} ms at 5 000/s | ${dup_verdict} |
| duplicates without Redis ≥ 5 000/s | ${nored128_rate}/s | ${nored_verdict} |
| pipeline ≥ 150 requests/s (notify_only), ≤ 3 status writes on the straight path | ${notify_rate}/s, ${notify_writes} writes; ${notify_ratio} × the API server's own rate for those writes (${raw_pipeline}/s) | ${pipeline_verdict} |
| mutating pipeline ≥ 0.5 × the status-patch rate | ${restart_ratio} × ${patch_rate}/s; ${rollout_ratio} × the cluster's own rate for the same rollouts (${raw_rollout}/s) | ${restart_verdict} |
| waiting trees cost the API server nothing | ${waiting_leases} Lease requests in 10 s with ${PIPELINE_N} trees waiting${trees_goal} | met: the steps wait on a watch of the lock Leases |
| alert → first mutating call p50 < 300 ms, p99 < 1 s | p50 ${react5_p50} / ${react10_p50} / ${react20_p50} ms at 5 / 10 / 20 alerts/s | ${react_verdict} |
| ≤ 24 KiB per live supervisor, ≤ 64 KiB per full tree | ${sup_kib} KiB, ${tree_kib} KiB | ${tree_verdict} |
| storm of 10 000: 0 lost, ≤ 1 storm request per namespace and name, no 5xx | ${storm_lost} lost, ${storm_storm_requests} storm request, ${storm_5xx} 5xx | ${storm_verdict} |

## A request's status writes

A notify-only request used to take five status writes from Pending to
Completed: Processing, then Analyzing and Executing, the execution plan,
the step's end, Verifying, Completed (the writer coalesced some). Now a
status that nothing waits for (entering a phase that only reads and
decides, a step's end) lingers up to 250 ms (\`controller.statusLingerMillis\`)
for the one that follows, and the plan goes with the transition into
Executing. The workflow starts before that write lands: a step that
changes the cluster acts only once a write carrying its write-ahead record
has landed, so the write entering Executing waits for the first step's
record and goes out with it, and a step that changes nothing runs at once.
So a notify-only request goes from Pending to Completed in one write when
it gets there within the linger (${notify_writes} writes per request in
this run), and an alert reaches its first mutating call after one write
(four at first, two before the workflow ran ahead). A status something
waits for (a claim, a step's write-ahead record, an end) goes out at once
and takes any lingering one with it, so nothing that acts waits longer
than before. Lingering costs only how soon \`kubectl get\` shows an
intermediate phase.

## The pipeline's rate

A notify-only request costs the API server three writes: its creation (the
gateway's, or here the bench's), one status write and one Event (one per
status write that changes the phase: the transitions written together are
one Event, as \`kubectl describe\` shows them; there used to be one per
transition, published one at a time through kube-runtime's \`Recorder\`,
which scans every recent Event on each publish). Here the API server does
those three writes for ${raw_pipeline} requests a second with no controller
running at all (the "raw pipeline", measured first in the same run), and
the pipeline reaches ${notify_ratio} of that. Everything here shares
two cores, so what the control plane and its database spend is taken from
the API server. Sampled once a second from \`/proc\` during a notify-only
run (by hand, once each), the two cores were busy throughout: before the
changes below, kube-apiserver about 120%, Kubernaut 37%, PostgreSQL 22%,
etcd 11%, at 127 requests/s; after them, kube-apiserver about 135%,
Kubernaut 28%, PostgreSQL 15%, at 185 requests/s. Per request that
is 2.9 → 1.5 ms of Kubernaut's CPU and 1.7 → 0.8 ms of PostgreSQL's (the
bench now reads the control plane's CPU time from \`/proc\` itself:
${notify_cpu_ms} ms per request in this run). A
profile of Kubernaut (\`perf\`) showed where its share went: deciding
rebuilt the action catalogue's sixteen JSON schemas several times per
request (now built once) and re-analysed the approval policy on every
evaluation (now prepared at start-up: 55 → 34 µs, \`cargo bench -p
kubernaut-decide --bench decide\`), and the audit writer sent one
statement per record, about fourteen per request (now three per batch at
most: \`cargo bench --bench audit\` below). A second profile, with 3 000
requests in the namespace, showed the rest: the remediation budget walked
every request the watch showed on each decision (4.9% of Kubernaut's CPU,
and growing with the requests; it now keeps counts as the watch changes
them), the process watched the requests twice (the intake's index and the
controller: now one watch feeds both, and the API server has one watcher
less), and each watch event went through kube-rs's \`DeserializeGuard\`,
which clones a whole tree of values before parsing it (35.8 → 22.4 µs per
event of a Completed request, \`cargo bench -p kubernaut-cluster --bench
watch\`). The bench's own watch reads only a request's signal and phase.
On one long-lived stack, 3 000 notify-only requests went from 147 to 162
requests/s with these changes. Before that, the bench itself
listed the namespace's requests every 2 s to see them end, and those lists
were a quarter of the API server's CPU in this profile; it watches them
now. How much the two cores give varies between runs: in one make bench
of this code every limit measured came out at a half to two thirds of
its usual (the raw pipeline with the controller's status at 125/s, the
notify-only pipeline at 116 and 123/s), and the next one, here, measured
the usual limits again. Where the API server's CPU went during
this run's notify-only pass (a 15 s profile from its \`/debug/pprof\`,
read by \`loadtest/pprof-top.py\`; a sample counts in every row whose
work is on its stack):

| the API server's work | share of its CPU |
|---|---|
$(cat "$BENCH_OUT/apiserver.md")

The API calls per request during that run, counted with
\`apiserver_request_total\` from the first create to the last Completed
(every client's: the bench's creates and its watch of the namespace's
requests, and the cluster's own controllers, too):

| verb resource | per request |
|---|---|
$(cat "$BENCH_OUT/notify_calls.md")

Kubernaut makes the three writes of the raw pipeline (the create, a status
write, an Event) and no read: the supervisor of a request nobody has
driven yet starts from the watch's copy (read again it could only say the
same, or that another replica claimed it, which the first status write
finds out as surely, since it names the version it is based on); one of
a request someone drove reads it from the API server, whose records decide
what runs again. It used to read every request so, one \`LIST
remediationrequests\` each (this API server counts a GET of a custom
resource as LIST: five GETs of one request, five LISTs, checked by hand).
The bench's own reads are one list at the end and the start of its watch,
and WATCH counts watches opened by any client. What differs
is what is written: the status of a Completed notify-only request, as the
controller writes it, is ${status_bytes} bytes of JSON (its phase history,
conditions, and the processing, analysis and execution records), where the
raw pipeline writes a phase and a message. The API server decodes each write, validates it
against the CRD's schema, merges it into the stored object, encodes it for
etcd and for every watcher; written that large, the same three writes run
at ${raw_like} requests/s with no controller, and the pipeline reaches
${like_ratio} of that. The distance between the two raw figures is the
size of the status; what remains between the second and the pipeline is
the server-side apply's field management (a merge patch would skip it, but
cannot remove what a status no longer has) and the control plane's own
share of the two cores.

## Where a reaction's time goes

The reaction runs above, split by a watch of the requests into what
precedes the first mutating call: the gateway's answer (the request's
create), the request reaching a watch (the controller's, here the
bench's), the one status write the action waits for, and then the
patch. That status write
carries Processing, Analyzing and Executing with the plan, the claim and
the step's write-ahead record (K-RR-6: a rollout_restart must not run
twice after a restart): the workflow starts before the write entering
Executing lands, that write waits for the step's record (after the step
reads the target's UID and generation) and goes out with it, and the step
claims the target's lock Lease meanwhile (\`Cluster::claim_lock\`) and,
once the target is its own, reads it whole and runs the action up to
its server-side dry run; only the patch waits for the write to land (and
is never made if the record was not stored). The action used to read
and dry-run only after the write landed (a change made after the read is
a conflict, and read again). It used to be
two writes in a row, the phase and then the record. Every
stage is an API round trip on the same two cores that run the rollouts,
so at 10 and 20 alerts/s every stage grows alike; milliseconds, p50 / p99:

| stage | 5/s | 10/s | 20/s |
|---|---|---|---|
$(cat "$BENCH_OUT/react_stages.md")

## The pipeline's API calls

What one rollout_restart request costs the API server, from the alert to
Completed (verification included), counted with \`apiserver_request_total\`
around 20 alerts sent at 2/s (\`reaction\` bench; the pod simulator and the
Deployment and ReplicaSet controllers do the rollout). Calls per request:

| verb resource | per request |
|---|---|
$(cat "$BENCH_OUT/calls.md")
$(if [ -s "$BENCH_OUT/restart_calls.md" ]; then
  printf '\nAnd with %s requests verifying at once (the pipeline bench, from the\nlocks'"'"' release to the last Completed):\n\n| verb resource | per request |\n|---|---|\n' "$PIPELINE_N"
  cat "$BENCH_OUT/restart_calls.md"
fi)

Verification asks whether the Deployment controller has observed the
change of the workloads' watch (the same reflectors that resolve owners),
not of the API server: it used to GET the Deployment every 250 ms for as
long as the rollout took. Its two looks at the target's health, before
and after the window, read the workload (its spec's hash, replicas and
selector) from that watch too, and list its pods from the API server's
watch cache (\`LIST pods\` with resourceVersion 0: a scan of memory, not
of etcd). Kubernaut's one \`GET deployments\` left is the action's own
read-modify-write, which records the whole object for undo and must not
be stale; the status writes (\`APPLY remediationrequests/status\`) are
the next to cut. The rollout's own work (ReplicaSets, pods, their status
and events) is the cluster's: with no Kubernaut at all, the same rollouts
run at ${raw_rollout}/s here. A verified request adds about twelve calls
of Kubernaut's own to the rollout's five (three status writes, two
Events, the dry run and the patch, the lock's create and delete, the read
and two pod lists), all served by one API server on the two cores it
shares with everything else, which is why the mutating pipeline stays far
below the status-patch rate the goal measures it against.
(\`POST events\` counts the cluster's Events and Kubernaut's: one per
status write that changes the phase.)

How far below it can get is set by what the specification asks of an
action, not by the code around it. At 0.5 × the status-patch rate a
verified request could cost the API server no more than two status
patches. The writes each one needs are the step's write-ahead record
before it acts (K-RR-6), the target lock's create and delete (K-RR-8),
the server-side dry run and the patch (K-EX-2), the verification window
kept in the status so that another replica can finish it (K-AU-2, K-RR-6), and
the final status: seven, besides the rollout, which alone runs at
${rollout_patch_share} × the patch rate here. Were each of the seven as
cheap as a status patch and the reads free, a request would cost about
$(awk "BEGIN { printf \"%.1f\", 7 + $patch_rate / $raw_rollout }") patches' worth,
a ceiling near ${restart_ceiling} × the
patch rate; the pipeline runs at ${restart_ratio} ×. The Events (one per
phase-changing write) and the reads (the target and its pods)
are the rest.

## The audit trail

Supervisors hand audit records to a queue and never wait for PostgreSQL;
one task per replica drains it. A replica killed outright loses what the
queue still holds (the janitor rebuilds a terminal request's records from
its status, without the replica's name), so how fast the queue drains is
how much a crash costs the trail. Written one transaction per record, each
event took the chain's lock and a commit of its own: ${audit_single}
records/s here, and every replica's writer queued behind the one lock.
The writer now takes what has queued up (up to 128 records) into one
transaction that takes the lock once, in three statements at most: the
requests' rows in one insert, the events through \`audit_append_events\`
(which links and hashes each as the single insert did, at one round
trip), then any verification outcomes: ${audit_batched} records/s,
${audit_ratio} × (about 9 900 records/s when it still sent one statement
per record in its one transaction).
A batch PostgreSQL refuses for its content is written again record by
record, so only the record at fault goes to \`audit_dead_letters\`.

## A live supervisor's memory

Measured as the control plane's RSS with 2000 requests waiting for
approval, less its RSS before, per live supervisor; each request carries
an alert of 1 500 bytes as received, about what the gateway stores. A
supervisor keeps the request's spec but not that alert (no stage reads it;
it stays in the request), its wanted status only while one is pending
(boxed: a status is over a kilobyte inline), and its phase gauge holds one
metric family rather than every metric. RSS moves by one to two KiB per
supervisor between runs of the same build, so a figure within that of 24
KiB is not a clear verdict either way.

Where the rest goes, from a heap profile of the same run
(\`KUBERNAUT_PROFILE_WRAPPER=heaptrack\` runs the control plane under
heaptrack; what is live when it is killed with 2000 supervisors waiting),
per supervisor: the actor itself is about 6.5 KiB of ractor's (its
supervision mailbox allocates 32 slots up front, 3 KiB; its message
mailbox 32 more; the task and the span of its loop), the actor's state 2.3
KiB (the spec and the status inline) and about as much again in what they
point to, and its status writer's task 0.9 KiB. Two things there were
waste and are gone: the writer's channel kept a slot for a whole status
for the request's life (1.5 KiB, now boxed), and each message slot had
room for the sender's tracing span (ractor's \`message_span_propogation\`,
1.3 KiB per actor, now off: handlers log under their own spans). Measured
three times each, alternating, on one stack: 20.0–21.0 KiB per supervisor
against 22.4–22.8 before. Memory per supervisor was also measured with
mimalloc as the allocator: the process held 25 MiB more with the same 2000
supervisors (its idle RSS was 12 MiB more), so glibc's stays. Tried again
on 2026-12-05, for CPU this time, since a \`perf\` profile of a notify-only
run put a quarter of the control plane's samples in glibc's malloc and
free: with mimalloc the control plane spent 1.40–1.56 ms per notify-only
request against 1.49–1.71 ms (three runs of 2000 each), the pipeline's
rate did not move beyond the runs' spread, and a supervisor cost 24.7 KiB
against 19.8 (a full tree 50.8 against 49.3), one goal traded for nothing
measurable.

## Scaling

The new-signal path through 1, 2 and 3 replicas at once (${targets} alerts a
run, concurrency 8 per replica, one API server, all on the same $CPUS
cores):

| replicas | new signals/s | p50 | p99 |
|---|---|---|---|
| 1 | ${replicas1_rate} | ${replicas1_p50} ms | ${replicas1_p99} ms |
| 2 | ${replicas2_rate} | ${replicas2_p50} ms | ${replicas2_p99} ms |
| 3 | ${replicas3_rate} | ${replicas3_p50} ms | ${replicas3_p99} ms |

Here the replicas, the API server, etcd and the load generator share two
cores, so more replicas mostly share the same CPU: the figures show that
replicas do not get in each other's way (no claims to wait on, collisions
only on a truly common fingerprint), not how a cluster scales.

On paper, a fleet taking **10 000 alerts/s**: nearly all of those are
duplicates and storm members (an incident fires for minutes; Alertmanager
re-sends every group interval), which cost one Redis script each and
no API call until they are written: one status PATCH per open request
every 100 ms at most, however many arrive. Say 1% are new incidents:
100 creates/s, plus the duplicate writes of (at most) every open request
with duplicates, plus the pipeline's own calls per request (above: one status write and one Event
for a notify-only request; a rollout adds its action, the reads of its
verification and the cluster's own work).

- **Replicas**: a duplicate costs the gateway about 0.08 ms of CPU here
  (HTTP, authentication, limits, parsing, its share of a Redis call;
  measured by hand with the process's CPU time over a run of 40 000 at
  concurrency 128), so one core answers about 12 000/s; three replicas
  (the production overlay's default), each with 2 cores, leave room for
  10 000/s with the pipeline running beside them. Redis is not the limit:
  duplicates of one request that arrive together share one script call,
  under 0.01 ms of Redis CPU per duplicate in that run. Add replicas for
  CPU, not for the API server: they all write to the same one.
- **API server**: about 100 creates/s and a few hundred status PATCHes per
  second, plus one watch per replica for requests and one per resolved kind
  (pods, ReplicaSets, Deployments, StatefulSets, DaemonSets, Jobs, nodes,
  namespaces; metadata only). No list on any hot path.
- **Client QPS and burst**: kube-rs sets no client-side limit; the API
  server's [API Priority and Fairness](https://kubernetes.io/docs/concepts/cluster-administration/flow-control/)
  is the throttle. Give Kubernaut's ServiceAccount its own FlowSchema on a
  PriorityLevelConfiguration with enough assured concurrency shares for a
  few hundred writes per second (e.g. 50 shares, queueing rather than
  rejecting), so that an alert storm neither starves other controllers nor
  is starved by them; a 429 from the API server is retried by kube-rs and
  answered 503 with Retry-After to the sender, who re-sends.

## Exactly once across replicas

A request is created under the name \`<target>-<fingerprint prefix>-<place>\`,
where the place is one more than the highest place of the fingerprint's
requests that the replica's watch has seen. Every replica that has seen the
same history tries the same name; the API server lets exactly one create it
and answers the others 409 AlreadyExists, and they read what won and count
on it (or, if it has ended meanwhile, try the next place). A replica whose
view lags tries a place that is taken, learns what holds it, and moves on;
two requests of one fingerprint can only both be open if a place were
created twice, and names are unique in the API server. A deleted request's
place stays taken in every replica's view for ten minutes (a tombstone), so
a replica that saw the deletion does not reuse the name while another
still builds on the deleted request. None of this involves Redis: it holds
the replicas' shared storm windows and the journal that numbers
duplicates of requests that already exist, and nothing that decides
creation. The
race tests (\`tests/tests/gateway_dedup.rs\`) run it with and without Redis.
DOC
say "docs/performance.md written"
