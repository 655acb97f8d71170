//! The workflow actor (K-EX-1, K-RR-3): it runs a workflow's DAG with one
//! linked step actor per step. A step starts as soon as every step it
//! depends on has succeeded, independent steps run at the same time, each
//! attempt is bounded by its timeout, transient failures are retried with
//! backoff, and when a step fails (unless it may) no further step starts,
//! the running ones finish, and the completed steps marked `rollback` are
//! undone in reverse order of completion.
//!
//! Every step's call is parsed against the catalogue before anything runs:
//! a workflow with one bad step changes nothing. Results flow to
//! dependants: a string parameter may name `{{steps.ID.target.kind}}`
//! (`.name`, `.namespace`) or `{{steps.ID.message}}` of a step it depends
//! on, filled in when it starts (such a step is parsed then).
//!
//! Every step tells the request's supervisor, through the [`Sink`], before
//! it acts (with its target's UID and generation, so the intent is recorded
//! first) and when it settles. A step actor that panics is restarted under
//! the [`RestartPolicy`]; a step that was interrupted after its intent was
//! recorded, whether by a panic or by a controller restart, is reconciled
//! with the cluster before it runs again ([`reconcile`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use kubernaut_api::workflow::{Fill, Workflow, WorkflowError, fill_placeholders};
use kubernaut_api::{ExecutionStatus, ObjectRef, StepPhase};
use kubernaut_cluster::{
    ActionCall, ActionError, Cluster, ExecSettings, Outcome, catalogue, repeatable,
};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::mailbox::{Addr, Envelope, Inbox};
use crate::metrics::{ActorKind, Metrics};
use crate::policy::{self, RestartPolicy};
use crate::worker::{self, Chaos};

/// Backoff before the second attempt; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub id: String,
    pub action: String,
    pub state: StepPhase,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What undoing it did, when it was undone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<Outcome>,
}

impl StepReport {
    fn new(id: &str, action: &str, state: StepPhase) -> Self {
        Self {
            id: id.to_string(),
            action: action.to_string(),
            state,
            attempts: 0,
            outcome: None,
            error: None,
            rollback: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowReport {
    pub succeeded: bool,
    /// In the workflow's order.
    pub steps: Vec<StepReport>,
    /// Step ids in the order they finished.
    pub completion_order: Vec<String>,
    /// Step ids in the order they were undone.
    pub rollback_order: Vec<String>,
    /// Why the workflow stopped starting steps, when its failure ratio did.
    pub stopped: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InvalidWorkflow {
    #[error(transparent)]
    Dag(#[from] WorkflowError),
    #[error("step {0}: {1}")]
    Parameters(String, String),
}

/// What the workflow tells the request's supervisor.
#[derive(Debug)]
pub enum StepEvent {
    /// The step is about to act; it waits for `ack`, sent once the intent
    /// is recorded. A dropped `ack` (the supervisor stopped) stops the step.
    Starting {
        id: String,
        target: Option<ObjectRef>,
        uid: String,
        generation: Option<i64>,
        ack: oneshot::Sender<()>,
    },
    Settled(StepReport),
}

/// Everything the workflow reports, in order: step events, then the end.
#[derive(Debug)]
pub enum Out {
    Step(StepEvent),
    Finished(Result<WorkflowReport, InvalidWorkflow>),
}

pub type Sink = Arc<dyn Fn(Out) + Send + Sync>;

/// A running step's recorded intent: what it was about to change.
#[derive(Clone, Debug, Default)]
pub struct Intent {
    pub target: Option<ObjectRef>,
    pub uid: String,
    pub generation: Option<i64>,
}

/// Failures worth another attempt: the API, a conflict storm, a busy target.
fn transient(e: &ActionError) -> bool {
    matches!(
        e,
        ActionError::Api(_) | ActionError::Conflict(..) | ActionError::Busy(..)
    )
}

/// Whether a step interrupted after its intent was recorded may run again
/// (K-RR-6): when its action is safe to repeat, or its target has exactly
/// the UID and generation recorded. A target deleted, replaced or changed
/// since means the action took effect: the step is done. When the target
/// cannot be read, the step runs again and its own attempt reports the
/// API's error; it never counts as done on a guess.
pub async fn reconcile(cluster: &Cluster, action: &str, intent: &Intent) -> bool {
    if repeatable(action) {
        return true;
    }
    let Some(target) = &intent.target else {
        return true;
    };
    let Ok(now) = cluster.metadata(target).await else {
        return true;
    };
    now.as_ref().is_some_and(|m| {
        m.uid.as_deref() == Some(intent.uid.as_str())
            && m.generation == intent.generation
            && m.deletion_timestamp.is_none()
    })
}

pub struct Args {
    pub cluster: Cluster,
    pub workflow: Workflow,
    pub settings: ExecSettings,
    pub default_timeout: Duration,
    /// The steps as recorded before a restart, to resume from.
    pub recorded: Option<ExecutionStatus>,
    /// Where the steps' ends are recorded (the request's audit trail): a
    /// step that succeeded before a restart is rolled back from there.
    pub audit: Option<(kubernaut_store::AuditLog, String)>,
    pub restart: RestartPolicy,
    pub metrics: Metrics,
    pub chaos: Chaos,
    pub sink: Sink,
}

/// Runs `workflow` on its own (no supervisor records the steps); an
/// invalid one is refused before anything runs.
pub async fn run(
    cluster: &Cluster,
    workflow: &Workflow,
    settings: &ExecSettings,
    default_timeout: Duration,
) -> Result<WorkflowReport, InvalidWorkflow> {
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let sink: Sink = Arc::new(move |out| match out {
        Out::Step(StepEvent::Starting { ack, .. }) => {
            let _ = ack.send(());
        }
        Out::Step(StepEvent::Settled(_)) => {}
        Out::Finished(r) => {
            if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(r);
            }
        }
    });
    let args = Args {
        cluster: cluster.clone(),
        workflow: workflow.clone(),
        settings: settings.clone(),
        default_timeout,
        recorded: None,
        audit: None,
        restart: RestartPolicy::default(),
        metrics: Metrics::default(),
        chaos: Chaos::default(),
        sink,
    };
    let spawned = Actor::spawn(None, WorkflowActor, args).await;
    let Ok((_actor, handle)) = spawned else {
        return Err(InvalidWorkflow::Parameters(
            String::new(),
            "the workflow actor did not start".into(),
        ));
    };
    let result = rx.await;
    let _ = handle.await;
    result.unwrap_or_else(|_| {
        Err(InvalidWorkflow::Parameters(
            String::new(),
            "the workflow actor stopped without a result".into(),
        ))
    })
}

pub struct WorkflowActor;

pub enum Msg {
    Start,
    Announced(usize, Intent),
    StepDone(usize, StepReport),
    RetryStep(usize),
}

pub struct State {
    a: Args,
    me: Addr<Msg>,
    inbox: Inbox,
    _live: crate::mailbox::Live,
    index: BTreeMap<String, usize>,
    calls: Vec<Option<ActionCall>>,
    reports: Vec<Option<StepReport>>,
    started: Vec<bool>,
    running: HashMap<ActorId, usize>,
    restarts: Vec<u32>,
    intents: Vec<Option<Intent>>,
    completion_order: Vec<String>,
    failed: bool,
    stopped: Option<String>,
}

impl Actor for WorkflowActor {
    type Msg = Envelope<Msg>;
    type State = State;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        a: Args,
    ) -> Result<State, ActorProcessingErr> {
        let inbox = Inbox::new(&a.metrics, ActorKind::workflow);
        let live = inbox.started();
        let me = inbox.addr(myself);
        me.tell(Msg::Start);
        let n = a.workflow.steps.len();
        let index = a
            .workflow
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        Ok(State {
            a,
            me,
            inbox,
            _live: live,
            index,
            calls: Vec::new(),
            reports: vec![None; n],
            started: vec![false; n],
            running: HashMap::new(),
            restarts: vec![0; n],
            intents: vec![None; n],
            completion_order: Vec::new(),
            failed: false,
            stopped: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        env: Envelope<Msg>,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let (msg, _handling) = st.inbox.open(env);
        match msg {
            Msg::Start => {
                if st.a.chaos.strikes(ActorKind::workflow) {
                    panic!("injected fault: the workflow actor panics");
                }
                if let Err(e) = prepare(st) {
                    (st.a.sink)(Out::Finished(Err(e)));
                    myself.stop(None);
                    return Ok(());
                }
                resume(st).await;
            }
            Msg::Announced(i, intent) => st.intents[i] = Some(intent),
            Msg::StepDone(i, report) => {
                st.running.retain(|_, j| *j != i);
                settle(st, i, report);
            }
            Msg::RetryStep(i) => {
                spawn_step(&myself, st, i).await;
                return Ok(());
            }
        }
        schedule(&myself, st).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        evt: SupervisionEvent,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, error) = evt else {
            return Ok(());
        };
        let Some(i) = st.running.remove(&cell.get_id()) else {
            return Ok(());
        };
        st.restarts[i] += 1;
        let n = st.restarts[i];
        let step = &st.a.workflow.steps[i];
        let reason = policy::reason(&error);
        match st.a.restart.restart(n, ActorKind::step, &st.a.metrics) {
            Some(delay) => {
                tracing::warn!(step = %step.id, error = %reason, restart = n, ?delay, "step actor failed; restarting it");
                // Still counted as running: nothing may overtake it.
                st.running.insert(cell.get_id(), i);
                st.me.tell_after(delay, Msg::RetryStep(i));
            }
            None => {
                let mut report = StepReport::new(&step.id, &step.action, StepPhase::Failed);
                report.error = Some(format!("the step's actor failed {n} times; last: {reason}"));
                settle(st, i, report);
                schedule(&myself, st).await;
            }
        }
        Ok(())
    }
}

/// Validates the DAG and parses every step that does not wait for results.
fn prepare(st: &mut State) -> Result<(), InvalidWorkflow> {
    let known: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
    st.a.workflow.validate(&known)?;
    for s in &st.a.workflow.steps {
        let refs = step_references(&s.parameters);
        if let Some(r) = refs.iter().find(|r| !s.depends_on.contains(r)) {
            return Err(InvalidWorkflow::Parameters(
                s.id.clone(),
                format!("uses the result of step {r:?}, which it does not depend on"),
            ));
        }
        st.calls.push(if refs.is_empty() {
            Some(
                ActionCall::parse(&s.action, s.parameters.clone())
                    .map_err(|e| InvalidWorkflow::Parameters(s.id.clone(), e))?,
            )
        } else {
            None
        });
    }
    Ok(())
}

/// Takes the steps recorded before a restart: settled ones are not run
/// again; an interrupted one runs again only if [`reconcile`] says so, and
/// is otherwise done.
async fn resume(st: &mut State) {
    let Some(recorded) = st.a.recorded.take() else {
        return;
    };
    // Steps that ended before the restart keep their order of completion
    // (for rollback), as far as the status's times tell it.
    let mut ended: Vec<(
        Option<kubernaut_api::k8s_openapi::jiff::Timestamp>,
        usize,
        String,
    )> = Vec::new();
    for step in &recorded.steps {
        let Some(&i) = st.index.get(&step.id) else {
            continue;
        };
        if !matches!(step.phase, StepPhase::Pending | StepPhase::Running) {
            ended.push((step.finished_at.as_ref().map(|t| t.0), i, step.id.clone()));
        }
        let state = match step.phase {
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
                if reconcile(&st.a.cluster, &step.action, &intent).await {
                    st.intents[i] = Some(intent);
                    continue;
                }
                let mut report = StepReport::new(&step.id, &step.action, StepPhase::AlreadyDone);
                report.attempts = step.attempts;
                (st.a.sink)(Out::Step(StepEvent::Settled(report)));
                StepPhase::AlreadyDone
            }
            done => done,
        };
        st.started[i] = true;
        st.failed |= state == StepPhase::Failed && !st.a.workflow.steps[i].continue_on_failure;
        let mut report = StepReport::new(&step.id, &step.action, state);
        report.attempts = step.attempts;
        st.reports[i] = Some(report);
    }
    ended.sort();
    st.completion_order
        .extend(ended.into_iter().map(|(_, _, id)| id));
}

/// A step that succeeded before a restart has no outcome in memory: its
/// call is rebuilt from the workflow and its changes read back from the
/// audit trail. `Err` says why it cannot be undone.
async fn restore_for_rollback(st: &mut State, i: usize) -> Result<(), String> {
    call_for(st, i).map_err(|e| format!("its call cannot be rebuilt: {e}"))?;
    if st.reports[i].as_ref().is_some_and(|r| r.outcome.is_some()) {
        return Ok(());
    }
    let Some((audit, uid)) = &st.a.audit else {
        return Err("no record of what it changed".into());
    };
    let id = st.a.workflow.steps[i].id.clone();
    let detail = audit
        .step_finished(uid, &id)
        .await
        .map_err(|e| format!("the audit trail cannot be read: {e}"))?
        .ok_or("the audit trail has no record of what it changed")?;
    let outcome: Outcome = serde_json::from_value(detail["outcome"].clone())
        .map_err(|_| "the audit trail has no record of what it changed".to_string())?;
    if let Some(report) = st.reports[i].as_mut() {
        report.outcome = Some(outcome);
    }
    Ok(())
}

fn settle(st: &mut State, i: usize, report: StepReport) {
    let step = &st.a.workflow.steps[i];
    st.completion_order.push(step.id.clone());
    if report.state == StepPhase::Failed {
        tracing::warn!(step = %step.id, action = %step.action, error = ?report.error, "workflow step failed");
        st.failed |= !step.continue_on_failure;
    }
    (st.a.sink)(Out::Step(StepEvent::Settled(report.clone())));
    st.reports[i] = Some(report);
    if let Some(ratio) = st.a.workflow.max_failure_ratio
        && st.stopped.is_none()
    {
        let settled: Vec<StepPhase> = st
            .reports
            .iter()
            .flatten()
            .map(|r| r.state)
            .filter(|s| {
                matches!(
                    s,
                    StepPhase::Succeeded | StepPhase::AlreadyDone | StepPhase::Failed
                )
            })
            .collect();
        let failed = settled.iter().filter(|s| **s == StepPhase::Failed).count();
        if failed as f64 > ratio * settled.len() as f64 {
            let why = format!(
                "stopped after {failed} of {} settled steps failed (more than {:.0}%)",
                settled.len(),
                ratio * 100.0
            );
            tracing::warn!(%why, "workflow stopped by its failure ratio");
            st.stopped = Some(why);
            st.failed = true;
        }
    }
}

/// Starts or skips every step whose dependencies are settled; finishes the
/// workflow once nothing runs and nothing is left.
async fn schedule(myself: &ActorRef<Envelope<Msg>>, st: &mut State) {
    for i in 0..st.a.workflow.steps.len() {
        if st.started[i] {
            continue;
        }
        let step = &st.a.workflow.steps[i];
        let deps: Vec<Option<StepPhase>> = step
            .depends_on
            .iter()
            .map(|d| st.reports[st.index[d]].as_ref().map(|r| r.state))
            .collect();
        let blocked = deps.iter().any(|d| matches!(d, Some(s) if !s.succeeded()));
        if st.failed || blocked {
            if st.failed && !st.running.is_empty() && !blocked {
                // The workflow has failed, but this step is only skipped
                // once nothing runs any more.
                continue;
            }
            st.started[i] = true;
            let skipped = StepReport::new(&step.id, &step.action, StepPhase::Skipped);
            (st.a.sink)(Out::Step(StepEvent::Settled(skipped.clone())));
            st.reports[i] = Some(skipped);
            continue;
        }
        let full =
            st.a.workflow
                .max_parallel
                .is_some_and(|max| st.running.len() >= max as usize);
        if deps.iter().all(Option::is_some) && !full {
            st.started[i] = true;
            spawn_step(myself, st, i).await;
        }
    }
    if st.running.is_empty() && st.started.iter().all(|s| *s) {
        let report = finish(st).await;
        (st.a.sink)(Out::Finished(Ok(report)));
        myself.stop(None);
    }
}

/// Starts step `i`'s actor (again, after a failure: then its recorded
/// intent is reconciled first).
async fn spawn_step(myself: &ActorRef<Envelope<Msg>>, st: &mut State, i: usize) {
    let step = st.a.workflow.steps[i].clone();
    let call = call_for(st, i);
    let timeout = step
        .timeout_seconds
        .map_or(st.a.default_timeout, Duration::from_secs);
    let (cluster, settings, sink, me) = (
        st.a.cluster.clone(),
        st.a.settings.clone(),
        st.a.sink.clone(),
        st.me.clone(),
    );
    let prior = st.intents[i].clone();
    let work: worker::Work<StepReport> = Arc::new(move || {
        let (cluster, settings, sink, me, call, prior, step) = (
            cluster.clone(),
            settings.clone(),
            sink.clone(),
            me.clone(),
            call.clone(),
            prior.clone(),
            step.clone(),
        );
        async move {
            let mut report = StepReport::new(&step.id, &step.action, StepPhase::Failed);
            let call = match call {
                Ok(c) => c,
                Err(e) => {
                    report.error = Some(e);
                    return report;
                }
            };
            if let Some(intent) = &prior
                && !reconcile(&cluster, &step.action, intent).await
            {
                report.state = StepPhase::AlreadyDone;
                return report;
            }
            match announce(&cluster, &sink, &step.id, &call, &settings.holder).await {
                Ok(intent) => {
                    me.tell(Msg::Announced(i, intent));
                }
                Err(e) => {
                    report.error = Some(e);
                    return report;
                }
            }
            let (result, attempts) =
                attempt(&cluster, &call, &settings, timeout, step.retries).await;
            report.attempts = attempts;
            match result {
                Ok(o) => {
                    report.state = StepPhase::Succeeded;
                    report.outcome = Some(o);
                }
                Err(e) => report.error = Some(e),
            }
            report
        }
        .boxed()
    });
    let me = st.me.clone();
    let report: worker::Report<StepReport> = Box::new(move |r| {
        me.tell(Msg::StepDone(i, r));
    });
    let spawned = worker::spawn(
        ActorKind::step,
        &st.a.metrics,
        &st.a.chaos,
        work,
        report,
        myself.get_cell(),
    )
    .await;
    match spawned {
        Ok(cell) => {
            st.running.retain(|_, j| *j != i);
            st.running.insert(cell.get_id(), i);
        }
        Err(e) => {
            st.running.retain(|_, j| *j != i);
            let s = &st.a.workflow.steps[i];
            let mut report = StepReport::new(&s.id, &s.action, StepPhase::Failed);
            report.error = Some(format!("the step's actor did not start: {e}"));
            settle(st, i, report);
        }
    }
}

/// Undoes, after a failure, the completed steps marked `rollback`, newest
/// first; the report of the whole run.
async fn finish(st: &mut State) -> WorkflowReport {
    let mut rollback_order = Vec::new();
    if st.failed {
        for id in st.completion_order.clone().iter().rev() {
            let i = st.index[id];
            let Some(report) = st.reports[i].as_mut() else {
                continue;
            };
            if !st.a.workflow.steps[i].rollback || report.state != StepPhase::Succeeded {
                continue;
            }
            if let Err(why) = restore_for_rollback(st, i).await {
                tracing::error!(step = %id, %why, "a step that succeeded before a restart cannot be rolled back");
                if let Some(report) = st.reports[i].as_mut() {
                    report.state = StepPhase::RollbackFailed;
                    report.error = Some(format!("rollback: {why}"));
                }
                continue;
            }
            let Some(report) = st.reports[i].as_mut() else {
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
                let Some(undo) = st.calls[i].as_ref().and_then(|c| c.rollback(change)) else {
                    continue;
                };
                match attempt(
                    &st.a.cluster,
                    &undo,
                    &st.a.settings,
                    st.a.default_timeout,
                    2,
                )
                .await
                {
                    (Ok(o), _) => report.rollback.push(o),
                    (Err(e), _) => {
                        tracing::error!(step = %id, error = %e, "rolling back a workflow step failed");
                        report.state = StepPhase::RollbackFailed;
                        report.error = Some(format!("rollback: {e}"));
                    }
                }
            }
        }
    }
    WorkflowReport {
        succeeded: !st.failed,
        steps: st.reports.iter().flatten().cloned().collect(),
        completion_order: st.completion_order.clone(),
        rollback_order,
        stopped: st.stopped.clone(),
    }
}

/// Tells the supervisor the step is about to act, with its target's UID and
/// generation, and waits until the intent is recorded.
async fn announce(
    cluster: &Cluster,
    sink: &Sink,
    id: &str,
    call: &ActionCall,
    holder: &str,
) -> Result<Intent, String> {
    let target = call.target_of(holder);
    let meta = match &target {
        Some(t) => cluster.metadata(t).await.ok().flatten(),
        None => None,
    };
    let intent = Intent {
        target,
        uid: meta
            .as_ref()
            .and_then(|m| m.uid.clone())
            .unwrap_or_default(),
        generation: meta.and_then(|m| m.generation),
    };
    let (ack, recorded) = oneshot::channel();
    sink(Out::Step(StepEvent::Starting {
        id: id.to_string(),
        target: intent.target.clone(),
        uid: intent.uid.clone(),
        generation: intent.generation,
        ack,
    }));
    if recorded.await.is_err() {
        return Err("not started: the request's supervisor did not record the intent".into());
    }
    Ok(intent)
}

/// Ids of the steps whose results `parameters` use.
fn step_references(parameters: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let _ = fill_placeholders(&mut parameters.clone(), &mut |key| {
        if let Some((id, _)) = key.strip_prefix("steps.").and_then(|k| k.split_once('.'))
            && !out.iter().any(|o| o == id)
        {
            out.push(id.to_string());
        }
        Fill::Keep
    });
    out
}

/// The step's call with its dependencies' results filled in.
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
    st.calls[i] = Some(call.clone());
    Ok(call)
}

fn with_results(
    step: &kubernaut_api::workflow::Step,
    steps: &[kubernaut_api::workflow::Step],
    index: &BTreeMap<String, usize>,
    reports: &[Option<StepReport>],
    calls: &[Option<ActionCall>],
    holder: &str,
) -> Result<ActionCall, String> {
    let result = |id: &str, field: &str| -> Option<String> {
        let i = *index.get(id)?;
        let outcome = reports[i].as_ref()?.outcome.as_ref();
        if field == "message" {
            return outcome.map(|o| o.message.clone());
        }
        let target = outcome
            .and_then(|o| o.changes.first().map(|c| c.object.clone()))
            .or_else(|| calls[i].as_ref()?.target_of(holder))
            .or_else(|| {
                ActionCall::parse(&steps[i].action, steps[i].parameters.clone())
                    .ok()?
                    .target_of(holder)
            })?;
        match field {
            "target.kind" => Some(target.kind),
            "target.name" => Some(target.name),
            "target.namespace" => Some(target.namespace),
            _ => None,
        }
    };
    let mut parameters = step.parameters.clone();
    fill_placeholders(&mut parameters, &mut |key| {
        key.strip_prefix("steps.")
            .and_then(|k| k.split_once('.'))
            .and_then(|(id, field)| result(id, field))
            .map_or(Fill::Missing, Fill::With)
    })
    .map_err(|u| {
        format!(
            "{} in {} has no value: unknown, or its step left no result",
            u.placeholder, u.path
        )
    })?;
    ActionCall::parse(&step.action, parameters)
}

/// One step: up to `1 + retries` attempts, each bounded by `timeout`.
async fn attempt(
    cluster: &Cluster,
    call: &ActionCall,
    settings: &ExecSettings,
    timeout: Duration,
    retries: u32,
) -> (Result<Outcome, String>, u32) {
    let mut backoff = FIRST_BACKOFF;
    let mut n = 0;
    loop {
        n += 1;
        let err = match tokio::time::timeout(timeout, cluster.run_action(call, settings)).await {
            Ok(Ok(o)) => return (Ok(o), n),
            Ok(Err(e)) if transient(&e) && n <= retries => e.to_string(),
            Ok(Err(e)) => return (Err(e.to_string()), n),
            Err(_) if n <= retries => format!("timed out after {timeout:?}"),
            Err(_) => return (Err(format!("timed out after {timeout:?}")), n),
        };
        tracing::info!(action = call.name(), attempt = n, error = %err, "retrying a workflow step");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
