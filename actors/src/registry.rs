//! The registry actor: the one owner of the mapping request → supervisor.
//! It is fed by the request watch (kube-runtime's watcher, with its backoff
//! and re-list), spawns a linked supervisor for every non-terminal request
//! it does not yet supervise, stops the supervisor of a deleted request,
//! and restarts a failed supervisor under the [`RestartPolicy`] (its state
//! is rebuilt from the request's status); past the budget the request is
//! left to the next re-list and counted.
//!
//! [`RestartPolicy`]: crate::policy::RestartPolicy

use std::collections::HashMap;
use std::sync::Arc;

use kubernaut_api::RemediationRequest;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::Context;
use crate::mailbox::{Addr, Envelope, Inbox};
use crate::metrics::ActorKind;
use crate::policy;
use crate::supervisor::{self, Supervisor};

type Key = (String, String);

pub struct Registry;

pub enum RegistryMsg {
    Observed(Box<RemediationRequest>),
    Gone {
        namespace: String,
        name: String,
    },
    /// Start a failed supervisor again, after its backoff.
    Respawn(Key),
    /// Number of live supervisors.
    Live(RpcReplyPort<usize>),
}

pub struct RegistryState {
    ctx: Arc<Context>,
    inbox: Inbox,
    by_key: HashMap<Key, Addr<supervisor::Msg>>,
    by_id: HashMap<ActorId, Key>,
    restarts: HashMap<Key, u32>,
    me: Addr<RegistryMsg>,
}

/// Spawns the registry; messages go through the returned address.
pub async fn start(
    ctx: Arc<Context>,
) -> Result<(Addr<RegistryMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    let inbox = Inbox::new(&ctx.metrics, ActorKind::registry);
    let (actor, handle) =
        Actor::spawn(Some("registry".into()), Registry, (ctx, inbox.clone())).await?;
    Ok((inbox.addr(actor), handle))
}

impl Actor for Registry {
    type Msg = Envelope<RegistryMsg>;
    type State = RegistryState;
    type Arguments = (Arc<Context>, Inbox);

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<RegistryMsg>>,
        (ctx, inbox): (Arc<Context>, Inbox),
    ) -> Result<RegistryState, ActorProcessingErr> {
        inbox.started();
        Ok(RegistryState {
            ctx,
            me: inbox.addr(myself),
            inbox,
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Envelope<RegistryMsg>>,
        st: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        st.inbox.stopped();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Envelope<RegistryMsg>>,
        env: Envelope<RegistryMsg>,
        st: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        let (msg, _handling) = st.inbox.open(env);
        match msg {
            RegistryMsg::Observed(rr) => {
                let key = (
                    rr.metadata.namespace.clone().unwrap_or_default(),
                    rr.metadata.name.clone().unwrap_or_default(),
                );
                if rr.phase().is_terminal()
                    || rr.metadata.deletion_timestamp.is_some()
                    || st.by_key.contains_key(&key)
                    // Waiting for its backoff: the respawn will come.
                    || st.restarts.contains_key(&key)
                {
                    return Ok(());
                }
                spawn(&myself, st, key).await;
            }
            RegistryMsg::Gone { namespace, name } => {
                let key = (namespace, name);
                st.restarts.remove(&key);
                if let Some(sup) = st.by_key.get(&key) {
                    sup.actor().stop(Some("request deleted".into()));
                }
            }
            RegistryMsg::Respawn(key) => {
                if st.restarts.contains_key(&key) && !st.by_key.contains_key(&key) {
                    spawn(&myself, st, key).await;
                }
            }
            RegistryMsg::Live(reply) => {
                if !reply.is_closed() {
                    let _ = reply.send(st.by_key.len());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Envelope<RegistryMsg>>,
        evt: SupervisionEvent,
        st: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(key) = st.by_id.remove(&cell.get_id()) {
                    tracing::debug!(namespace = %key.0, name = %key.1, ?reason, "supervisor stopped");
                    st.by_key.remove(&key);
                    st.restarts.remove(&key);
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(key) = st.by_id.remove(&cell.get_id()) else {
                    return Ok(());
                };
                st.by_key.remove(&key);
                let n = st.restarts.entry(key.clone()).or_insert(0);
                *n += 1;
                let reason = policy::reason(&error);
                match st.ctx.settings.restart.backoff(*n) {
                    Some(delay) => {
                        st.ctx
                            .metrics
                            .restarts
                            .get_or_create(&st.ctx.metrics.actor(ActorKind::supervisor))
                            .inc();
                        tracing::warn!(namespace = %key.0, name = %key.1, error = %reason, restart = *n, ?delay, "supervisor failed; restarting it from the request's status");
                        st.me.tell_after(delay, RegistryMsg::Respawn(key));
                    }
                    None => {
                        tracing::error!(namespace = %key.0, name = %key.1, error = %reason, "supervisor failed too often; leaving the request until the next re-list");
                        st.restarts.remove(&key);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn spawn(myself: &ActorRef<Envelope<RegistryMsg>>, st: &mut RegistryState, key: Key) {
    let inbox = Inbox::new(&st.ctx.metrics, ActorKind::supervisor);
    let args = supervisor::Args {
        namespace: key.0.clone(),
        name: key.1.clone(),
        ctx: st.ctx.clone(),
        inbox: inbox.clone(),
    };
    let name = format!("supervisor/{}/{}", key.0, key.1);
    match Actor::spawn_linked(Some(name), Supervisor, args, myself.get_cell()).await {
        Ok((sup, _join)) => {
            st.by_id.insert(sup.get_id(), key.clone());
            st.by_key.insert(key, inbox.addr(sup));
        }
        Err(e) => {
            tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "could not start a supervisor")
        }
    }
}
