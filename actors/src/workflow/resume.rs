//! Resuming a workflow after a controller restart (K-RR-6): steps that
//! settled before it are not run again; interrupted ones are checked
//! against the cluster in a stage actor, and run again only if their
//! action did not take effect.

use kubernaut_api::StepPhase;

use super::{Check, Intent, Out, State, StepEvent, StepReport};

/// Takes the steps recorded before a restart: settled ones are not run
/// again; the interrupted ones are returned, to be checked against the
/// cluster ([`reconcile`]) in a stage actor.
pub(super) fn resume_recorded(st: &mut State) -> Vec<Check> {
    let Some(recorded) = st.a.recorded.take() else {
        return Vec::new();
    };
    // Steps that ended before the restart keep their order of completion
    // (for rollback), as far as the status's times tell it.
    let mut ended: Vec<(
        Option<kubernaut_api::k8s_openapi::jiff::Timestamp>,
        usize,
        String,
    )> = Vec::new();
    let mut checks = Vec::new();
    for step in &recorded.steps {
        let Some(&i) = st.index.get(&step.id) else {
            continue;
        };
        match step.phase {
            StepPhase::Pending => continue,
            StepPhase::Running => {
                let intent = Intent {
                    target: step.target.clone().or_else(|| {
                        st.calls[i]
                            .as_ref()
                            .and_then(|c| c.target_of(&st.a.settings.holder))
                    }),
                    uid: step.target_uid.clone(),
                    generation: step.target_generation,
                };
                checks.push((i, step.action.clone(), intent, step.attempts));
            }
            done => {
                ended.push((step.finished_at.as_ref().map(|t| t.0), i, step.id.clone()));
                st.started[i] = true;
                st.failed |= st.dag.fails(i, done);
                let mut report = StepReport::new(&step.id, &step.action, done);
                report.attempts = step.attempts;
                st.reports[i] = Some(report);
            }
        }
    }
    ended.sort();
    st.completion_order
        .extend(ended.into_iter().map(|(_, _, id)| id));
    checks
}

/// The resume check's answer: an interrupted step that may run again keeps
/// its intent (reconciled again before it acts); one that took effect is
/// done.
pub(super) fn resumed(st: &mut State, may_run: Vec<bool>) {
    for ((i, action, intent, attempts), run) in
        std::mem::take(&mut st.checks).into_iter().zip(may_run)
    {
        if run {
            st.intents[i] = Some(intent);
            continue;
        }
        let id = st.a.workflow.steps[i].id.clone();
        let mut report = StepReport::new(&id, &action, StepPhase::AlreadyDone);
        report.attempts = attempts;
        (st.a.sink)(Out::Step(StepEvent::Settled(report.clone())));
        st.started[i] = true;
        st.reports[i] = Some(report);
    }
}
