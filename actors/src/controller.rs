//! The controller loop: the request watch and the membership actor feed
//! the registry (which feeds the janitor) until shutdown. Shutdown is graceful (K-RR-7): every
//! request is handed over, running workflows may finish within the grace
//! period, and this replica's membership Lease is deleted so that peers
//! adopt its requests at once rather than after the lease duration.

use std::sync::Arc;

use futures::StreamExt;
use kubernaut_cluster::RequestEvent;
use tokio::sync::watch;

use crate::Context;
use crate::registry::{self, RegistryMsg};

/// Runs until `shutdown` turns true. `synced` is set once the first full list
/// of requests has been handed to the registry (the controller's readiness).
pub async fn run(
    ctx: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
    synced: impl Fn() + Send + 'static,
) -> Result<(), ractor::SpawnErr> {
    let janitor = crate::janitor::start(ctx.clone()).await?;
    let (registry, handle) = registry::start(ctx.clone(), janitor.clone()).await?;
    let membership = crate::membership::start(ctx.clone(), registry.clone()).await?;
    let events = ctx
        .cluster
        .request_events(ctx.settings.watch_namespace.as_deref());
    futures::pin_mut!(events);
    let mut synced = Some(synced);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            ev = events.next() => {
                let Some(ev) = ev else { break };
                let msg = match ev {
                    RequestEvent::Applied(rr) => RegistryMsg::Observed(rr),
                    RequestEvent::Deleted { namespace, name } => RegistryMsg::Gone { namespace, name },
                    RequestEvent::Synced => {
                        if let Some(f) = synced.take() { f() }
                        continue;
                    }
                };
                if !registry.tell(msg) {
                    tracing::error!("the registry stopped; the controller stops");
                    break;
                }
            }
        }
    }
    let grace = ctx.settings.shutdown_grace;
    let released = registry.ask(RegistryMsg::ReleaseAll, grace).await;
    if released.is_none() {
        tracing::warn!(
            ?grace,
            "requests still running after the grace period; their next owner reconciles them from the status"
        );
    }
    let _ = membership
        .ask(
            crate::membership::Msg::Leave,
            std::time::Duration::from_secs(5),
        )
        .await;
    // What is still running stops with its parent; its progress is in the status.
    registry.actor().stop_children_and_wait(None, None).await;
    registry.actor().stop(Some("shutdown".into()));
    janitor.actor().stop(Some("shutdown".into()));
    let _ = handle.await;
    Ok(())
}
