//! The registry actor: the one owner of the mapping request → supervisor.
//! It is fed by the request watch, spawns a linked supervisor for every
//! non-terminal request it does not yet supervise, and decides what happens
//! when a supervisor fails: restart it (its state is rebuilt from the
//! request's status) up to a budget, then leave the request to the next
//! re-list and count it.

use std::collections::HashMap;
use std::sync::Arc;

use kubernaut_api::RemediationRequest;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::Context;
use crate::supervisor::{self, Supervisor};

type Key = (String, String);

pub struct Registry;

pub enum RegistryMsg {
    Observed(Box<RemediationRequest>),
    Gone {
        namespace: String,
        name: String,
    },
    /// Number of live supervisors.
    Live(RpcReplyPort<usize>),
}

pub struct RegistryState {
    ctx: Arc<Context>,
    by_key: HashMap<Key, ActorRef<supervisor::Msg>>,
    by_id: HashMap<ActorId, Key>,
    restarts: HashMap<Key, u32>,
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = Arc<Context>;

    async fn pre_start(
        &self,
        _myself: ActorRef<RegistryMsg>,
        ctx: Arc<Context>,
    ) -> Result<RegistryState, ActorProcessingErr> {
        Ok(RegistryState {
            ctx,
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RegistryMsg>,
        msg: RegistryMsg,
        st: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Observed(rr) => {
                let key = (
                    rr.metadata.namespace.clone().unwrap_or_default(),
                    rr.metadata.name.clone().unwrap_or_default(),
                );
                if rr.phase().is_terminal()
                    || rr.metadata.deletion_timestamp.is_some()
                    || st.by_key.contains_key(&key)
                {
                    return Ok(());
                }
                spawn(&myself, st, key).await;
            }
            RegistryMsg::Gone { namespace, name } => {
                if let Some(sup) = st.by_key.get(&(namespace, name)) {
                    sup.stop(Some("request deleted".into()));
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
        myself: ActorRef<RegistryMsg>,
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
                st.ctx.metrics.supervisor_restarts.inc();
                if *n <= st.ctx.settings.max_restarts {
                    tracing::warn!(namespace = %key.0, name = %key.1, %error, attempt = *n, "supervisor failed; restarting it from the request's status");
                    spawn(&myself, st, key).await;
                } else {
                    tracing::error!(namespace = %key.0, name = %key.1, %error, "supervisor failed too often; leaving the request until the next re-list");
                    st.restarts.remove(&key);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn spawn(myself: &ActorRef<RegistryMsg>, st: &mut RegistryState, key: Key) {
    let args = supervisor::Args {
        namespace: key.0.clone(),
        name: key.1.clone(),
        ctx: st.ctx.clone(),
    };
    let name = format!("supervisor/{}/{}", key.0, key.1);
    match Actor::spawn_linked(Some(name), Supervisor, args, myself.get_cell()).await {
        Ok((sup, _join)) => {
            st.by_id.insert(sup.get_id(), key.clone());
            st.by_key.insert(key, sup);
        }
        Err(e) => {
            tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "could not start a supervisor")
        }
    }
}
