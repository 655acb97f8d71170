//! The audit writer against the real PostgreSQL: a record it refuses for
//! its content never holds up the ones behind it (issue 17, finding 4);
//! what it writes in batches lands whole, in order, on one chain.

use std::time::Duration;

use chrono::Utc;
use kubernaut_e2e::{Stack, eventually, unique};
use kubernaut_store::chain::ChainReport;
use kubernaut_store::{AuditRecord, EventRecord, RequestRecord, Store};
use serde_json::json;

/// The edit test breaks the chain for a moment on the database every test
/// shares. It holds this lock exclusively from its edit to the repair, and
/// every other check of the whole chain holds it shared (nextest runs each
/// test in a process of its own: the lock is PostgreSQL's).
const EDITING: i64 = 0x6b6e_7464_6974;

/// The whole chain, checked while no test has it broken on purpose.
async fn chain_checked(store: &Store) -> anyhow::Result<ChainReport> {
    let mut conn = store.pool().acquire().await?;
    sqlx::query("SELECT pg_advisory_lock_shared($1)")
        .bind(EDITING)
        .execute(&mut *conn)
        .await?;
    let report = store.verify_chain().await;
    sqlx::query("SELECT pg_advisory_unlock_shared($1)")
        .bind(EDITING)
        .execute(&mut *conn)
        .await?;
    Ok(report?)
}

fn request(uid: &str, signal: &str, severity: &str) -> AuditRecord {
    AuditRecord::Request(RequestRecord {
        uid: uid.into(),
        namespace: "shop".into(),
        name: uid.into(),
        fingerprint: uid.into(),
        signal_name: signal.into(),
        severity: severity.into(),
        source: "alertmanager".into(),
        target_kind: "Deployment".into(),
        target_namespace: "shop".into(),
        target_name: "web".into(),
        phase: "Completed".into(),
        firing_time: Utc::now(),
    })
}

/// Step `i`'s end: the subject tells the events apart (it is in the dedup
/// key), and the detail carries `i` for checking their order.
fn step_finished(uid: &str, i: usize) -> AuditRecord {
    AuditRecord::Event(EventRecord {
        request_uid: uid.into(),
        at: Utc::now(),
        kind: "action",
        from_phase: None,
        to_phase: None,
        reason: "StepFinished".into(),
        subject: format!("step-{i}"),
        detail: json!({"seq": i}),
    })
}

fn event(uid: &str, detail: serde_json::Value) -> AuditRecord {
    AuditRecord::Event(EventRecord {
        request_uid: uid.into(),
        at: Utc::now(),
        kind: "transition",
        from_phase: Some("Executing".into()),
        to_phase: Some("Completed".into()),
        reason: "Verified".into(),
        subject: String::new(),
        detail,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_bearing_record_and_a_refused_one_hold_up_none_of_the_100_behind_them()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let store = Store::connect(&stack.database_url, 2).await?;
    store.migrate().await?;
    let (audit, _task) = store.clone().audit_log();
    let run = unique("audit-trust");

    // Alert text is the sender's: NUL in the severity, in a detail's key
    // and value. PostgreSQL's text and jsonb cannot hold NUL.
    let nul = format!("{run}-nul");
    audit
        .record(request(&nul, "Crash\0Loop", "crit\0ical"))
        .await?;
    audit
        .record(event(&nul, json!({"message\u{0}": "a\u{0}b"})))
        .await?;
    // An event of a request the trail has no row for: the foreign key
    // refuses it, however often it is tried.
    let orphan = format!("{run}-orphan");
    audit.record(event(&orphan, json!({}))).await?;
    let ordinary: Vec<String> = (0..100).map(|i| format!("{run}-{i}")).collect();
    for uid in &ordinary {
        audit
            .record(request(uid, "HighErrorRate", "warning"))
            .await?;
    }

    eventually(
        "the 100 ordinary records",
        Duration::from_secs(60),
        || async {
            for uid in &ordinary {
                if !audit.confirmed(uid, "Completed").await? {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;

    let (severity, signal): (String, String) =
        sqlx::query_as("SELECT severity, signal_name FROM remediation_requests WHERE uid = $1")
            .bind(&nul)
            .fetch_one(store.pool())
            .await?;
    assert_eq!(
        (severity.as_str(), signal.as_str()),
        ("crit\u{FFFD}ical", "Crash\u{FFFD}Loop"),
        "stored with the NUL replaced, not lost"
    );
    let detail: serde_json::Value =
        sqlx::query_scalar("SELECT detail FROM remediation_events WHERE request_uid = $1")
            .bind(&nul)
            .fetch_one(store.pool())
            .await?;
    assert_eq!(detail, json!({"message\u{FFFD}": "a\u{FFFD}b"}));

    let (record, error): (Vec<u8>, String) =
        sqlx::query_as("SELECT record, error FROM audit_dead_letters WHERE request_uid = $1")
            .bind(&orphan)
            .fetch_one(store.pool())
            .await?;
    let record: serde_json::Value = serde_json::from_slice(&record)?;
    assert_eq!(record["Event"]["request_uid"], json!(orphan), "{record}");
    assert!(error.contains("foreign key"), "{error}");
    assert_eq!(audit.dead_letters(), 1);
    // The janitor waits for its writer by these counts: the dead letter is
    // settled as much as the records written.
    assert_eq!(audit.queued(), 103);
    eventually(
        "the writer to settle all 103",
        Duration::from_secs(10),
        || async { Ok((audit.settled() == 103).then_some(())) },
    )
    .await?;
    Ok(())
}

/// K-AU-1: the events are hash-chained and append-only. An event edited
/// past the trigger (as a database superuser can) breaks the chain there,
/// and `kubernaut audit verify` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_event_breaks_the_chain_and_verify_names_it() -> anyhow::Result<()> {
    let stack = Stack::get();
    let store = Store::connect(&stack.database_url, 2).await?;
    store.migrate().await?;
    let (audit, _task) = store.clone().audit_log();
    let uid = unique("audit-chain");
    audit.record(request(&uid, "ChainTest", "warning")).await?;
    for reason in ["Started", "Analyzed", "Verified"] {
        audit
            .record(AuditRecord::Event(EventRecord {
                request_uid: uid.clone(),
                at: Utc::now(),
                kind: "transition",
                from_phase: None,
                to_phase: Some(reason.into()),
                reason: reason.into(),
                subject: String::new(),
                detail: json!({"message": format!("{reason} ok")}),
            }))
            .await?;
    }
    let ids: Vec<i64> = eventually("the three events", Duration::from_secs(30), || async {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM remediation_events WHERE request_uid = $1 ORDER BY id",
        )
        .bind(&uid)
        .fetch_all(store.pool())
        .await?;
        Ok((ids.len() == 3).then_some(ids))
    })
    .await?;
    let intact = chain_checked(&store).await?;
    assert_eq!(intact.broken, None, "{intact:?}");

    // The application's writes cannot change an event.
    let refused = sqlx::query("UPDATE remediation_events SET reason = 'Forged' WHERE id = $1")
        .bind(ids[1])
        .execute(store.pool())
        .await
        .expect_err("the trigger refuses updates");
    assert!(refused.to_string().contains("append-only"), "{refused}");

    // A superuser with triggers off edits one event's detail.
    let edit = |detail: &'static str| {
        let pool = store.pool().clone();
        let id = ids[1];
        async move {
            let mut tx = pool.begin().await?;
            sqlx::query("SET LOCAL session_replication_role = replica")
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE remediation_events SET detail = $2::jsonb WHERE id = $1")
                .bind(id)
                .bind(detail)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            anyhow::Ok(())
        }
    };
    let mut editing = store.pool().acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(EDITING)
        .execute(&mut *editing)
        .await?;
    edit(r#"{"message": "nothing to see"}"#).await?;
    let result = async {
        let report = store.verify_chain().await?;
        let broken = report.broken.clone().expect("the chain is broken");
        assert_eq!((broken.id, broken.why), (ids[1], "content"), "{report:?}");
        assert_eq!(broken.request_uid, uid);
        let out = std::process::Command::new(kubernaut_e2e::kubernaut_binary()?)
            .args(["audit", "verify"])
            .env("DATABASE_URL", &stack.database_url)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("broken at event {}", ids[1])),
            "{stderr}"
        );
        anyhow::Ok(())
    }
    .await;
    // Put it back: the database is shared with later runs.
    edit(r#"{"message": "Analyzed ok"}"#).await?;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(EDITING)
        .execute(&mut *editing)
        .await?;
    drop(editing);
    result?;
    assert_eq!(chain_checked(&store).await?.broken, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_bursts_land_whole_in_order_on_one_unbroken_chain() -> anyhow::Result<()> {
    const EVENTS: usize = 400;
    let stack = Stack::get();
    let store = Store::connect(&stack.database_url, 4).await?;
    store.migrate().await?;
    // Two replicas' writers, each queueing a burst faster than it can be
    // written one record at a time, so that it goes out in batches.
    let (a, _ta) = store.clone().audit_log();
    let (b, _tb) = store.clone().audit_log();
    let run = unique("audit-burst");
    let uids = [format!("{run}-a"), format!("{run}-b")];
    for (audit, uid) in [(&a, &uids[0]), (&b, &uids[1])] {
        audit.record(request(uid, "BurstTest", "warning")).await?;
    }
    for i in 0..EVENTS {
        for (audit, uid) in [(&a, &uids[0]), (&b, &uids[1])] {
            audit.record(step_finished(uid, i)).await?;
        }
    }
    for uid in &uids {
        let seqs: Vec<i64> = eventually("the whole burst", Duration::from_secs(60), || async {
            let seqs: Vec<i64> = sqlx::query_scalar(
                "SELECT (detail->>'seq')::bigint FROM remediation_events
                 WHERE request_uid = $1 ORDER BY id",
            )
            .bind(uid)
            .fetch_all(store.pool())
            .await?;
            Ok((seqs.len() >= EVENTS).then_some(seqs))
        })
        .await?;
        let expected: Vec<i64> = (0..EVENTS as i64).collect();
        assert_eq!(
            seqs, expected,
            "{uid}: each event once, in the order queued"
        );
    }
    assert_eq!(a.dead_letters() + b.dead_letters(), 0);
    assert_eq!(chain_checked(&store).await?.broken, None);
    Ok(())
}

#[tokio::test]
async fn a_batch_skips_events_already_stored_and_links_past_them() -> anyhow::Result<()> {
    let stack = Stack::get();
    let store = Store::connect(&stack.database_url, 2).await?;
    store.migrate().await?;
    let uid = unique("audit-again");
    let step = |i: usize| step_finished(&uid, i);
    store
        .write_batch(&[request(&uid, "AgainTest", "warning"), step(0)])
        .await?;
    // A replica that took the request over writes step 0 again, within
    // one batch, between new events; and the request's row twice.
    let mut newer = request(&uid, "AgainTest", "warning");
    if let AuditRecord::Request(r) = &mut newer {
        r.phase = "Verifying".into();
    }
    store
        .write_batch(&[
            request(&uid, "AgainTest", "warning"),
            step(1),
            step(0),
            step(2),
            step(1),
            newer,
            step(3),
        ])
        .await?;
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT (detail->>'seq')::bigint FROM remediation_events WHERE request_uid = $1 ORDER BY id",
    )
    .bind(&uid)
    .fetch_all(store.pool())
    .await?;
    assert_eq!(seqs, [0, 1, 2, 3], "each event once, in order");
    let phase: String = sqlx::query_scalar("SELECT phase FROM remediation_requests WHERE uid = $1")
        .bind(&uid)
        .fetch_one(store.pool())
        .await?;
    assert_eq!(phase, "Verifying", "the batch's last record of the request");
    assert_eq!(chain_checked(&store).await?.broken, None);
    Ok(())
}

#[tokio::test]
async fn a_replica_starts_on_a_database_a_newer_release_has_migrated() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = Store::connect(&stack.database_url, 1).await?;
    let db = unique("upgrade").replace('-', "_");
    // The name is this test's own: letters, digits and underscores.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(admin.pool())
        .await?;
    let url = match stack.database_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => anyhow::bail!("no database in {}", stack.database_url),
    };
    let result = async {
        let store = Store::connect(&url, 1).await?;
        store.migrate().await?;
        // What a later release's migration leaves behind it.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (99991231000001, 'from a newer release', true, '\\x00'::bytea, 1)",
        )
        .execute(store.pool())
        .await?;
        store.migrate().await?;
        store
            .write_batch(&[request("after-upgrade", "UpgradeTest", "warning")])
            .await?;
        store.pool().close().await;
        anyhow::Ok(())
    }
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(admin.pool())
    .await?;
    result
}
