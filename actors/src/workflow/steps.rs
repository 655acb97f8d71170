//! One step's work, run in its step actor: reconcile a recorded intent,
//! announce the intent (acknowledged once the supervisor recorded it), then
//! up to `1 + retries` attempts of the action, each bounded by its timeout.
//! No attempt changes the cluster before the intent is recorded; the first
//! may start while it is being written, when its only write is a
//! read-modify-write of a target read ahead (it then waits at the write).
//! Also how a step's call is made from its parameters and the results of
//! the steps it depends on.

use std::collections::BTreeMap;
use std::time::Duration;

use kubernaut_api::workflow::{Fill, Step, fill_placeholders};
use kubernaut_cluster::{ActionCall, ActionError, ExecSettings, HeldLock, Outcome, repeatable};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Intent, Out, Sink, StepEvent, StepReport};
use crate::ports::Steps;

/// Backoff before the second attempt; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
pub async fn reconcile(cluster: &dyn Steps, action: &str, intent: &Intent) -> bool {
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

/// What a step actor needs to run its step.
#[derive(Clone)]
pub struct StepRun {
    pub cluster: std::sync::Arc<dyn Steps>,
    pub settings: ExecSettings,
    pub sink: Sink,
    pub step: Step,
    pub call: Result<ActionCall, String>,
    /// The intent recorded before an interruption, to reconcile first.
    pub prior: Option<Intent>,
    pub timeout: Duration,
    /// Told the intent once announced.
    pub announced: std::sync::Arc<dyn Fn(Intent) + Send + Sync>,
}

impl StepRun {
    pub async fn run(&self) -> StepReport {
        let step = &self.step;
        let mut report = StepReport::new(&step.id, &step.action, kubernaut_api::StepPhase::Failed);
        let call = match &self.call {
            Ok(c) => c,
            Err(e) => {
                report.error = Some(e.clone());
                return report;
            }
        };
        if let Some(intent) = &self.prior
            && !reconcile(&*self.cluster, &step.action, intent).await
        {
            report.state = kubernaut_api::StepPhase::AlreadyDone;
            return report;
        }
        // The target's lock is claimed while the intent is written: both
        // are a round trip, and the action needs both. Claiming early only
        // holds the target one write longer; a claim left unused is
        // released. When the claim also read the target (an action whose
        // one write is a read-modify-write of it), the first attempt goes
        // on meanwhile: its server-side dry run is made while the intent is
        // written, and its write waits until the intent is recorded.
        let (record, recorded) = kubernaut_cluster::write_ahead();
        // No later than the claim: the lock's age is counted from here.
        let claimed = std::time::Instant::now();
        let announcing = async {
            let announced = announce(
                &*self.cluster,
                &self.sink,
                &step.id,
                call,
                &self.settings.holder,
            )
            .await;
            // The workflow knows the intent before the write can go: a step
            // restarted after it must reconcile it first (K-RR-6).
            match &announced {
                Ok(intent) => {
                    (self.announced)(intent.clone());
                    if self.lock_outlasts_attempt(claimed.elapsed()) {
                        record.stored();
                    } else {
                        record.refused("the target's lock aged while the intent was written");
                    }
                }
                Err(e) => record.refused(e.clone()),
            }
            announced
        };
        let claiming = async {
            match self.cluster.claim_lock(call, &self.settings).await {
                Some(h) if h.read_ahead() => {
                    Ahead::Tried(self.first_attempt(call, h, recorded).await)
                }
                held => Ahead::Claimed(held.map(Box::new)),
            }
        };
        let (announced, ahead) = tokio::join!(announcing, claiming);
        if let Err(e) = announced {
            // Nothing was written: every write waited for the intent.
            if let Ahead::Claimed(Some(h)) = ahead {
                h.release().await;
            }
            report.error = Some(e);
            return report;
        }
        let (done, held) = match ahead {
            // The lock aged while the intent was written: the attempt
            // claims afresh, as below.
            Ahead::Tried(Tried::Ran(Err(ActionError::NotRecorded(_)))) => (None, None),
            Ahead::Tried(tried) => (Some(tried), None),
            Ahead::Claimed(held) => (None, held.map(|h| *h)),
        };
        let held = match held {
            // The Lease could expire before a first attempt ends (the intent
            // took long to write): the attempt claims afresh.
            Some(h) if !self.lock_outlasts_attempt(h.age()) => {
                h.release().await;
                None
            }
            held => held,
        };
        let (result, attempts) = attempt_after(
            &*self.cluster,
            call,
            &self.settings,
            self.timeout,
            step.retries,
            held,
            done,
        )
        .await;
        report.attempts = attempts;
        match result {
            Ok(o) => {
                report.state = kubernaut_api::StepPhase::Succeeded;
                report.outcome = Some(o);
            }
            Err(e) => report.error = Some(e),
        }
        report
    }
}

/// The step's lock, claimed while its intent was written, or its first
/// attempt, made meanwhile when the claim read the target ahead.
enum Ahead {
    Claimed(Option<Box<HeldLock>>),
    Tried(Tried),
}

/// How an attempt ended: with the action's result, or out of time.
enum Tried {
    Ran(Result<Outcome, ActionError>),
    TimedOut,
}

impl StepRun {
    /// Whether a lock claimed `age` ago outlasts an attempt started now:
    /// one that would not is given back, and the attempt claims afresh.
    fn lock_outlasts_attempt(&self, age: Duration) -> bool {
        age + self.timeout < self.settings.lock_ttl
    }

    /// The first attempt, run while the intent is written: everything up to
    /// its write changes nothing, and the write waits for `recorded`. Its
    /// timeout starts once the intent is recorded, as a first attempt's
    /// would.
    async fn first_attempt(
        &self,
        call: &ActionCall,
        held: HeldLock,
        recorded: kubernaut_cluster::Recorded,
    ) -> Tried {
        let mut opened = recorded.clone();
        let limit = async {
            if opened.wait().await.is_ok() {
                tokio::time::sleep(self.timeout).await;
            } else {
                // The attempt fails at its write; nothing to time.
                std::future::pending::<()>().await;
            }
        };
        let run =
            self.cluster
                .run_action(call, &self.settings, Some(held.until_recorded(recorded)));
        tokio::select! {
            ran = run => Tried::Ran(ran),
            () = limit => Tried::TimedOut,
        }
    }
}

/// Tells the supervisor the step is about to act, with its target's UID and
/// generation, and waits until the intent is recorded.
async fn announce(
    cluster: &dyn Steps,
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
pub fn step_references(parameters: &Value) -> Vec<String> {
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
pub fn with_results(
    step: &Step,
    steps: &[Step],
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

/// One step: up to `1 + retries` attempts, each bounded by `timeout`; the
/// first under `held`, the target's lock if it was claimed ahead.
pub async fn attempt(
    cluster: &dyn Steps,
    call: &ActionCall,
    settings: &ExecSettings,
    timeout: Duration,
    retries: u32,
    held: Option<HeldLock>,
) -> (Result<Outcome, String>, u32) {
    attempt_after(cluster, call, settings, timeout, retries, held, None).await
}

/// [`attempt`], the first attempt already made when `first` is given.
async fn attempt_after(
    cluster: &dyn Steps,
    call: &ActionCall,
    settings: &ExecSettings,
    timeout: Duration,
    retries: u32,
    mut held: Option<HeldLock>,
    mut first: Option<Tried>,
) -> (Result<Outcome, String>, u32) {
    let mut backoff = FIRST_BACKOFF;
    let mut n = 0;
    loop {
        n += 1;
        let tried = match first.take() {
            Some(tried) => tried,
            None => {
                let run = cluster.run_action(call, settings, held.take());
                match tokio::time::timeout(timeout, run).await {
                    Ok(ran) => Tried::Ran(ran),
                    Err(_) => Tried::TimedOut,
                }
            }
        };
        let err = match tried {
            Tried::Ran(Ok(o)) => return (Ok(o), n),
            Tried::Ran(Err(e)) if transient(&e) && n <= retries => e.to_string(),
            Tried::Ran(Err(e)) => return (Err(e.to_string()), n),
            Tried::TimedOut if n <= retries => format!("timed out after {timeout:?}"),
            Tried::TimedOut => return (Err(format!("timed out after {timeout:?}")), n),
        };
        tracing::info!(action = call.name(), attempt = n, error = %err, "retrying a workflow step");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use kubernaut_api::ObjectRef;
    use kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kubernaut_api::workflow::Step;

    use super::*;
    use crate::ports::doubles::{FakeSteps, api_error};

    fn web() -> ObjectRef {
        ObjectRef::new("Deployment", "shop", "web")
    }

    fn meta(uid: &str, generation: i64) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            generation: Some(generation),
            ..Default::default()
        }
    }

    fn intent(uid: &str, generation: i64) -> Intent {
        Intent {
            target: Some(web()),
            uid: uid.into(),
            generation: Some(generation),
        }
    }

    /// Rolling back is not safe to repeat: reconciling decides.
    fn rollback() -> ActionCall {
        ActionCall::parse(
            "rollback_deployment",
            serde_json::json!({"namespace": "shop", "name": "web"}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_interrupted_step_runs_again_only_on_the_object_it_meant_to_change() {
        let fake = FakeSteps::default();
        fake.metadata.lock().unwrap().insert(web(), meta("u1", 3));
        assert!(reconcile(&fake, "rollback_deployment", &intent("u1", 3)).await);
        assert!(
            !reconcile(&fake, "rollback_deployment", &intent("u1", 2)).await,
            "the generation moved: the rollback took effect"
        );
        assert!(
            !reconcile(&fake, "rollback_deployment", &intent("u0", 3)).await,
            "replaced since"
        );
        fake.metadata.lock().unwrap().clear();
        assert!(
            !reconcile(&fake, "rollback_deployment", &intent("u1", 3)).await,
            "deleted since"
        );
        fake.metadata_fails.store(true, Ordering::Relaxed);
        assert!(
            reconcile(&fake, "rollback_deployment", &intent("u1", 3)).await,
            "unreadable: never done on a guess"
        );
        assert!(
            reconcile(&fake, "restart_pod", &intent("u0", 1)).await,
            "a repeatable action runs again whatever happened"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_tried_again_within_the_retries_and_others_are_not() {
        let fake = FakeSteps::default();
        {
            let mut answers = fake.answers.lock().unwrap();
            answers.push_back(Err(ActionError::Api(api_error(503))));
            answers.push_back(Err(ActionError::Busy(web(), "other".into())));
        }
        let (settings, call) = (ExecSettings::default(), rollback());
        let tries = |retries| {
            attempt(
                &fake,
                &call,
                &settings,
                Duration::from_secs(5),
                retries,
                None,
            )
        };
        let (result, attempts) = tries(2).await;
        assert!(result.is_ok());
        assert_eq!(attempts, 3);

        fake.answers
            .lock()
            .unwrap()
            .push_back(Err(ActionError::Refused("no".into())));
        let (result, attempts) = tries(2).await;
        assert_eq!((result.unwrap_err().as_str(), attempts), ("refused: no", 1));

        fake.answers
            .lock()
            .unwrap()
            .push_back(Err(ActionError::Api(api_error(503))));
        let (result, attempts) = tries(0).await;
        assert!(result.is_err() && attempts == 1, "no retries: one attempt");
    }

    fn run(fake: Arc<FakeSteps>, prior: Option<Intent>, sink: Sink) -> StepRun {
        StepRun {
            cluster: fake,
            settings: ExecSettings::default(),
            sink,
            step: serde_json::from_value::<Step>(serde_json::json!({
                "id": "undo", "action": "rollback_deployment",
                "parameters": {"namespace": "shop", "name": "web"}
            }))
            .unwrap(),
            call: Ok(rollback()),
            prior,
            timeout: Duration::from_secs(5),
            announced: Arc::new(|_| {}),
        }
    }

    /// A supervisor that records every intent it is told.
    fn recording() -> Sink {
        Arc::new(|out| {
            if let Out::Step(StepEvent::Starting { ack, .. }) = out {
                let _ = ack.send(());
            }
        })
    }

    #[tokio::test]
    async fn a_step_that_already_took_effect_is_not_run_again() {
        let fake = Arc::new(FakeSteps::default());
        fake.metadata.lock().unwrap().insert(web(), meta("u1", 4));
        let report = run(fake.clone(), Some(intent("u1", 3)), recording())
            .run()
            .await;
        assert_eq!(report.state, kubernaut_api::StepPhase::AlreadyDone);
        assert_eq!(fake.runs.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_step_acts_only_once_its_intent_is_recorded() {
        let fake = Arc::new(FakeSteps::default());
        fake.metadata.lock().unwrap().insert(web(), meta("u1", 3));
        let report = run(fake.clone(), None, recording()).run().await;
        assert_eq!(report.state, kubernaut_api::StepPhase::Succeeded);
        assert_eq!(fake.runs.load(Ordering::Relaxed), 1);

        // The supervisor went away before it recorded the intent.
        let lost: Sink = Arc::new(|_| {});
        let report = run(fake.clone(), None, lost).run().await;
        assert_eq!(report.state, kubernaut_api::StepPhase::Failed);
        assert!(report.error.unwrap().contains("did not record the intent"));
        assert_eq!(fake.runs.load(Ordering::Relaxed), 1, "not run");
    }
}
