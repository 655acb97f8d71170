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
//! with the cluster before it runs again ([`steps::reconcile`]).
//!
//! The actor only decides ([`dag`] holds the scheduling rules); whatever
//! reads or writes the cluster or the audit trail runs in a stage actor:
//! each step, the resume check after a restart, and the rollback.

pub mod dag;
mod jobs;
mod resume;
pub mod rollback;
pub mod steps;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubernaut_api::workflow::{Workflow, WorkflowError};
use kubernaut_api::{ExecutionStatus, ObjectRef, StepPhase};
use kubernaut_cluster::{ActionCall, Cluster, ExecSettings, Outcome, catalogue};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::children::{self, Children, RestartPolicy, Verdict};
use crate::mailbox::{Addr, Envelope, Inbox};
use crate::metrics::{ActorKind, Metrics};
use crate::tasks::Timers;
use crate::worker::Chaos;
use dag::Dag;
use jobs::{job_kind, spawn_job};
use resume::{resume_recorded, resumed};
use rollback::{Undo, Undone};
use steps::step_references;

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
    pub(crate) fn new(id: &str, action: &str, state: StepPhase) -> Self {
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

/// A request's own objects, the only ones its steps may act on, whoever
/// chose them (a rule filled from alert labels, the LLM, a storm's
/// fan-out): namespaced objects of the request's namespace, and the
/// cluster-scoped objects the request is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    pub namespace: String,
    /// The target, the signal's resource and the owner chain.
    pub objects: Vec<ObjectRef>,
}

impl Owned {
    pub fn admits(&self, o: &ObjectRef) -> bool {
        if o.namespace.is_empty() {
            self.objects.contains(o)
        } else {
            o.namespace == self.namespace
        }
    }

    /// Refuses a call on anything but the request's own objects.
    pub fn check(&self, call: &ActionCall, holder: &str) -> Result<(), String> {
        match call.target_of(holder) {
            Some(target) if !self.admits(&target) => Err(format!(
                "refused: {target} is not one of the request's own objects (namespace {:?}, or {})",
                self.namespace,
                self.objects
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Ok(()),
        }
    }
}

/// A running step's recorded intent: what it was about to change.
#[derive(Clone, Debug, Default)]
pub struct Intent {
    pub target: Option<ObjectRef>,
    pub uid: String,
    pub generation: Option<i64>,
}

pub struct Args {
    pub cluster: Cluster,
    pub workflow: Workflow,
    /// What the steps may act on: a request's own objects; `None` for a
    /// workflow run on its own.
    pub owned: Option<Owned>,
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
        owned: None,
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

/// The workflow actor's children.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Job {
    Step(usize),
    /// Whether interrupted steps took effect (after a restart).
    Resume,
    Rollback,
}

pub enum Msg {
    Start,
    /// Which interrupted steps may run again (from the resume check).
    Resumed(Vec<bool>),
    Announced(usize, Intent),
    StepDone(usize, StepReport),
    /// Start a failed child again, after its backoff.
    Retry(Job),
    RolledBack(Undone),
}

/// An interrupted step to check: its index, action and recorded intent.
type Check = (usize, String, Intent, u32);

pub struct State {
    a: Args,
    me: Addr<Msg>,
    inbox: Inbox,
    _live: crate::mailbox::Live,
    dag: Dag,
    index: BTreeMap<String, usize>,
    calls: Vec<Option<ActionCall>>,
    reports: Vec<Option<StepReport>>,
    started: Vec<bool>,
    children: Children<Job>,
    /// Steps whose actor failed and waits for its restart: still running,
    /// so that nothing overtakes them.
    restarting: HashSet<usize>,
    intents: Vec<Option<Intent>>,
    completion_order: Vec<String>,
    failed: bool,
    stopped: Option<String>,
    /// Interrupted steps under the resume check.
    checks: Vec<Check>,
    /// The rollback under way.
    undo: Option<Undo>,
    timers: Timers,
    /// The span it was started in (its request's): its handlers, and the
    /// step actors they start, log under it.
    span: tracing::Span,
}

impl State {
    fn running(&self) -> usize {
        self.children
            .running()
            .filter(|j| matches!(j, Job::Step(_)))
            .count()
            + self.restarting.len()
    }

    fn states(&self) -> Vec<Option<StepPhase>> {
        self.reports
            .iter()
            .map(|r| r.as_ref().map(|r| r.state))
            .collect()
    }
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
            dag: Dag::of(&a.workflow),
            children: Children::new(a.restart),
            a,
            me,
            inbox,
            _live: live,
            index,
            calls: Vec::new(),
            reports: vec![None; n],
            started: vec![false; n],
            restarting: HashSet::new(),
            intents: vec![None; n],
            completion_order: Vec::new(),
            failed: false,
            stopped: None,
            checks: Vec::new(),
            undo: None,
            timers: Timers::default(),
            span: tracing::Span::current(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        env: Envelope<Msg>,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: the actor's task holds its handler's future for its whole
        // life; boxed, it exists only while a message is handled.
        let span = st.span.clone();
        Box::pin(on_message(myself, env, st).instrument(span)).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        evt: SupervisionEvent,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let span = st.span.clone();
        Box::pin(on_child_failed(myself, evt, st).instrument(span)).await
    }
}

async fn on_message(
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
            st.checks = resume_recorded(st);
            if !st.checks.is_empty() && spawn_job(&myself, st, Job::Resume).await {
                return Ok(());
            }
        }
        Msg::Resumed(may_run) => {
            st.children.succeeded(&Job::Resume);
            resumed(st, may_run);
        }
        Msg::Announced(i, intent) => st.intents[i] = Some(intent),
        Msg::StepDone(i, report) => {
            st.children.succeeded(&Job::Step(i));
            settle(st, i, report);
        }
        Msg::Retry(job) => {
            if let Job::Step(i) = job {
                st.restarting.remove(&i);
            }
            if spawn_job(&myself, st, job).await {
                return Ok(());
            }
        }
        Msg::RolledBack((reports, rollback_order)) => {
            st.children.succeeded(&Job::Rollback);
            st.reports = reports;
            finish(&myself, st, rollback_order);
            return Ok(());
        }
    }
    schedule(&myself, st).await;
    Ok(())
}

/// A child failed: restarted under the policy, or its work settled as
/// failed once the budget is spent.
async fn on_child_failed(
    myself: ActorRef<Envelope<Msg>>,
    evt: SupervisionEvent,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    let SupervisionEvent::ActorFailed(cell, error) = evt else {
        return Ok(());
    };
    let reason = children::reason(&error);
    let Some(verdict) = st.children.failed(&cell.get_id()) else {
        return Ok(());
    };
    match verdict {
        Verdict::Restart {
            key,
            after,
            attempt,
        } => {
            let kind = job_kind(key);
            st.a.metrics.restarted(kind);
            tracing::warn!(job = ?key, error = %reason, restart = attempt, delay = ?after, "workflow child failed; restarting it");
            if let Job::Step(i) = key {
                st.restarting.insert(i);
            }
            st.timers.after(&st.me, after, Msg::Retry(key));
        }
        Verdict::GiveUp { key, failures } => {
            let why = format!("its actor failed {failures} times; last: {reason}");
            match key {
                Job::Step(i) => {
                    let step = &st.a.workflow.steps[i];
                    let mut report = StepReport::new(&step.id, &step.action, StepPhase::Failed);
                    report.error = Some(format!(
                        "the step's actor failed {failures} times; last: {reason}"
                    ));
                    settle(st, i, report);
                    schedule(&myself, st).await;
                }
                // Whether they took effect is unknown: they run again,
                // and their own attempts tell (as when unreadable).
                Job::Resume => {
                    let n = st.checks.len();
                    resumed(st, vec![true; n]);
                    schedule(&myself, st).await;
                }
                Job::Rollback => {
                    if let Some(undo) = st.undo.take() {
                        let (reports, order) = undo.gave_up(&why);
                        st.reports = reports;
                        finish(&myself, st, order);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Validates the DAG and parses every step that does not wait for results.
fn prepare(st: &mut State) -> Result<(), InvalidWorkflow> {
    let known: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
    st.a.workflow.validate(&known)?;
    st.dag = Dag::of(&st.a.workflow);
    for s in &st.a.workflow.steps {
        let refs = step_references(&s.parameters);
        if let Some(r) = refs.iter().find(|r| !s.depends_on.contains(r)) {
            return Err(InvalidWorkflow::Parameters(
                s.id.clone(),
                format!("uses the result of step {r:?}, which it does not depend on"),
            ));
        }
        st.calls.push(if refs.is_empty() {
            let call = ActionCall::parse(&s.action, s.parameters.clone())
                .map_err(|e| InvalidWorkflow::Parameters(s.id.clone(), e))?;
            if let Some(owned) = &st.a.owned {
                owned
                    .check(&call, &st.a.settings.holder)
                    .map_err(|e| InvalidWorkflow::Parameters(s.id.clone(), e))?;
            }
            Some(call)
        } else {
            None
        });
    }
    Ok(())
}

fn settle(st: &mut State, i: usize, report: StepReport) {
    let step = &st.a.workflow.steps[i];
    st.completion_order.push(step.id.clone());
    if report.state == StepPhase::Failed {
        tracing::warn!(step = %step.id, action = %step.action, error = ?report.error, "workflow step failed");
    }
    st.failed |= st.dag.fails(i, report.state);
    (st.a.sink)(Out::Step(StepEvent::Settled(report.clone())));
    st.reports[i] = Some(report);
    if st.stopped.is_none()
        && let Some(why) = st.dag.stopped(&st.states())
    {
        tracing::warn!(%why, "workflow stopped by its failure ratio");
        st.stopped = Some(why);
        st.failed = true;
    }
}

/// Starts or skips every step the DAG allows now; once nothing runs and
/// nothing is left, rolls back (if the workflow failed) and finishes.
async fn schedule(myself: &ActorRef<Envelope<Msg>>, st: &mut State) {
    if !st.checks.is_empty() || st.undo.is_some() {
        return;
    }
    loop {
        let plan = st
            .dag
            .plan(&st.started, &st.states(), st.running(), st.failed);
        for i in plan.skip {
            st.started[i] = true;
            let step = &st.a.workflow.steps[i];
            let skipped = StepReport::new(&step.id, &step.action, StepPhase::Skipped);
            (st.a.sink)(Out::Step(StepEvent::Settled(skipped.clone())));
            st.reports[i] = Some(skipped);
        }
        let mut settled_at_once = false;
        for i in plan.start {
            st.started[i] = true;
            settled_at_once |= !spawn_job(myself, st, Job::Step(i)).await;
        }
        // A step whose actor did not start settled as failed: plan again.
        if settled_at_once {
            continue;
        }
        if !plan.finished {
            return;
        }
        break;
    }
    let order = if st.failed {
        let done: Vec<usize> = st.completion_order.iter().map(|id| st.index[id]).collect();
        st.dag.rollback_order(&done, &st.states())
    } else {
        Vec::new()
    };
    if order.is_empty() {
        finish(myself, st, Vec::new());
        return;
    }
    // Calls that wait for results are rebuilt by the rollback itself.
    st.undo = Some(Undo {
        cluster: st.a.cluster.clone(),
        settings: st.a.settings.clone(),
        timeout: st.a.default_timeout,
        audit: st.a.audit.clone(),
        steps: st.a.workflow.steps.clone(),
        index: st.index.clone(),
        calls: st.calls.clone(),
        reports: st.reports.clone(),
        order,
    });
    spawn_job(myself, st, Job::Rollback).await;
}

/// The report of the whole run goes to the supervisor; the actor stops.
fn finish(myself: &ActorRef<Envelope<Msg>>, st: &mut State, rollback_order: Vec<String>) {
    st.undo = None;
    let report = WorkflowReport {
        succeeded: !st.failed,
        steps: st.reports.iter().flatten().cloned().collect(),
        completion_order: st.completion_order.clone(),
        rollback_order,
        stopped: st.stopped.clone(),
    };
    (st.a.sink)(Out::Finished(Ok(report)));
    myself.stop(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_owns_its_namespace_and_the_cluster_scoped_objects_it_is_about() {
        let node = ObjectRef::new("Node", "", "n1");
        let owned = Owned {
            namespace: "shop".into(),
            objects: vec![ObjectRef::new("Deployment", "shop", "web"), node.clone()],
        };
        assert!(owned.admits(&ObjectRef::new("Pod", "shop", "web-1")));
        assert!(owned.admits(&node));
        assert!(!owned.admits(&ObjectRef::new("Deployment", "bank", "web")));
        assert!(!owned.admits(&ObjectRef::new("Node", "", "n2")));
    }
}
