//! The workflow actor's children: one stage actor per step, the resume
//! check and the rollback, each reporting back as a message.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kubernaut_api::StepPhase;
use kubernaut_cluster::ActionCall;
use ractor::ActorRef;

use super::resume::resumed;
use super::rollback::Undone;
use super::steps::{StepRun, reconcile, with_results};
use super::{Intent, Job, Msg, State, StepReport, finish, settle};
use crate::mailbox::Envelope;
use crate::metrics::ActorKind;
use crate::worker;

pub(super) fn job_kind(job: Job) -> ActorKind {
    match job {
        Job::Step(_) => ActorKind::step,
        Job::Resume => ActorKind::resume,
        Job::Rollback => ActorKind::rollback,
    }
}

/// Starts a child: step `i`'s actor (its recorded intent is reconciled
/// first after a failure), the resume check, or the rollback; `false` when
/// it could not start (then it is settled as failed, or given up).
pub(super) async fn spawn_job(myself: &ActorRef<Envelope<Msg>>, st: &mut State, job: Job) -> bool {
    let me = st.me.clone();
    let spawned = match job {
        Job::Step(i) => {
            let step = st.a.workflow.steps[i].clone();
            let announced_to = st.me.clone();
            let run = Arc::new(StepRun {
                cluster: Arc::new(st.a.cluster.clone()),
                settings: st.a.settings.clone(),
                sink: st.a.sink.clone(),
                call: call_for(st, i),
                prior: st.intents[i].clone(),
                timeout: step
                    .timeout_seconds
                    .map_or(st.a.default_timeout, Duration::from_secs),
                announced: Arc::new(move |intent| {
                    announced_to.tell(Msg::Announced(i, intent));
                }),
                step,
            });
            let work: worker::Work<StepReport> = Arc::new(move || {
                let run = run.clone();
                async move { run.run().await }.boxed()
            });
            let report: worker::Report<StepReport> = Box::new(move |r| {
                me.tell(Msg::StepDone(i, r));
            });
            worker::spawn(
                ActorKind::step,
                &st.a.metrics,
                &st.a.chaos,
                work,
                report,
                myself.get_cell(),
            )
            .await
        }
        Job::Resume => {
            let cluster = st.a.cluster.clone();
            let checks: Vec<(String, Intent)> = st
                .checks
                .iter()
                .map(|(_, a, intent, _)| (a.clone(), intent.clone()))
                .collect();
            let work: worker::Work<Vec<bool>> = Arc::new(move || {
                let (cluster, checks) = (cluster.clone(), checks.clone());
                async move {
                    let mut out = Vec::new();
                    for (action, intent) in &checks {
                        out.push(reconcile(&cluster, action, intent).await);
                    }
                    out
                }
                .boxed()
            });
            let report: worker::Report<Vec<bool>> = Box::new(move |r| {
                me.tell(Msg::Resumed(r));
            });
            worker::spawn(
                ActorKind::resume,
                &st.a.metrics,
                &st.a.chaos,
                work,
                report,
                myself.get_cell(),
            )
            .await
        }
        Job::Rollback => {
            let Some(undo) = st.undo.clone() else {
                return false;
            };
            let work: worker::Work<Undone> = Arc::new(move || undo.clone().run().boxed());
            let report: worker::Report<Undone> = Box::new(move |r| {
                me.tell(Msg::RolledBack(r));
            });
            worker::spawn(
                ActorKind::rollback,
                &st.a.metrics,
                &st.a.chaos,
                work,
                report,
                myself.get_cell(),
            )
            .await
        }
    };
    match spawned {
        Ok(cell) => {
            st.children.started(cell.get_id(), job);
            true
        }
        Err(e) => {
            let why = format!("its actor did not start: {e}");
            match job {
                Job::Step(i) => {
                    let s = &st.a.workflow.steps[i];
                    let mut report = StepReport::new(&s.id, &s.action, StepPhase::Failed);
                    report.error = Some(format!("the step's actor did not start: {e}"));
                    settle(st, i, report);
                }
                Job::Resume => {
                    let n = st.checks.len();
                    resumed(st, vec![true; n]);
                }
                Job::Rollback => {
                    if let Some(undo) = st.undo.take() {
                        let (reports, order) = undo.gave_up(&why);
                        st.reports = reports;
                        finish(myself, st, order);
                    }
                }
            }
            false
        }
    }
}

/// Step `i`'s call, made once from its parameters and its dependencies'
/// results.
fn call_for(st: &mut State, i: usize) -> Result<ActionCall, String> {
    if let Some(c) = &st.calls[i] {
        return Ok(c.clone());
    }
    let call = with_results(
        &st.a.workflow.steps[i],
        &st.a.workflow.steps,
        &st.index,
        &st.reports,
        &st.calls,
        &st.a.settings.holder,
    )?;
    if let Some(owned) = &st.a.owned {
        owned.check(&call, &st.a.settings.holder)?;
    }
    st.calls[i] = Some(call.clone());
    Ok(call)
}
