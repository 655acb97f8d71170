//! The opt-in watch of Kubernetes Warning events (K-GW-1): a kube-runtime
//! watcher (with its backoff and re-list) over core/v1 Events of all
//! namespaces, filtered to `type=Warning` by the API server.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;

use crate::Cluster;

impl Cluster {
    /// Warning events as they are created or updated (a repeat raises
    /// `count`). A (re-)list replays the events that still exist; callers
    /// skip the old ones.
    pub fn warning_events(&self) -> impl Stream<Item = Event> + Send + 'static {
        let api: Api<Event> = Api::all(self.client().clone());
        watcher::watcher(api, watcher::Config::default().fields("type=Warning"))
            .default_backoff()
            .applied_objects()
            .filter_map(|ev| async move {
                match ev {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "event watch error; the watcher backs off and retries");
                        None
                    }
                }
            })
    }
}
