//! K-AI-2: the history the analysis prompt and the rule ranking use, read
//! from the real PostgreSQL audit trail: per action, the finished requests
//! for an alert name and target kind whose outcome is known, and how many
//! were verified Effective (K-AU-2). Reaching Completed is not success.

use std::time::Duration;

use chrono::Utc;
use kubernaut_e2e::{Stack, eventually, unique};
use kubernaut_store::{AuditRecord, EventRecord, OutcomeRecord, PastOutcome, RequestRecord, Store};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_counts_known_outcomes_per_action_and_the_effective_share() -> anyhow::Result<()> {
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
    let outcome = |uid: &str, action: &str, outcome: &str| {
        AuditRecord::Outcome(OutcomeRecord {
            request_uid: uid.into(),
            action: action.into(),
            signal_name: signal.clone(),
            target_kind: "Deployment".into(),
            environment: "production".into(),
            outcome: outcome.into(),
            score: Some(0.5),
            components: json!([]),
        })
    };
    let u = |n: &str| format!("{signal}-{n}");
    for (uid, kind, phase, actions, verified) in [
        (
            u("a"),
            "Deployment",
            "Completed",
            vec!["rollout_restart"],
            Some("Effective"),
        ),
        // Inconclusive says nothing; a read-only step is never a fix.
        (
            u("b"),
            "Deployment",
            "Completed",
            vec!["collect_diagnostics", "rollout_restart"],
            Some("Inconclusive"),
        ),
        // Failed while running: a failure.
        (
            u("c"),
            "Deployment",
            "Failed",
            vec!["rollout_restart"],
            None,
        ),
        // Scored Ineffective (the request failed): a failure.
        (
            u("f"),
            "Deployment",
            "Failed",
            vec!["rollout_restart"],
            Some("Ineffective"),
        ),
        // Completed but never scored (nothing changed): not counted.
        (
            u("g"),
            "Deployment",
            "Completed",
            vec!["rollout_restart"],
            None,
        ),
        // Still running, and another kind: neither counts.
        (u("d"), "Deployment", "Executing", vec!["restart_pod"], None),
        (
            u("e"),
            "StatefulSet",
            "Completed",
            vec!["rollout_restart"],
            Some("Effective"),
        ),
    ] {
        audit.record(request(&uid, kind, phase)).await?;
        for a in &actions {
            audit.record(step(&uid, a)).await?;
        }
        if let Some(v) = verified {
            audit.record(outcome(&uid, "rollout_restart", v)).await?;
        }
    }
    let want = vec![PastOutcome {
        action: "rollout_restart".into(),
        requests: 3,
        effective: 1,
    }];
    let got = eventually(
        "the records in PostgreSQL",
        Duration::from_secs(30),
        || async {
            let h = audit.history(&signal, "Deployment", 30, 10).await?;
            Ok((h == want).then_some(h))
        },
    )
    .await?;
    assert!((got[0].effectiveness() - 1.0 / 3.0).abs() < 1e-9);
    // Outside the window (0 days), nothing.
    assert!(
        audit
            .history(&signal, "Deployment", 0, 10)
            .await?
            .is_empty()
    );
    Ok(())
}
