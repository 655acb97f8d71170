//! Controller habits on the real stack: the request watch survives an
//! object its types reject, and every phase transition is told by a
//! Kubernetes Event on the request, as `kubectl describe` shows it (the
//! transitions written together in one Event).

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kubernaut_api::{Phase, RemediationRequest};
use kubernaut_e2e::{
    Stack, api_target, control_plane, create_request, eventually, metric, phases, terminal_request,
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
    let t = api_target(&admin, "habit-malformed").await?;
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
    let events: Api<Event> = Api::namespaced(admin.clone(), &t.namespace);
    let path = "Pending -> Processing -> Analyzing -> Executing -> Verifying -> Completed";
    let told = eventually("Events telling every transition", TIMEOUT, || async {
        let mut told: Vec<Event> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
            .collect();
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
