//! The controller's view of requests: a kube-runtime watcher (with its
//! backoff and re-list) turned into plain events. It reads through
//! `DeserializeGuard`: a request the API server accepted but these types
//! reject (a field out of range, a hand-written status) is reported as
//! [`RequestEvent::Malformed`] and skipped, so that one bad object never
//! stalls the list or the watch for all the others.
//!
//! The controller shares one watch of every request with the intake's
//! index ([`crate::KnownRequests`]): every request write reaches a process
//! once, not once per reader, which halves what the API server sends and
//! what this process parses per write.

use futures::{Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::watcher::{self, Event};
use kubernaut_api::RemediationRequest;

use crate::Cluster;

#[derive(Debug)]
pub enum RequestEvent {
    Applied(Box<RemediationRequest>),
    Deleted {
        namespace: String,
        name: String,
    },
    /// A request that does not parse: skipped.
    Malformed {
        namespace: String,
        name: String,
        error: String,
    },
    /// The initial list (or a re-list) is complete.
    Synced,
}

/// A watch event as the controller sees it; `None` for what it does not
/// need (a list beginning, an error the watcher retries on its own).
pub(crate) fn request_event(
    ev: Result<Event<DeserializeGuard<RemediationRequest>>, watcher::Error>,
) -> Option<RequestEvent> {
    match ev {
        Ok(Event::Apply(g)) | Ok(Event::InitApply(g)) => Some(applied(g)),
        Ok(Event::Delete(g)) => {
            let meta = match g.0 {
                Ok(rr) => rr.metadata,
                Err(invalid) => invalid.metadata,
            };
            Some(RequestEvent::Deleted {
                namespace: meta.namespace.unwrap_or_default(),
                name: meta.name.unwrap_or_default(),
            })
        }
        Ok(Event::InitDone) => Some(RequestEvent::Synced),
        Ok(Event::Init) => None,
        Err(e) => {
            tracing::warn!(error = %e, "request watch error; the watcher backs off and retries");
            None
        }
    }
}

fn applied(guard: DeserializeGuard<RemediationRequest>) -> RequestEvent {
    match guard.0 {
        Ok(rr) => RequestEvent::Applied(Box::new(rr)),
        Err(invalid) => RequestEvent::Malformed {
            namespace: invalid.metadata.namespace.unwrap_or_default(),
            name: invalid.metadata.name.unwrap_or_default(),
            error: invalid.error,
        },
    }
}

impl RequestEvent {
    /// The namespace of the request it is about; `None` for
    /// [`RequestEvent::Synced`].
    pub fn namespace(&self) -> Option<&str> {
        match self {
            RequestEvent::Applied(rr) => Some(rr.metadata.namespace.as_deref().unwrap_or_default()),
            RequestEvent::Deleted { namespace, .. } | RequestEvent::Malformed { namespace, .. } => {
                Some(namespace)
            }
            RequestEvent::Synced => None,
        }
    }
}

impl Cluster {
    /// Requests of one namespace, or of all when `namespace` is `None`.
    /// Each call starts from a full list (a [`RequestEvent::Synced`] ends
    /// it). The events come from the watch of every request that this
    /// handle shares with [`Cluster::known_requests`] (which needs it
    /// anyway), filtered; a new call takes that watch over from the
    /// previous one, whose stream ends.
    pub fn request_events(
        &self,
        namespace: Option<&str>,
    ) -> impl Stream<Item = RequestEvent> + Send + 'static {
        let namespace = namespace.map(str::to_owned);
        self.known_requests().subscribe().filter(move |ev| {
            let ours = match (&namespace, ev.namespace()) {
                (Some(want), Some(ns)) => want == ns,
                _ => true,
            };
            std::future::ready(ours)
        })
    }
}
