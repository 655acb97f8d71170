//! The audit trail rebuilt from a request's status. Supervisors hand their
//! records to the audit queue without waiting (callers never wait on the
//! database), so a replica killed outright loses what it had not written
//! yet. The status holds the same story in short: the request, every
//! transition, every step's end. The janitor records that for a terminal
//! request whose final record is missing; event dedup keys make it a no-op
//! for what was written already. Backfilled events say so
//! (`"backfilled": true`) and name no replica.

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{Phase, RemediationRequest, RemediationRequestSpec, StepPhase};
use kubernaut_store::{AuditRecord, EventRecord, RequestRecord};
use serde_json::json;

pub(crate) fn to_chrono(ts: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(ts.as_second(), ts.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

pub(crate) fn request_record(
    uid: &str,
    namespace: &str,
    name: &str,
    spec: &RemediationRequestSpec,
    phase: Phase,
) -> RequestRecord {
    RequestRecord {
        uid: uid.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        fingerprint: spec.fingerprint.clone(),
        signal_name: spec.signal_name.clone(),
        severity: spec.severity.clone(),
        source: spec.source.as_str().into(),
        target_kind: spec.target.kind.clone(),
        target_namespace: spec.target.namespace.clone(),
        target_name: spec.target.name.clone(),
        phase: phase.to_string(),
        firing_time: to_chrono(spec.firing_time.0),
    }
}

#[allow(clippy::too_many_arguments)] // one per column of the audit event
pub(crate) fn event_record(
    uid: &str,
    at: Timestamp,
    kind: &'static str,
    from: Option<Phase>,
    to: Option<Phase>,
    reason: &str,
    subject: &str,
    detail: serde_json::Value,
) -> EventRecord {
    EventRecord {
        request_uid: uid.to_string(),
        at: to_chrono(at),
        kind,
        from_phase: from.map(|p| p.to_string()),
        to_phase: to.map(|p| p.to_string()),
        reason: reason.to_string(),
        subject: subject.to_string(),
        detail,
    }
}

/// The records a request's status tells of, request row first.
pub fn records(rr: &RemediationRequest) -> Vec<AuditRecord> {
    let status = rr.status.clone().unwrap_or_default();
    let uid = rr.metadata.uid.clone().unwrap_or_default();
    let mut out = vec![AuditRecord::Request(request_record(
        &uid,
        rr.metadata.namespace.as_deref().unwrap_or_default(),
        rr.metadata.name.as_deref().unwrap_or_default(),
        &rr.spec,
        status.phase,
    ))];
    let event = |at, kind, from, to, reason: &str, subject: &str, detail| {
        AuditRecord::Event(event_record(
            &uid, at, kind, from, to, reason, subject, detail,
        ))
    };
    let mut from = Phase::Pending;
    for t in &status.phase_history {
        let detail = json!({ "message": t.message, "backfilled": true });
        out.push(event(
            t.time.0,
            "transition",
            Some(from),
            Some(t.phase),
            &t.reason,
            "",
            detail,
        ));
        from = t.phase;
    }
    if let Some(exec) = &status.execution {
        let done = status
            .completion_time
            .as_ref()
            .map_or(exec.started_at.0, |t| t.0);
        for step in &exec.steps {
            if matches!(step.phase, StepPhase::Pending | StepPhase::Running) {
                continue;
            }
            let detail = json!({ "id": step.id, "action": step.action, "state": step.phase,
                                 "attempts": step.attempts, "message": step.message,
                                 "backfilled": true });
            let at = step.finished_at.as_ref().map_or(done, |t| t.0);
            out.push(event(
                at,
                "action",
                None,
                None,
                "StepFinished",
                &step.id,
                detail,
            ));
        }
        if let Some(result) = &exec.result {
            let detail = json!({ "result": result, "message": exec.message, "backfilled": true });
            let at = exec.finished_at.as_ref().map_or(done, |t| t.0);
            out.push(event(
                at,
                "action",
                None,
                None,
                "WorkflowFinished",
                "",
                detail,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_gives_the_request_its_transitions_and_finished_steps() {
        let mut rr = crate::ports::doubles::request(json!({"phase": "Completed",
                "phaseHistory": [
                    {"phase": "Processing", "time": "2026-11-22T03:00:01Z", "reason": "Started"},
                    {"phase": "Executing", "time": "2026-11-22T03:00:02Z", "reason": "ActionChosen"},
                    {"phase": "Completed", "time": "2026-11-22T03:00:03Z", "reason": "Verified"}],
                "execution": {"action": "a", "target": {"kind": "Deployment", "namespace": "shop", "name": "web"},
                    "startedAt": "2026-11-22T03:00:02Z", "result": "Succeeded",
                    "steps": [
                        {"id": "one", "action": "rollout_restart", "phase": "Succeeded", "attempts": 1},
                        {"id": "two", "action": "notify_only", "phase": "Running"}]}
        }));
        rr.metadata.uid = Some("u-1".into());
        let recs = records(&rr);
        let AuditRecord::Request(req) = &recs[0] else {
            panic!("the request row comes first: {recs:?}");
        };
        assert_eq!((req.uid.as_str(), req.phase.as_str()), ("u-1", "Completed"));
        let events: Vec<(String, String, String)> = recs[1..]
            .iter()
            .map(|r| match r {
                AuditRecord::Event(e) => (
                    e.from_phase.clone().unwrap_or_default(),
                    e.reason.clone(),
                    e.subject.clone(),
                ),
                other => panic!("one request row, then events: {other:?}"),
            })
            .collect();
        let want = [
            ("Pending", "Started", ""),
            ("Processing", "ActionChosen", ""),
            ("Executing", "Verified", ""),
            ("", "StepFinished", "one"),
            ("", "WorkflowFinished", ""),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(events, want, "a running step has no end to record");
    }
}
