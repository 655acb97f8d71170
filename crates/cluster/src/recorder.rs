//! Kubernetes Events on RemediationRequests (`events.k8s.io/v1`), what
//! `kubectl describe remediationrequest` shows an SRE: one per status write
//! that changes the phase (the transitions written together are one Event)
//! and one per escalation. Actors hand notes to an [`EventSink`] without
//! waiting; one task publishes them, a few at a time. A full queue drops
//! notes and counts them: Events are a convenience, the status and the
//! audit trail are the record.
//!
//! Events are created directly rather than through kube-runtime's
//! `Recorder`: its series folding scans every Event it published in the
//! last minutes on each publish, which at hundreds of requests a second is
//! a quadratic cost on the hot path, and a request's notes hardly ever
//! repeat (each names its own transitions).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;

use crate::{Cluster, bounded};

/// Notes waiting to be published; beyond this they are dropped.
const QUEUE: usize = 4096;
/// The API server's limit on an Event's note.
const MAX_NOTE: usize = 1024;
/// Events being created at once: enough to keep up with a burst of
/// requests without one slow create holding up the others.
const IN_FLIGHT: usize = 8;

/// One Event about one request.
#[derive(Clone, Debug)]
pub struct Note {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub warning: bool,
    /// PascalCase, at most 128 characters.
    pub reason: String,
    pub note: String,
    /// What the controller did: `Transition`, `Escalate`.
    pub action: &'static str,
}

/// Where actors send Events; cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Note>>,
    dropped: Arc<AtomicU64>,
}

impl EventSink {
    /// A sink that publishes nothing (tools, unit tests).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dropped: Arc::default(),
        }
    }

    /// Queues `note` without waiting; `false` when the queue was full and
    /// it was dropped (a disabled sink drops nothing: it publishes nothing).
    pub fn emit(&self, note: Note) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        if tx.try_send(note).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Notes dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Cluster {
    /// Starts the task that publishes Events as `controller` (instance
    /// `instance`, this replica).
    pub fn event_sink(&self, controller: &str, instance: &str) -> EventSink {
        let (tx, mut rx) = mpsc::channel::<Note>(QUEUE);
        let client = self.client().clone();
        let (controller, instance) = (controller.to_string(), instance.to_string());
        tokio::spawn(
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).for_each_concurrent(IN_FLIGHT, move |n| {
                let event = event(n, &controller, &instance);
                let api: Api<Event> =
                    Api::namespaced(client.clone(), event.metadata.namespace.as_deref().unwrap_or_default());
                async move {
                    if let Err(e) = bounded(api.create(&PostParams::default(), &event)).await {
                        tracing::debug!(error = %e, event = ?event.metadata.name, "publishing an Event failed");
                    }
                }
            }),
        );
        EventSink {
            tx: Some(tx),
            dropped: Arc::default(),
        }
    }
}

/// The Event for `n`, reported by `controller` (replica `instance`). Its
/// name is the request's and the time in nanoseconds, as client-go's.
fn event(n: Note, controller: &str, instance: &str) -> Event {
    let now = Timestamp::now();
    let mut note = n.note;
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let mut reason = n.reason;
    reason.truncate(128);
    Event {
        metadata: ObjectMeta {
            namespace: Some(n.namespace.clone()),
            name: Some(format!("{}.{:x}", n.name, now.as_nanosecond())),
            ..Default::default()
        },
        regarding: Some(ObjectReference {
            api_version: Some("kubernaut.io/v1alpha1".into()),
            kind: Some("RemediationRequest".into()),
            namespace: Some(n.namespace),
            name: Some(n.name),
            uid: Some(n.uid),
            ..Default::default()
        }),
        event_time: Some(MicroTime(now)),
        type_: Some(if n.warning { "Warning" } else { "Normal" }.into()),
        reason: Some(reason),
        note: Some(note),
        action: Some(n.action.to_string()),
        reporting_controller: Some(controller.to_string()),
        reporting_instance: Some(instance.to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(text: &str) -> Note {
        Note {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "u".into(),
            warning: true,
            reason: "R".repeat(300),
            note: text.into(),
            action: "Transition",
        }
    }

    #[test]
    fn an_event_is_bounded_and_names_its_request() {
        let e = event(note(&"é".repeat(2000)), "kubernaut", "replica-a");
        let text = e.note.unwrap();
        assert!(
            text.len() <= MAX_NOTE && text.ends_with("..."),
            "{}",
            text.len()
        );
        assert_eq!(e.reason.unwrap().len(), 128);
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert!(e.metadata.name.unwrap().starts_with("web-1."));
        let r = e.regarding.unwrap();
        assert_eq!(
            (r.name.as_deref(), r.uid.as_deref()),
            (Some("web-1"), Some("u"))
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("replica-a"));
    }
}
