//! Kubernetes events as signals (K-GW-1): a core/v1 Event, posted to
//! `/api/v1/signals/kubernetes-event` or seen by the opt-in event watcher.
//! Only Warning events are signals; the signal is named after the event's
//! reason (BackOff, OOMKilling, FailedScheduling, ...) and targets the
//! involved object. An event's identity is its uid and count (K-GW-5): a
//! repeat of the same event with a higher count is a new occurrence. The
//! watcher's feed ([`pump`]) skips old events and repeats for one object.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kubernaut_api::k8s_openapi::api::core::v1::Event;
use kubernaut_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubernaut_api::{ObjectRef, RejectReason, Signal, SignalSource, SignalStatus};

use crate::{GatewayState, SignalError};

/// Settings of the event watcher's feed.
#[derive(Clone, Copy, Debug)]
pub struct WatchSettings {
    /// Events whose last occurrence is older than this are not signals: a
    /// re-list replays every event that still exists.
    pub max_age: Duration,
    /// One signal per involved object and reason within this window; the
    /// request's occurrence count does not need every repeat of an event.
    pub suppress: Duration,
}

/// Bound on the suppression memory; it starts over when full.
const SUPPRESS_MAX: usize = 10_000;

/// Feeds watched Warning events to the intake until the stream ends.
/// Failures are retried a few times, then left to the next update or
/// re-list of the event (a watch has no sender to answer 503 to).
pub async fn pump(events: impl Stream<Item = Event>, st: GatewayState, settings: WatchSettings) {
    const SOURCE: &str = "kubernetes-event";
    let mut recent: HashMap<(String, String), Instant> = HashMap::new();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let now = Timestamp::now();
        let signal = match signal(&event, now) {
            Ok(s) => s,
            Err(_) => continue,
        };
        let age = now.duration_since(signal.firing_time);
        if age > SignedDuration::try_from(settings.max_age).unwrap_or(SignedDuration::MAX) {
            continue;
        }
        let key = (
            event
                .involved_object
                .uid
                .clone()
                .unwrap_or_else(|| signal.resource.to_string()),
            signal.name.clone(),
        );
        if recent
            .get(&key)
            .is_some_and(|at| at.elapsed() < settings.suppress)
        {
            continue;
        }
        if recent.len() >= SUPPRESS_MAX {
            recent.clear();
        }
        recent.insert(key, Instant::now());
        st.metrics.count(SOURCE, "received", "");
        let signal = match st.limits.bound(signal) {
            Ok(s) => s,
            Err(e) => {
                if let SignalError::TooLarge(bound, detail) = e {
                    st.metrics.count(SOURCE, "invalid", bound);
                    tracing::warn!(%detail, "a watched event is over the gateway's limits; skipped");
                }
                continue;
            }
        };
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            if crate::process(&st, SOURCE, signal.clone()).await.is_ok() {
                break;
            }
        }
    }
}

pub fn parse(body: &[u8]) -> Result<Event, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid core/v1 Event: {e}"))
}

/// The signal of one event, or why there is none.
pub fn signal(event: &Event, received: Timestamp) -> Result<Signal, SignalError> {
    let kind = event.type_.as_deref().unwrap_or("");
    if kind != "Warning" {
        return Err(SignalError::Ignored(
            RejectReason::NotWarning,
            format!("only Warning events are signals, this one is {kind:?}"),
        ));
    }
    let reason = event
        .reason
        .as_deref()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| SignalError::Invalid("the event has no reason".into()))?;
    let uid = event
        .metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| SignalError::Invalid("the event has no metadata.uid".into()))?;
    let obj = &event.involved_object;
    let obj_kind = obj.kind.as_deref().unwrap_or("");
    let obj_name = obj.name.as_deref().unwrap_or("");
    let Some((_, namespaced)) = crate::target_kind(obj_kind) else {
        return Err(SignalError::NoTarget(format!(
            "events about {obj_kind:?} objects are not remediated"
        )));
    };
    let namespace = if namespaced {
        obj.namespace
            .as_deref()
            .or(event.metadata.namespace.as_deref())
            .unwrap_or("")
    } else {
        ""
    };
    if obj_name.is_empty() || (namespaced && namespace.is_empty()) {
        return Err(SignalError::Invalid(
            "involvedObject needs a name (and a namespace for namespaced kinds)".into(),
        ));
    }
    let firing_time = event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or(event.event_time.as_ref().map(|t| t.0))
        .or(event.first_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(received);
    let mut labels = BTreeMap::from([
        ("alertname".to_string(), reason.to_string()),
        ("reason".to_string(), reason.to_string()),
        ("kind".to_string(), obj_kind.to_string()),
        ("name".to_string(), obj_name.to_string()),
    ]);
    if !namespace.is_empty() {
        labels.insert("namespace".into(), namespace.to_string());
    }
    if let Some(c) = event.source.as_ref().and_then(|s| s.component.clone()) {
        labels.insert("source_component".into(), c);
    }
    if let Some(c) = &event.reporting_component {
        labels.insert("reporting_component".into(), c.clone());
    }
    let mut annotations = BTreeMap::new();
    if let Some(m) = &event.message {
        annotations.insert("message".to_string(), m.clone());
    }
    Ok(Signal {
        source: SignalSource::KubernetesEvent,
        status: SignalStatus::Firing,
        name: reason.to_string(),
        severity: "warning".into(),
        instance_key: format!("{uid}#{}", event.count.unwrap_or(1)),
        resource: ObjectRef::new(obj_kind, namespace, obj_name),
        labels,
        annotations,
        firing_time,
        ended_time: None,
        received_time: received,
        raw: serde_json::to_string(event).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-22T03:00:05Z".parse().unwrap()
    }

    const BACKOFF: &str = r#"{
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "cart-1.17a", "namespace": "shop", "uid": "5d0c9a1e-0000-4000-8000-000000000001"},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "cart-1", "uid": "p-1", "apiVersion": "v1"},
        "reason": "BackOff", "message": "Back-off restarting failed container app",
        "type": "Warning", "count": 7,
        "firstTimestamp": "2026-11-22T02:50:00Z", "lastTimestamp": "2026-11-22T03:00:00Z",
        "source": {"component": "kubelet", "host": "node-1"}
    }"#;

    #[test]
    fn a_warning_event_targets_its_involved_object() {
        let e = parse(BACKOFF.as_bytes()).unwrap();
        let s = signal(&e, now()).unwrap();
        assert_eq!(s.name, "BackOff");
        assert_eq!(s.resource, ObjectRef::new("Pod", "shop", "cart-1"));
        assert_eq!(s.source, SignalSource::KubernetesEvent);
        assert_eq!(s.instance_key, "5d0c9a1e-0000-4000-8000-000000000001#7");
        assert_eq!(s.firing_time.to_string(), "2026-11-22T03:00:00Z");
        assert_eq!(s.labels["source_component"], "kubelet");
        assert_eq!(
            s.annotations["message"],
            "Back-off restarting failed container app"
        );
    }

    #[test]
    fn a_higher_count_is_a_new_occurrence() {
        let a = signal(&parse(BACKOFF.as_bytes()).unwrap(), now()).unwrap();
        let b = signal(
            &parse(BACKOFF.replace("\"count\": 7", "\"count\": 8").as_bytes()).unwrap(),
            now(),
        )
        .unwrap();
        assert_ne!(a.instance_id(), b.instance_id());
    }

    #[test]
    fn normal_events_and_unknown_kinds_are_not_signals() {
        let normal = parse(BACKOFF.replace("Warning", "Normal").as_bytes()).unwrap();
        assert!(matches!(
            signal(&normal, now()),
            Err(SignalError::Ignored(RejectReason::NotWarning, _))
        ));
        let svc = parse(
            BACKOFF
                .replace("\"kind\": \"Pod\"", "\"kind\": \"Service\"")
                .as_bytes(),
        )
        .unwrap();
        assert!(matches!(signal(&svc, now()), Err(SignalError::NoTarget(_))));
        let node = parse(
            BACKOFF
                .replace(
                    "\"kind\": \"Pod\", \"namespace\": \"shop\"",
                    "\"kind\": \"Node\"",
                )
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            signal(&node, now()).unwrap().resource,
            ObjectRef::new("Node", "", "cart-1")
        );
    }

    #[test]
    fn events_missing_identity_or_reason_are_invalid() {
        let no_uid = parse(
            BACKOFF
                .replace("\"uid\": \"5d0c", "\"x\": \"5d0c")
                .as_bytes(),
        )
        .unwrap();
        assert!(matches!(
            signal(&no_uid, now()),
            Err(SignalError::Invalid(_))
        ));
        let no_reason = parse(BACKOFF.replace("\"reason\": \"BackOff\",", "").as_bytes()).unwrap();
        assert!(matches!(
            signal(&no_reason, now()),
            Err(SignalError::Invalid(_))
        ));
        assert!(parse(b"{\"involvedObject\": 3}").is_err());
    }
}
