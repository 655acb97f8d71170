//! Kubernetes Events on RemediationRequests (`events.k8s.io/v1`), what
//! `kubectl describe remediationrequest` shows an SRE: one per phase
//! transition and escalation. Actors hand notes to an [`EventSink`] without
//! waiting; one task publishes them through kube-runtime's `Recorder`
//! (which folds repeats into an event series). A full queue drops notes and
//! counts them: Events are a convenience, the status and the audit trail
//! are the record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

use crate::{Cluster, bounded};

/// Notes waiting to be published; beyond this they are dropped.
const QUEUE: usize = 4096;
/// The API server's limit on an Event's note.
const MAX_NOTE: usize = 1024;

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
        let recorder = Recorder::new(
            self.client().clone(),
            Reporter {
                controller: controller.to_string(),
                instance: Some(instance.to_string()),
            },
        );
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let reference = ObjectReference {
                    api_version: Some("kubernaut.io/v1alpha1".into()),
                    kind: Some("RemediationRequest".into()),
                    namespace: Some(n.namespace.clone()),
                    name: Some(n.name.clone()),
                    uid: Some(n.uid.clone()),
                    ..Default::default()
                };
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
                let event = Event {
                    type_: if n.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason,
                    note: Some(note),
                    action: n.action.to_string(),
                    secondary: None,
                };
                if let Err(e) = bounded(recorder.publish(&event, &reference)).await {
                    tracing::debug!(error = %e, namespace = %n.namespace, name = %n.name, "publishing an Event failed");
                }
            }
        });
        EventSink {
            tx: Some(tx),
            dropped: Arc::default(),
        }
    }
}
