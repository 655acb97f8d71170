//! One step's work, run in its step actor: reconcile a recorded intent,
//! announce the intent (acknowledged once the supervisor recorded it), then
//! up to `1 + retries` attempts of the action, each bounded by its timeout.
//! Also how a step's call is made from its parameters and the results of
//! the steps it depends on.

use std::collections::BTreeMap;
use std::time::Duration;

use kubernaut_api::workflow::{Fill, Step, fill_placeholders};
use kubernaut_cluster::{ActionCall, ActionError, Cluster, ExecSettings, Outcome, repeatable};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Intent, Out, Sink, StepEvent, StepReport};

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

/// What a step actor needs to run its step.
#[derive(Clone)]
pub struct StepRun {
    pub cluster: Cluster,
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
            && !reconcile(&self.cluster, &step.action, intent).await
        {
            report.state = kubernaut_api::StepPhase::AlreadyDone;
            return report;
        }
        match announce(
            &self.cluster,
            &self.sink,
            &step.id,
            call,
            &self.settings.holder,
        )
        .await
        {
            Ok(intent) => (self.announced)(intent),
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        }
        let (result, attempts) = attempt(
            &self.cluster,
            call,
            &self.settings,
            self.timeout,
            step.retries,
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

/// One step: up to `1 + retries` attempts, each bounded by `timeout`.
pub async fn attempt(
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
