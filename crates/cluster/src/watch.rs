//! The controller's view of requests: a kube-runtime watcher (with its
//! backoff and re-list) turned into plain events. Objects that fail to parse
//! are logged and skipped so that one bad object cannot stall the watch.

use futures::{Stream, StreamExt};
use kube::Api;
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
    /// The initial list (or a re-list) is complete.
    Synced,
}

impl Cluster {
    /// Requests of one namespace, or of all when `namespace` is `None`.
    pub fn request_events(
        &self,
        namespace: Option<&str>,
    ) -> impl Stream<Item = RequestEvent> + Send + 'static {
        let api: Api<RemediationRequest> = match namespace {
            Some(ns) => Api::namespaced(self.client().clone(), ns),
            None => Api::all(self.client().clone()),
        };
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .filter_map(|ev| async move {
                match ev {
                    Ok(Event::Apply(rr)) | Ok(Event::InitApply(rr)) => Some(RequestEvent::Applied(Box::new(rr))),
                    Ok(Event::Delete(rr)) => Some(RequestEvent::Deleted {
                        namespace: rr.metadata.namespace.unwrap_or_default(),
                        name: rr.metadata.name.unwrap_or_default(),
                    }),
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
