//! The audit writer's throughput against the real PostgreSQL: how fast a
//! burst of records (one request row and seven events per request, a
//! request's usual share) reaches the trail, written one transaction per
//! record (`Store::write`, what the writer did before batching) and
//! through the writer's queue (a transaction per batch). The faster the
//! trail drains, the less a replica killed outright leaves unwritten. It
//! prints both rates and their ratio, and asserts nothing.
//!
//!   cargo bench -p kubernaut-e2e --bench audit -- [N]
//!
//! N defaults to 500 (requests, so 4 000 records per run).

use std::time::{Duration, Instant};

use chrono::Utc;
use kubernaut_e2e::{Stack, eventually, unique};
use kubernaut_store::{AuditRecord, EventRecord, RequestRecord, Store};
use serde_json::json;

const EVENTS_PER_REQUEST: usize = 7;

fn records(run: &str, n: usize) -> Vec<AuditRecord> {
    let mut out = Vec::with_capacity(n * (EVENTS_PER_REQUEST + 1));
    for i in 0..n {
        let uid = format!("{run}-{i}");
        out.push(AuditRecord::Request(RequestRecord {
            uid: uid.clone(),
            namespace: "bench".into(),
            name: uid.clone(),
            fingerprint: uid.clone(),
            signal_name: "BenchAudit".into(),
            severity: "warning".into(),
            source: "alertmanager".into(),
            target_kind: "Deployment".into(),
            target_namespace: "bench".into(),
            target_name: "web".into(),
            phase: "Completed".into(),
            firing_time: Utc::now(),
        }));
        for e in 0..EVENTS_PER_REQUEST {
            out.push(AuditRecord::Event(EventRecord {
                request_uid: uid.clone(),
                at: Utc::now(),
                kind: "transition",
                from_phase: None,
                to_phase: None,
                reason: "Bench".into(),
                subject: format!("event-{e}"),
                detail: json!({"replica": "bench", "message": "a transition of the usual size"}),
            }));
        }
    }
    out
}

/// The burst's last request's events, by the request index: records land
/// in the order queued, so once the last request's are in, all are (and
/// the poll costs the writer nothing next to a scan of the trail).
async fn last_landed(store: &Store, run: &str, n: usize) -> anyhow::Result<bool> {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM remediation_events WHERE request_uid = $1")
            .bind(format!("{run}-{}", n - 1))
            .fetch_one(store.pool())
            .await?;
    Ok(count >= EVENTS_PER_REQUEST as i64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500)
        .max(1);
    let stack = Stack::get();
    let store = Store::connect(&stack.database_url, 4).await?;
    store.migrate().await?;
    let total = n * (EVENTS_PER_REQUEST + 1);

    let run = unique("bench-audit-single");
    let burst = records(&run, n);
    let t = Instant::now();
    for record in &burst {
        store.write(record).await?;
    }
    let single = total as f64 / t.elapsed().as_secs_f64();

    let run = unique("bench-audit-batched");
    let burst = records(&run, n);
    let (audit, _task) = store.clone().audit_log();
    let t = Instant::now();
    for record in burst {
        audit.record(record).await?;
    }
    eventually(
        "the burst in the trail",
        Duration::from_secs(600),
        || async { Ok(last_landed(&store, &run, n).await?.then_some(())) },
    )
    .await?;
    let batched = total as f64 / t.elapsed().as_secs_f64();

    println!(
        "audit: {total} records ({n} requests, {EVENTS_PER_REQUEST} events each): one transaction per record {single:.0} records/s; through the writer's queue, a transaction per batch, {batched:.0} records/s: {:.1} x",
        batched / single
    );
    Ok(())
}
