//! A request's deadlines (K-RR-4): one timer for the earliest of the
//! request's and its phase's deadline, re-armed as the status changes; once
//! one has passed, the request times out and the escalation is recorded.

use std::time::Duration;

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use ractor::ActorProcessingErr;

use super::{Msg, Sup, transitions};
use crate::supervisor::transitions::Reason;
use crate::tasks::Task;

impl Sup {
    /// Sets a timer for the earliest deadline of the status; when it fires
    /// the deadlines are checked again, so an early timer is harmless.
    pub(super) fn arm(&mut self) {
        let Some(at) = transitions::next_deadline(&self.status) else {
            self.deadline = None;
            return;
        };
        if self.deadline.as_ref().is_some_and(|(t, _)| *t == at) {
            return;
        }
        let (me, wait) = (self.me.clone(), wait_until(at));
        let task = Task::spawn(async move {
            tokio::time::sleep(wait).await;
            me.tell(Msg::Deadline);
        });
        self.deadline = Some((at, task));
    }

    pub(super) fn recheck_at(&mut self, at: Timestamp) {
        self.timers.after(&self.me, wait_until(at), Msg::Recheck);
    }

    pub(super) fn expired(&self) -> Option<(Reason, String)> {
        transitions::expired(
            self.current(),
            &self.ctx.settings.timeouts,
            Timestamp::now(),
        )
    }

    /// A deadline passed: the stage actor (and its children) is stopped, a
    /// running step is recorded as interrupted, the request becomes TimedOut
    /// (Failed for an approval never given), and the escalation is recorded.
    pub(super) fn on_deadline(&mut self) -> Result<(), ActorProcessingErr> {
        let Some((reason, message)) = self.expired() else {
            return Ok(());
        };
        if let Some(stage) = self.stage.take() {
            stage.cell.kill();
        }
        // Whatever the stopped actors still send is stale now.
        self.epoch += 1;
        let phase = self.phase();
        self.escalate(
            reason,
            serde_json::json!({ "phase": phase.as_str(), "message": message }),
        );
        let limit = self.ctx.settings.timeouts.approval();
        self.commit(
            |s| {
                Some(transitions::timed_out(
                    s,
                    reason,
                    &message,
                    limit,
                    Timestamp::now(),
                ))
            },
            false,
        )
    }
}

fn wait_until(at: Timestamp) -> Duration {
    at.duration_since(Timestamp::now())
        .try_into()
        .unwrap_or(Duration::ZERO)
}
