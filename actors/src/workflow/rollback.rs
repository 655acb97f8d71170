//! Undoing a failed workflow's completed steps marked `rollback`, newest
//! first, run in a stage actor of its own. A step that succeeded before a
//! controller restart has no outcome in memory: its call is rebuilt from
//! the workflow and what it changed read back from the audit trail.

use std::collections::BTreeMap;
use std::time::Duration;

use kubernaut_api::StepPhase;
use kubernaut_api::workflow::Step;
use kubernaut_cluster::{ActionCall, Cluster, ExecSettings, Outcome};

use super::StepReport;
use super::steps::{attempt, with_results};

/// Everything the rollback needs, copied out of the workflow actor.
#[derive(Clone)]
pub struct Undo {
    pub cluster: Cluster,
    pub settings: ExecSettings,
    pub timeout: Duration,
    pub audit: Option<(kubernaut_store::AuditLog, String)>,
    pub steps: Vec<Step>,
    pub index: BTreeMap<String, usize>,
    pub calls: Vec<Option<ActionCall>>,
    pub reports: Vec<Option<StepReport>>,
    /// Step indices, newest completion first.
    pub order: Vec<usize>,
}

/// The reports after the rollback, and the ids undone in order.
pub type Undone = (Vec<Option<StepReport>>, Vec<String>);

impl Undo {
    pub async fn run(mut self) -> Undone {
        let mut rollback_order = Vec::new();
        for i in self.order.clone() {
            let id = self.steps[i].id.clone();
            if let Err(why) = self.restore(i).await {
                tracing::error!(step = %id, %why, "a step that succeeded before a restart cannot be rolled back");
                if let Some(report) = self.reports[i].as_mut() {
                    report.state = StepPhase::RollbackFailed;
                    report.error = Some(format!("rollback: {why}"));
                }
                continue;
            }
            let Some(report) = self.reports[i].as_mut() else {
                continue;
            };
            report.state = StepPhase::RolledBack;
            rollback_order.push(id.clone());
            let changes = report
                .outcome
                .as_ref()
                .map(|o| o.changes.clone())
                .unwrap_or_default();
            for change in changes.iter().rev() {
                let Some(undo) = self.calls[i].as_ref().and_then(|c| c.rollback(change)) else {
                    continue;
                };
                match attempt(&self.cluster, &undo, &self.settings, self.timeout, 2, None).await {
                    (Ok(o), _) => report.rollback.push(o),
                    (Err(e), _) => {
                        tracing::error!(step = %id, error = %e, "rolling back a workflow step failed");
                        report.state = StepPhase::RollbackFailed;
                        report.error = Some(format!("rollback: {e}"));
                    }
                }
            }
        }
        (self.reports, rollback_order)
    }

    /// Makes sure step `i` has its call and its outcome; `Err` says why it
    /// cannot be undone.
    async fn restore(&mut self, i: usize) -> Result<(), String> {
        if self.calls[i].is_none() {
            let call = with_results(
                &self.steps[i],
                &self.steps,
                &self.index,
                &self.reports,
                &self.calls,
                &self.settings.holder,
            )
            .map_err(|e| format!("its call cannot be rebuilt: {e}"))?;
            self.calls[i] = Some(call);
        }
        if self.reports[i]
            .as_ref()
            .is_some_and(|r| r.outcome.is_some())
        {
            return Ok(());
        }
        let Some((audit, uid)) = &self.audit else {
            return Err("no record of what it changed".into());
        };
        let detail = audit
            .step_finished(uid, &self.steps[i].id)
            .await
            .map_err(|e| format!("the audit trail cannot be read: {e}"))?
            .ok_or("the audit trail has no record of what it changed")?;
        let outcome: Outcome = serde_json::from_value(detail["outcome"].clone())
            .map_err(|_| "the audit trail has no record of what it changed".to_string())?;
        if let Some(report) = self.reports[i].as_mut() {
            report.outcome = Some(outcome);
        }
        Ok(())
    }

    /// Every step it was to undo, marked as not undone: its actor failed
    /// past its budget.
    pub fn gave_up(mut self, why: &str) -> Undone {
        for i in &self.order {
            if let Some(report) = self.reports[*i].as_mut() {
                report.state = StepPhase::RollbackFailed;
                report.error = Some(format!("rollback: {why}"));
            }
        }
        (self.reports, Vec::new())
    }
}
