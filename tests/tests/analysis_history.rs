//! K-AI-2: the history the analysis prompt carries, read from the real
//! PostgreSQL audit trail: per action, the finished requests for an alert
//! name and target kind, and how many were verified.

use std::time::Duration;

use chrono::Utc;
use kubernaut_e2e::{Stack, eventually, unique};
use kubernaut_store::{AuditRecord, EventRecord, PastOutcome, RequestRecord, Store};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_counts_finished_requests_per_action_and_their_verified_share() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let store = Store::connect(&stack.database_url, 2).await?;
    store.migrate().await?;
    let (audit, _task) = store.audit_log();
    let signal = unique("HistoryTest");
    let request = |uid: &str, kind: &str, phase: &str| {
        AuditRecord::Request(RequestRecord {
            uid: uid.into(),
            namespace: "shop".into(),
            name: uid.into(),
            fingerprint: uid.into(),
            signal_name: signal.clone(),
            severity: "critical".into(),
            source: "alertmanager".into(),
            target_kind: kind.into(),
            target_namespace: "shop".into(),
            target_name: "web".into(),
            phase: phase.into(),
            firing_time: Utc::now(),
        })
    };
    let step = |uid: &str, action: &str| {
        AuditRecord::Event(EventRecord {
            request_uid: uid.into(),
            at: Utc::now(),
            kind: "action",
            from_phase: None,
            to_phase: None,
            reason: "StepFinished".into(),
            subject: action.into(),
            detail: json!({"id": action, "action": action, "state": "Succeeded"}),
        })
    };
    let u = |n: &str| format!("{signal}-{n}");
    for (uid, kind, phase, actions) in [
        (u("a"), "Deployment", "Completed", vec!["rollout_restart"]),
        (
            u("b"),
            "Deployment",
            "Completed",
            vec!["collect_diagnostics", "rollout_restart"],
        ),
        (u("c"), "Deployment", "Failed", vec!["rollout_restart"]),
        // Still running, and another kind: neither counts.
        (u("d"), "Deployment", "Executing", vec!["restart_pod"]),
        (u("e"), "StatefulSet", "Completed", vec!["rollout_restart"]),
    ] {
        audit.record(request(&uid, kind, phase)).await?;
        for a in actions {
            audit.record(step(&uid, a)).await?;
        }
    }
    let want = vec![
        PastOutcome {
            action: "rollout_restart".into(),
            requests: 3,
            completed: 2,
        },
        PastOutcome {
            action: "collect_diagnostics".into(),
            requests: 1,
            completed: 1,
        },
    ];
    let got = eventually(
        "the records in PostgreSQL",
        Duration::from_secs(30),
        || async {
            let h = audit.history(&signal, "Deployment", 10).await?;
            Ok((h == want).then_some(h))
        },
    )
    .await?;
    assert!((got[0].effectiveness() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(audit.history(&signal, "Deployment", 1).await?.len(), 1);
    Ok(())
}
