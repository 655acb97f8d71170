//! Controller habits on the real stack: the request watch survives an
//! object its types reject, every phase transition is told by a
//! Kubernetes Event on the request, as `kubectl describe` shows it (the
//! transitions written together in one Event), and a request's status
//! goes in as few writes as what waits for them allows. One watch of the
//! requests serves both the controller and the intake's index.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use futures::TryStreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::core::DeserializeGuard;
use kubernaut_api::{Phase, RemediationRequest, RemediationRequestStatus, RequestKey, StepPhase};
use kubernaut_cluster::RequestEvent;
use kubernaut_e2e::{
    Stack, api_target, control_plane, controller_cluster, create_request, eventually, metric,
    phases, terminal_request,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn rules(signal: &str) -> serde_json::Value {
    json!([{"signal": signal, "action": "notify_only", "parameters": {"message": "seen"}}])
}

#[tokio::test]
async fn a_request_its_types_reject_does_not_stop_the_watch_for_the_others() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    // Its namespace sorts first in the cluster, so the control plane's
    // start-up check, which lists one request of any namespace, meets it.
    let t = api_target(&admin, "0-habit-malformed").await?;
    // The API server accepts an attempt count our u32 cannot hold.
    let bad = create_request(&admin, "HabitMalformed", &t, false).await?;
    // Guarded: the answer to these patches does not parse either.
    let api: Api<DeserializeGuard<RemediationRequest>> =
        Api::namespaced(admin.clone(), &t.namespace);
    let status = json!({"status": {"phase": "Failed", "analysis": {
        "decidedBy": "rules", "action": "notify_only", "workflow": {"steps": []},
        "attempts": 5_000_000_000u64}}});
    api.patch_status(&bad, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    // Listed at start-up, and again through the watch afterwards.
    let running = control_plane(stack, &t.namespace, &[], rules("HabitMalformed")).await?;
    api.patch_status(
        &bad,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"message": "touched"}})),
    )
    .await?;
    let good = create_request(&admin, "HabitMalformed", &t, false).await?;
    let rr = terminal_request(&admin, &t.namespace, &good, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Completed, "{:?}", phases(&rr));
    let malformed = "kubernaut_controller_requests_malformed_total";
    assert!(
        metric(&running, malformed).await? >= 2.0,
        "counted at list and watch"
    );
    running.shutdown().await
}

#[tokio::test]
async fn every_phase_transition_is_told_by_a_kubernetes_event_on_the_request() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "habit-events").await?;
    let running = control_plane(stack, &t.namespace, &[], rules("HabitEvents")).await?;
    let name = create_request(&admin, "HabitEvents", &t, false).await?;
    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Completed);
    let path = "Pending -> Processing -> Analyzing -> Executing -> Verifying -> Completed";
    let told = eventually("Events telling every transition", TIMEOUT, || async {
        let mut told = events_of(&admin, &t.namespace, &name).await?;
        told.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        // Each Event's path starts where the one before ended.
        let mut walked = String::from("Pending");
        for e in &told {
            let note = e.note.as_deref().unwrap_or_default();
            let hops = note.split(';').next().unwrap_or_default();
            let Some(rest) = hops.strip_prefix(walked.rsplit(" -> ").next().unwrap_or_default())
            else {
                anyhow::bail!(
                    "an Event that does not follow the last one: {note:?} after {walked:?}"
                );
            };
            walked.push_str(rest);
        }
        Ok((walked == path).then_some(told))
    })
    .await?;
    let last = told.last().expect("at least one Event");
    assert_eq!(last.reason.as_deref(), Some("NothingChanged"));
    assert_eq!(last.type_.as_deref(), Some("Normal"));
    assert_eq!(
        last.reporting_controller.as_deref(),
        Some("kubernaut-controller")
    );
    // One per status write that changed the phase, not one per transition:
    // this control plane wrote nothing else.
    let writes = metric(&running, "kubernaut_controller_status_patch_seconds_count").await?;
    assert!(
        (told.len() as f64) <= writes && told.len() < 5,
        "{} Events for {writes} status writes: {:?}",
        told.len(),
        told.iter().map(|e| &e.note).collect::<Vec<_>>()
    );
    running.shutdown().await
}

/// The Events about request `name`.
async fn events_of(admin: &kube::Client, ns: &str, name: &str) -> anyhow::Result<Vec<Event>> {
    Ok(Api::<Event>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect())
}

/// A linger long enough that only what waits for a write sends it: these
/// tests count writes, not how soon they go out.
const LONG_LINGER: (&str, &str) = ("CONTROLLER__STATUS_LINGER_MILLIS", "10000");

/// Every status the request is given from now on, in order, as a watch
/// sees them.
async fn statuses(
    api: &Api<RemediationRequest>,
    name: &str,
) -> anyhow::Result<impl futures::Stream<Item = anyhow::Result<RemediationRequestStatus>> + use<>> {
    let rv = api.get(name).await?.metadata.resource_version;
    let params = WatchParams::default().fields(&format!("metadata.name={name}"));
    let events = api.watch(&params, rv.as_deref().unwrap_or("0")).await?;
    Ok(events
        .map_err(anyhow::Error::from)
        .try_filter_map(|e| async move {
            match e {
                WatchEvent::Modified(rr) => Ok(Some(rr.status.unwrap_or_default())),
                WatchEvent::Error(e) => Err(anyhow::anyhow!("the watch failed: {e}")),
                _ => Ok(None),
            }
        }))
}

/// The write entering Executing waits for the first step's write-ahead
/// record, and a step acts once that one write lands: the first status
/// that shows Executing already records the step Running on the object it
/// is about to change, with its UID (one status write and one round trip
/// before the first change, not two).
#[tokio::test]
async fn the_write_entering_executing_carries_the_first_steps_intent() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "habit-intent").await?;
    let name = create_request(&admin, "HabitIntent", &t, false).await?;
    let api: Api<RemediationRequest> = Api::namespaced(admin.clone(), &t.namespace);
    let seen = statuses(&api, &name).await?;
    let restart = json!([{"signal": "HabitIntent", "action": "rollout_restart",
        "parameters": {"kind": "Deployment", "namespace": "{{target.namespace}}",
                       "name": "{{target.name}}"}}]);
    let running = control_plane(stack, &t.namespace, &[LONG_LINGER], restart).await?;
    let mut seen = std::pin::pin!(seen);
    let first = tokio::time::timeout(TIMEOUT, async {
        while let Some(s) = seen.try_next().await? {
            if s.phase_history.iter().any(|t| t.phase == Phase::Executing) {
                return Ok(s);
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await
    .context("no status showed Executing")??;
    let history: Vec<Phase> = first.phase_history.iter().map(|t| t.phase).collect();
    assert_eq!(
        history,
        [Phase::Processing, Phase::Analyzing, Phase::Executing],
        "one write from Pending: {first:?}"
    );
    let step = first
        .execution
        .as_ref()
        .and_then(|e| e.steps.first())
        .context("the plan")?;
    assert_eq!(step.phase, StepPhase::Running, "{first:?}");
    assert_eq!(step.target.as_ref(), Some(&t), "{first:?}");
    assert!(!step.target_uid.is_empty(), "{first:?}");
    assert!(first.owner.is_some(), "the claim goes with it: {first:?}");
    running.shutdown().await
}

/// A request that changes nothing writes its status once: its one step
/// runs before the write entering Executing lands (it has nothing to
/// record first), and Pending to Completed is one write and one Event.
#[tokio::test]
async fn a_notify_only_request_is_one_status_write() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "habit-once").await?;
    let running = control_plane(stack, &t.namespace, &[LONG_LINGER], rules("HabitOnce")).await?;
    let name = create_request(&admin, "HabitOnce", &t, false).await?;
    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    assert_eq!(
        phases(&rr),
        [
            Phase::Processing,
            Phase::Analyzing,
            Phase::Executing,
            Phase::Verifying,
            Phase::Completed
        ]
    );
    let writes = metric(&running, "kubernaut_controller_status_patch_seconds_count").await?;
    assert_eq!(writes, 1.0, "status writes");
    let told = eventually("the request's Event", TIMEOUT, || async {
        let told: Vec<String> = events_of(&admin, &t.namespace, &name)
            .await?
            .into_iter()
            .filter_map(|e| e.note)
            .collect();
        Ok((!told.is_empty()).then_some(told))
    })
    .await?;
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0].starts_with(
            "Pending -> Processing -> Analyzing -> Executing -> Verifying -> Completed"
        ),
        "{told:?}"
    );
    running.shutdown().await
}

/// The requests a controller's stream brings (Applied), skipping its other
/// events: the next one, or every one up to the end of a list if
/// `until_synced`.
async fn next_applied(
    events: &mut (impl futures::Stream<Item = RequestEvent> + Unpin),
    until_synced: bool,
) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(TIMEOUT, events.next())
            .await
            .context("no event from the request stream")?
            .context("the request stream ended")?;
        match ev {
            RequestEvent::Applied(rr) => {
                seen.push(format!(
                    "{}/{}",
                    rr.metadata.namespace.unwrap_or_default(),
                    rr.metadata.name.unwrap_or_default()
                ));
                if !until_synced {
                    return Ok(seen);
                }
            }
            RequestEvent::Synced if until_synced => return Ok(seen),
            _ => {}
        }
    }
}

#[tokio::test]
async fn one_watch_of_the_requests_feeds_the_controller_and_the_intake() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "habit-feed").await?;
    let other = api_target(&admin, "habit-feed-other").await?;
    let key = |t: &kubernaut_api::ObjectRef, name: &str| RequestKey::new(&t.namespace, name);
    let a = create_request(&admin, "HabitFeed", &t, false).await?;
    let cluster = controller_cluster(stack).await?;
    let known = cluster.known_requests();
    assert!(known.wait_synced(TIMEOUT).await, "the index lists");

    // A subscriber starts from a full list of its namespace.
    let mut first = Box::pin(cluster.request_events(Some(&t.namespace)));
    let listed = next_applied(&mut first, true).await?;
    assert_eq!(listed, [format!("{}/{a}", t.namespace)]);

    // A second one (a controller listing again) gets the list again, and
    // the first one's stream ends.
    let mut second = Box::pin(cluster.request_events(Some(&t.namespace)));
    let listed = next_applied(&mut second, true).await?;
    assert_eq!(listed, [format!("{}/{a}", t.namespace)]);
    let ended =
        tokio::time::timeout(TIMEOUT, async { while first.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the replaced stream ends");

    // Another namespace's request reaches the index, not this stream.
    let d = create_request(&admin, "HabitFeed", &other, false).await?;
    let b = create_request(&admin, "HabitFeed", &t, false).await?;
    let next = next_applied(&mut second, false).await?;
    assert_eq!(next, [format!("{}/{b}", t.namespace)]);
    for k in [key(&other, &d), key(&t, &b)] {
        eventually("the index to know the request", TIMEOUT, || async {
            Ok(known.read(|ix| ix.countable(&k)).map(|_| ()))
        })
        .await?;
    }

    // With no subscriber left, the index still follows the watch.
    drop(second);
    let c = create_request(&admin, "HabitFeed", &t, false).await?;
    let k = key(&t, &c);
    eventually(
        "the index to know a request created after",
        TIMEOUT,
        || async { Ok(known.read(|ix| ix.countable(&k)).map(|_| ())) },
    )
    .await?;
    Ok(())
}
