//! The controller's view of requests: a kube-runtime watcher (with its
//! backoff and re-list) turned into plain events. It reads through
//! `DeserializeGuard`: a request the API server accepted but these types
//! reject (a field out of range, a hand-written status) is reported as
//! [`RequestEvent::Malformed`] and skipped, so that one bad object never
//! stalls the list or the watch for all the others.

use futures::{Stream, StreamExt};
use kube::Api;
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
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

impl Cluster {
    /// Requests of one namespace, or of all when `namespace` is `None`.
    pub fn request_events(
        &self,
        namespace: Option<&str>,
    ) -> impl Stream<Item = RequestEvent> + Send + 'static {
        let api: Api<DeserializeGuard<RemediationRequest>> = match namespace {
            Some(ns) => Api::namespaced(self.client().clone(), ns),
            None => Api::all(self.client().clone()),
        };
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .filter_map(|ev| async move {
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
            })
    }
}
