//! The root of the supervision tree (K-RR-3). It links the registry, the
//! janitor and the membership actor, restarts one that fails under the
//! [`RestartPolicy`](crate::RestartPolicy) and, once one has spent its
//! budget, gives up: the controller loop then ends with an error, readiness
//! turns false and the process exits non-zero, so that Kubernetes restarts
//! it rather than leave a replica Ready whose Lease is no longer renewed.
//!
//! The three address each other through [`Route`]s, which the root points
//! at the new actor after a restart. A restarted registry or janitor starts
//! empty (ractor stops a failed actor's children with it): the root asks
//! the controller loop to re-list the requests, and the registry adopts
//! them again from their status.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use crate::Context;
use crate::children::{self, Children, Verdict};
use crate::mailbox::{Addr, Envelope, Inbox, Route};
use crate::metrics::ActorKind;
use crate::registry::RegistryMsg;
use crate::tasks::Timers;
use crate::{janitor, membership, registry};

/// The top of the tree, as the controller loop sees it.
#[derive(Clone, Default)]
pub struct Tree {
    pub registry: Route<RegistryMsg>,
    pub janitor: Route<janitor::Msg>,
    pub membership: Route<membership::Msg>,
    /// Bumped when the requests must be listed again (a restarted
    /// registry or janitor starts empty).
    pub relist: Arc<watch::Sender<u64>>,
    /// Set once the root gave up: why.
    pub failed: Arc<watch::Sender<Option<String>>>,
}

impl Tree {
    fn new() -> Self {
        Self {
            relist: Arc::new(watch::channel(0).0),
            failed: Arc::new(watch::channel(None).0),
            ..Default::default()
        }
    }
}

/// The actors the root keeps alive.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Top {
    Registry,
    Janitor,
    Membership,
}

impl Top {
    fn kind(self) -> ActorKind {
        match self {
            Top::Registry => ActorKind::registry,
            Top::Janitor => ActorKind::janitor,
            Top::Membership => ActorKind::membership,
        }
    }
}

pub enum Msg {
    /// Start a failed actor again, after its backoff.
    Respawn(Top),
}

pub struct Root;

pub struct State {
    ctx: Arc<Context>,
    inbox: Inbox,
    _live: crate::mailbox::Live,
    me: Addr<Msg>,
    tree: Tree,
    children: Children<Top>,
    timers: Timers,
}

/// Starts the tree; `Err` when one of its actors cannot start.
pub async fn start(
    ctx: Arc<Context>,
) -> Result<(Tree, ActorRef<Envelope<Msg>>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    let inbox = Inbox::new(&ctx.metrics, ActorKind::root);
    let tree = Tree::new();
    let (actor, handle) = Actor::spawn(None, Root, (ctx, inbox, tree.clone())).await?;
    Ok((tree, actor, handle))
}

impl Actor for Root {
    type Msg = Envelope<Msg>;
    type State = State;
    type Arguments = (Arc<Context>, Inbox, Tree);

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        (ctx, inbox, tree): Self::Arguments,
    ) -> Result<State, ActorProcessingErr> {
        let live = inbox.started();
        let mut st = State {
            me: inbox.addr(myself.clone()),
            children: Children::new(ctx.settings.restart),
            ctx,
            inbox,
            _live: live,
            tree,
            timers: Timers::default(),
        };
        // Linked at spawn, so that a start-up failure reaches the spawner.
        for top in [Top::Janitor, Top::Registry, Top::Membership] {
            spawn(&myself, &mut st, top).await?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        env: Envelope<Msg>,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let (msg, _handling) = st.inbox.open(env);
        match msg {
            Msg::Respawn(top) => {
                if let Err(e) = spawn(&myself, st, top).await {
                    give_up(
                        &myself,
                        st,
                        format!("the {top:?} actor could not start again: {e}"),
                    );
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        evt: SupervisionEvent,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let (id, why) = match &evt {
            SupervisionEvent::ActorFailed(cell, error) => (cell.get_id(), children::reason(error)),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // Stopped on purpose (shutdown, or membership leaving).
                st.children.terminated(&cell.get_id());
                let _ = reason;
                return Ok(());
            }
            _ => return Ok(()),
        };
        match st.children.failed(&id) {
            Some(Verdict::Restart {
                key,
                after,
                attempt,
            }) => {
                st.ctx.metrics.restarted(key.kind());
                tracing::error!(actor = ?key, error = %why, restart = attempt, delay = ?after, "a top-level actor failed; restarting it");
                st.timers.after(&st.me, after, Msg::Respawn(key));
            }
            Some(Verdict::GiveUp { key, failures }) => {
                let why = format!("the {key:?} actor failed {failures} times; last: {why}");
                give_up(&myself, st, why);
            }
            None => {}
        }
        Ok(())
    }
}

async fn spawn(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
    top: Top,
) -> Result<(), ractor::SpawnErr> {
    let (ctx, tree, parent) = (st.ctx.clone(), &st.tree, Some(myself.get_cell()));
    let cell = match top {
        Top::Janitor => {
            let (addr, cell) = janitor::start(ctx, parent).await?;
            tree.janitor.set(addr);
            cell
        }
        Top::Registry => {
            let (addr, cell) = registry::start(ctx, tree.janitor.clone(), parent).await?;
            tree.registry.set(addr);
            // A new membership actor tells it the members; an old one only
            // tells changes, so it is asked to say them again.
            tree.membership.tell(membership::Msg::Forget);
            cell
        }
        Top::Membership => {
            let (addr, cell) = membership::start(ctx, tree.registry.clone(), parent).await?;
            tree.membership.set(addr);
            cell
        }
    };
    if st.children.failing(&top) && top != Top::Membership {
        tree.relist.send_modify(|n| *n += 1);
    }
    st.children.started(cell.get_id(), top);
    Ok(())
}

fn give_up(myself: &ActorRef<Envelope<Msg>>, st: &mut State, why: String) {
    tracing::error!(%why, "the supervision tree gives up; the process exits");
    st.tree.failed.send_replace(Some(why.clone()));
    myself.stop(Some(why));
}
