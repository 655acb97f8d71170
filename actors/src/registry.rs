//! The registry actor: the one owner of the mapping request → supervisor.
//! It is fed by the request watch (kube-runtime's watcher, with its backoff
//! and re-list) and by the membership actor. It supervises exactly the
//! non-terminal requests that rendezvous hashing gives this replica
//! (K-RR-7), adopting one only when nobody live drives it: its recorded
//! owner is none, this replica, or a replica no longer alive. When the
//! members change it hands over the requests it no longer owns (their
//! supervisors finish the running workflow, clear the owner and stop) and
//! adopts the ones it gains. It stops the supervisor of a deleted request,
//! and restarts a failed supervisor under the [`RestartPolicy`] (its state
//! is rebuilt from the request's status); past the budget the request is
//! left to the next re-list and counted.
//!
//! [`RestartPolicy`]: crate::children::RestartPolicy

use std::collections::HashMap;
use std::sync::Arc;

use kubernaut_api::{ObjectRef, RemediationRequest, RequestKey};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::Context;
use crate::children::{self, Children, Verdict};
use crate::janitor;
use crate::mailbox::{Addr, Envelope, Inbox, Route};
use crate::metrics::ActorKind;
use crate::supervisor::{self, Supervisor};
use crate::tasks::Timers;

pub struct Registry;

pub enum RegistryMsg {
    Observed(Box<RemediationRequest>),
    Gone {
        namespace: String,
        name: String,
    },
    /// Start a failed supervisor again, after its backoff.
    Respawn(RequestKey),
    /// The live replicas, sorted (from the membership actor).
    Members(Vec<String>),
    /// Hand every request over (graceful shutdown); answered once every
    /// supervisor has stopped.
    ReleaseAll(RpcReplyPort<()>),
    /// Number of live supervisors.
    Live(RpcReplyPort<usize>),
}

pub struct RegistryState {
    ctx: Arc<Context>,
    inbox: Inbox,
    _live: crate::mailbox::Live,
    by_key: HashMap<RequestKey, Addr<supervisor::Msg>>,
    /// The supervisors by actor id, and the failures of each request's.
    children: Children<RequestKey>,
    me: Addr<RegistryMsg>,
    timers: Timers,
    /// Non-terminal requests seen, with their recorded owner.
    known: HashMap<RequestKey, Option<String>>,
    /// `None` until membership is first known: nothing is adopted before.
    members: Option<Vec<String>>,
    releasing: Option<RpcReplyPort<()>>,
    janitor: Route<janitor::Msg>,
}

impl RegistryState {
    fn view(&self) -> crate::shard::View<'_> {
        crate::shard::View {
            identity: &self.ctx.identity,
            members: self.members.as_deref(),
            releasing: self.releasing.is_some(),
        }
    }

    fn mine(&self, key: &RequestKey) -> bool {
        self.view().mine(key)
    }

    /// Nobody live drives a request recorded with this owner.
    fn free(&self, owner: &Option<String>) -> bool {
        self.view().free(owner.as_deref())
    }

    fn adoptable(&self, key: &RequestKey) -> bool {
        !self.by_key.contains_key(key)
            && !self.children.failing(key)
            && self.mine(key)
            && self.known.get(key).is_some_and(|o| self.free(o))
    }

    /// A request on `target` ended or went away: the requests held busy
    /// on it may start now rather than at their next re-check.
    fn nudge(&self, target: &ObjectRef) {
        for key in self.ctx.holds.requests_for(target) {
            if let Some(sup) = self.by_key.get(&key) {
                sup.tell(supervisor::Msg::Recheck);
            }
        }
    }

    fn answer_release(&mut self) {
        if self.by_key.is_empty()
            && let Some(reply) = self.releasing.take()
        {
            let _ = reply.send(());
        }
    }
}

/// Spawns the registry linked to `parent`; messages go through the
/// returned address.
pub async fn start(
    ctx: Arc<Context>,
    janitor: Route<janitor::Msg>,
    parent: Option<ractor::ActorCell>,
) -> Result<(Addr<RegistryMsg>, ractor::ActorCell), ractor::SpawnErr> {
    let inbox = Inbox::new(&ctx.metrics, ActorKind::registry);
    let args = (ctx, inbox.clone(), janitor);
    // Unnamed: ractor's names are process-global, and one process may run
    // several control planes (tests).
    let (actor, _) = match parent {
        Some(p) => Actor::spawn_linked(None, Registry, args, p).await?,
        None => Actor::spawn(None, Registry, args).await?,
    };
    let cell = actor.get_cell();
    Ok((inbox.addr(actor), cell))
}

impl Actor for Registry {
    type Msg = Envelope<RegistryMsg>;
    type State = RegistryState;
    type Arguments = (Arc<Context>, Inbox, Route<janitor::Msg>);

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<RegistryMsg>>,
        (ctx, inbox, janitor): (Arc<Context>, Inbox, Route<janitor::Msg>),
    ) -> Result<RegistryState, ActorProcessingErr> {
        let live = inbox.started();
        let m = &ctx.metrics;
        let children = Children::new(ctx.settings.restart).counting(
            m.restarts
                .get_or_create(&m.actor(ActorKind::supervisor))
                .clone(),
        );
        Ok(RegistryState {
            ctx,
            me: inbox.addr(myself),
            inbox,
            _live: live,
            by_key: HashMap::new(),
            children,
            timers: Timers::default(),
            known: HashMap::new(),
            members: None,
            releasing: None,
            janitor,
        })
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
                let key = RequestKey::new(
                    rr.metadata.namespace.clone().unwrap_or_default(),
                    rr.metadata.name.clone().unwrap_or_default(),
                );
                st.ctx.holds.observe(&rr);
                if let Some((key, ended)) = janitor::Ended::of(&rr, st.ctx.settings.retention) {
                    st.janitor.tell(janitor::Msg::Ended(key, ended));
                }
                if rr.phase().is_terminal() || rr.metadata.deletion_timestamp.is_some() {
                    st.known.remove(&key);
                    st.nudge(&rr.spec.target);
                    return Ok(());
                }
                let owner = rr.status.as_ref().and_then(|s| s.owner.clone());
                if let Some(sup) = st.by_key.get(&key)
                    && owner.as_ref().is_some_and(|o| *o != st.ctx.identity)
                    && !st.free(&owner)
                {
                    // A live replica has taken it: ours must not write again.
                    sup.actor()
                        .stop(Some("another replica drives the request".into()));
                }
                if let Some(sup) = st.by_key.get(&key)
                    && let Some(approval) = supervisor::Approval::of(&rr)
                {
                    sup.tell(supervisor::Msg::Approval(approval));
                }
                st.known.insert(key.clone(), owner);
                if st.adoptable(&key) {
                    let seen = supervisor::never_driven(&rr).then_some(rr);
                    spawn(&myself, st, key, seen).await;
                }
            }
            RegistryMsg::Gone { namespace, name } => {
                let key = RequestKey::new(namespace, name);
                if !st.by_key.contains_key(&key) {
                    st.children.forget(&key);
                }
                st.known.remove(&key);
                st.janitor.tell(janitor::Msg::Gone(key.clone()));
                if let Some(target) = st.ctx.holds.forget(&key) {
                    st.nudge(&target);
                }
                if let Some(sup) = st.by_key.get(&key) {
                    sup.actor().stop(Some("request deleted".into()));
                }
            }
            RegistryMsg::Respawn(key) => {
                if !st.by_key.contains_key(&key)
                    && st.mine(&key)
                    && st.known.get(&key).is_some_and(|o| st.free(o))
                {
                    spawn(&myself, st, key, None).await;
                }
            }
            RegistryMsg::Members(members) => {
                st.janitor.tell(janitor::Msg::Members(members.clone()));
                st.members = Some(members);
                for (key, sup) in &st.by_key {
                    if !st.mine(key) {
                        sup.tell(supervisor::Msg::Release);
                    }
                }
                let gained: Vec<RequestKey> = st
                    .known
                    .keys()
                    .filter(|k| st.adoptable(k))
                    .cloned()
                    .collect();
                for key in gained {
                    spawn(&myself, st, key, None).await;
                }
            }
            RegistryMsg::ReleaseAll(reply) => {
                st.releasing = Some(reply);
                for sup in st.by_key.values() {
                    sup.tell(supervisor::Msg::Release);
                }
                st.answer_release();
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
                if let Some(key) = st.children.terminated(&cell.get_id()) {
                    tracing::debug!(namespace = %key.namespace, name = %key.name, ?reason, "supervisor stopped");
                    st.by_key.remove(&key);
                    st.children.forget(&key);
                    // Ended, handed over or lost: the watch says what next.
                    st.known.remove(&key);
                    st.answer_release();
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let reason = children::reason(&error);
                match st.children.failed(&cell.get_id()) {
                    Some(Verdict::Restart {
                        key,
                        after,
                        attempt,
                    }) => {
                        st.by_key.remove(&key);
                        tracing::warn!(namespace = %key.namespace, name = %key.name, error = %reason, restart = attempt, delay = ?after, "supervisor failed; restarting it from the request's status");
                        st.timers.after(&st.me, after, RegistryMsg::Respawn(key));
                    }
                    Some(Verdict::GiveUp { key, .. }) => {
                        st.by_key.remove(&key);
                        tracing::error!(namespace = %key.namespace, name = %key.name, error = %reason, "supervisor failed too often; leaving the request until the next re-list");
                    }
                    None => return Ok(()),
                }
                st.answer_release();
            }
            _ => {}
        }
        Ok(())
    }
}

/// Starts the supervisor of `key`, from `seen` when the watch's copy will
/// do ([`supervisor::never_driven`]).
async fn spawn(
    myself: &ActorRef<Envelope<RegistryMsg>>,
    st: &mut RegistryState,
    key: RequestKey,
    seen: Option<Box<RemediationRequest>>,
) {
    let inbox = Inbox::new(&st.ctx.metrics, ActorKind::supervisor);
    let args = supervisor::Args {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        ctx: st.ctx.clone(),
        inbox: inbox.clone(),
        seen,
    };
    match Actor::spawn_linked(None, Supervisor, args, myself.get_cell()).await {
        Ok((sup, _join)) => {
            st.children.started(sup.get_id(), key.clone());
            st.by_key.insert(key, inbox.addr(sup));
        }
        Err(e) => {
            tracing::warn!(namespace = %key.namespace, name = %key.name, error = %e, "could not start a supervisor")
        }
    }
}
