//! The controller loop: the request watch feeds the supervision tree's
//! registry (which feeds the janitor) until shutdown, or until the tree
//! gives up ([`crate::root`]), which ends the loop with an error. Shutdown
//! is graceful (K-RR-7): every request is handed over, running workflows
//! may finish within the grace period, and this replica's membership Lease
//! is deleted so that peers adopt its requests at once rather than after
//! the lease duration.

use std::sync::Arc;

use futures::StreamExt;
use kubernaut_cluster::RequestEvent;
use tokio::sync::watch;

use crate::Context;
use crate::registry::RegistryMsg;

/// The supervision tree gave up on one of its actors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the supervision tree did not start: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error("the supervision tree gave up: {0}")]
    GaveUp(String),
}

/// Runs until `shutdown` turns true. `synced` is set once the first full list
/// of requests has been handed to the registry (the controller's readiness).
pub async fn run(
    ctx: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
    synced: impl Fn() + Send + 'static,
) -> Result<(), Error> {
    let (tree, root, handle) = crate::root::start(ctx.clone()).await?;
    let mut relist = tree.relist.subscribe();
    let mut failed = tree.failed.subscribe();
    let watch_events = || {
        Box::pin(
            ctx.cluster
                .request_events(ctx.settings.watch_namespace.as_deref()),
        )
    };
    let mut events = watch_events();
    let mut synced = Some(synced);
    let mut gave_up = None;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            why = failed.wait_for(Option::is_some) => {
                gave_up = why.ok().and_then(|w| w.clone());
                break;
            }
            Ok(()) = relist.changed() => {
                tracing::info!("listing the requests again for a restarted actor");
                events = watch_events();
            }
            ev = events.next() => {
                let Some(ev) = ev else { break };
                let msg = match ev {
                    RequestEvent::Applied(rr) => RegistryMsg::Observed(rr),
                    RequestEvent::Deleted { namespace, name } => RegistryMsg::Gone { namespace, name },
                    RequestEvent::Malformed { namespace, name, error } => {
                        ctx.metrics.requests_malformed.inc();
                        tracing::warn!(%namespace, %name, %error, "a RemediationRequest does not parse; skipped");
                        continue;
                    }
                    RequestEvent::Synced => {
                        if let Some(f) = synced.take() { f() }
                        continue;
                    }
                };
                // A registry being restarted misses this; the re-list
                // after its restart brings it again.
                tree.registry.tell(msg);
            }
        }
    }
    // The watch is shared with the intake's index, which must not wait on
    // a reader that has stopped reading.
    drop(events);
    if let Some(why) = gave_up {
        root.stop_children_and_wait(None, None).await;
        let _ = handle.await;
        return Err(Error::GaveUp(why));
    }
    let grace = ctx.settings.shutdown_grace;
    let released = tree.registry.ask(RegistryMsg::ReleaseAll, grace).await;
    if released.is_none() {
        tracing::warn!(
            ?grace,
            "requests still running after the grace period; their next owner reconciles them from the status"
        );
    }
    let _ = tree
        .membership
        .ask(
            crate::membership::Msg::Leave,
            std::time::Duration::from_secs(5),
        )
        .await;
    // What is still running stops with its parent; its progress is in the status.
    root.stop_children_and_wait(None, None).await;
    root.stop(Some("shutdown".into()));
    let _ = handle.await;
    Ok(())
}
