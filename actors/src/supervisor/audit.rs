//! What a supervisor hands to the audit trail (K-AU-1): the request row
//! in each phase, transitions, steps, approvals and escalations. Records
//! are queued without waiting: a full queue drops and counts them, and the
//! janitor rebuilds a terminal request's records from its status.

use kubernaut_api::Phase;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_store::{AuditRecord, Error};

use super::Sup;
use crate::backfill::{event_record, request_record};
use crate::metrics::StageLabels;
use crate::supervisor::transitions::Reason;

impl Sup {
    pub(super) fn audit(&self, record: AuditRecord) {
        match self.ctx.audit.try_record(record) {
            Ok(()) => {}
            Err(Error::Full) => {
                self.ctx.metrics.audit_dropped.inc();
            }
            Err(e) => {
                self.ctx.metrics.audit_dropped.inc();
                tracing::error!(error = %e, "audit log closed; record lost");
            }
        }
    }

    pub(super) fn audit_request(&self, phase: Phase) {
        let rec = request_record(&self.uid, &self.namespace, &self.name, &self.spec, phase);
        self.audit(AuditRecord::Request(rec));
    }

    pub(super) fn event_record(
        &self,
        kind: &'static str,
        from: Option<Phase>,
        to: Option<Phase>,
        reason: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> AuditRecord {
        let rec = event_record(
            &self.uid,
            Timestamp::now(),
            kind,
            from,
            to,
            reason,
            subject,
            detail,
        );
        AuditRecord::Event(rec)
    }

    pub(super) fn audit_event(
        &self,
        kind: &'static str,
        from: Option<Phase>,
        to: Option<Phase>,
        reason: &str,
        subject: &str,
        detail: serde_json::Value,
    ) {
        let rec = self.event_record(kind, from, to, reason, subject, detail);
        self.audit(rec);
    }

    /// Records an escalation (its delivery is the notifier's): counted, and
    /// a row in the audit trail.
    pub(super) fn escalate(&self, reason: Reason, detail: serde_json::Value) {
        self.ctx
            .metrics
            .escalations
            .get_or_create(&StageLabels {
                stage: reason.as_str(),
            })
            .inc();
        let message = detail["message"]
            .as_str()
            .unwrap_or(reason.as_str())
            .to_string();
        self.event(true, reason.as_str(), message.clone(), "Escalate");
        self.notify(kubernaut_notify::Kind::Escalation, message, detail.clone());
        self.audit_event("escalation", None, None, reason.as_str(), "", detail);
    }

    /// A request completed: told with its verification, when scored.
    pub(super) fn completed(
        &self,
        verification: Option<&kubernaut_api::VerificationStatus>,
        message: &str,
    ) {
        let detail = serde_json::json!({
            "message": message,
            "outcome": verification.and_then(|v| v.outcome).map(|o| o.as_str()),
            "score": verification.and_then(|v| v.score),
            "components": verification.map(|v| &v.components),
        });
        self.notify(
            kubernaut_notify::Kind::Completed,
            message.to_string(),
            detail,
        );
    }

    /// Tells the people the routes name (K-NT-1); never waits.
    pub(super) fn notify(
        &self,
        kind: kubernaut_notify::Kind,
        summary: String,
        detail: serde_json::Value,
    ) {
        self.ctx
            .notifier
            .send(self.notification(kind, summary, detail));
    }

    /// [`Sup::notify`], once the change the stage commits next is written.
    pub(super) fn notify_when_written(
        &mut self,
        kind: kubernaut_notify::Kind,
        summary: String,
        detail: serde_json::Value,
    ) {
        let n = self.notification(kind, summary, detail);
        self.effects
            .push((self.seq + 1, super::Effect::Notify(Box::new(n))));
    }

    /// The request's environment, once Processing found it (and before
    /// that is written: a phase that runs ahead may announce it).
    pub(super) fn environment(&self) -> String {
        self.current()
            .processing
            .as_ref()
            .map(|p| p.environment.clone())
            .unwrap_or_default()
    }

    fn notification(
        &self,
        kind: kubernaut_notify::Kind,
        summary: String,
        detail: serde_json::Value,
    ) -> kubernaut_notify::Notification {
        kubernaut_notify::Notification {
            kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            severity: self.spec.severity.clone(),
            environment: self.environment(),
            summary,
            fingerprint: self.spec.fingerprint.clone(),
            detail,
        }
    }

    /// What a human needs to approve or reject this request.
    pub(super) fn how_to_approve(&self) -> serde_json::Value {
        serde_json::json!({
            "kubectl": format!(
                "kubectl -n {} annotate rr {} kubernaut.io/approval=approved",
                self.namespace, self.name
            ),
            "http": format!(
                "POST /api/v1/remediations/{}/{}/approval {{\"decision\": \"approved\"}}",
                self.namespace, self.name
            ),
        })
    }

    /// A Kubernetes Event on the request, queued without waiting.
    pub(super) fn event(&self, warning: bool, reason: &str, note: String, action: &'static str) {
        let queued = self.ctx.events.emit(kubernaut_cluster::Note {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            warning,
            reason: reason.to_string(),
            note,
            action,
        });
        if !queued {
            self.ctx.metrics.events_dropped.inc();
        }
    }
}
