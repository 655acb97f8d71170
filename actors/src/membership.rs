//! The membership actor (K-RR-7): it keeps this replica's Lease
//! (`kubernaut-member-<identity>`) renewed, reads which replicas of its
//! group are alive, and tells the registry whenever that set changes.
//! Requests are assigned to live replicas by rendezvous hashing
//! ([`crate::shard::owner_of`]): every replica computes the same owner from the same
//! member list, and when a member joins or leaves only the requests that
//! hash to it move.

use std::sync::Arc;
use std::time::Duration;

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::Context;
use crate::mailbox::{Addr, Envelope, Inbox, Route};
use crate::metrics::ActorKind;
use crate::registry::RegistryMsg;
use crate::tasks::{Task, Timers};

#[derive(Clone, Debug)]
pub struct MembershipSettings {
    /// A replica not renewed for this long is dead (K-RR-7: 15 s).
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl Default for MembershipSettings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

pub struct Membership;

pub enum Msg {
    /// Renew this replica's Lease, then look at the members.
    Tick,
    /// Look at the members again: a Lease has just expired.
    Check,
    /// What a renewal or check found: the live members and the first
    /// Lease to expire, or why they could not be read.
    Checked(Result<(Vec<String>, Option<Timestamp>), String>),
    /// Delete this replica's Lease (graceful shutdown), then stop.
    Leave(RpcReplyPort<()>),
    /// Tell the registry the members again, changed or not (it was
    /// restarted and knows none).
    Forget,
}

pub struct State {
    ctx: Arc<Context>,
    inbox: Inbox,
    _live: crate::mailbox::Live,
    me: Addr<Msg>,
    registry: Route<RegistryMsg>,
    group: String,
    last: Option<Vec<String>>,
    timers: Timers,
    /// The renewal or check under way.
    busy: Option<Task>,
}

pub async fn start(
    ctx: Arc<Context>,
    registry: Route<RegistryMsg>,
    parent: Option<ractor::ActorCell>,
) -> Result<(Addr<Msg>, ractor::ActorCell), ractor::SpawnErr> {
    let inbox = Inbox::new(&ctx.metrics, ActorKind::membership);
    let args = (ctx, registry, inbox.clone());
    let (actor, _) = match parent {
        Some(p) => Actor::spawn_linked(None, Membership, args, p).await?,
        None => Actor::spawn(None, Membership, args).await?,
    };
    let cell = actor.get_cell();
    Ok((inbox.addr(actor), cell))
}

impl Actor for Membership {
    type Msg = Envelope<Msg>;
    type State = State;
    type Arguments = (Arc<Context>, Route<RegistryMsg>, Inbox);

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        (ctx, registry, inbox): Self::Arguments,
    ) -> Result<State, ActorProcessingErr> {
        let live = inbox.started();
        let me = inbox.addr(myself);
        me.tell(Msg::Tick);
        Ok(State {
            group: ctx.settings.watch_namespace.clone().unwrap_or_default(),
            ctx,
            inbox,
            _live: live,
            me,
            registry,
            last: None,
            timers: Timers::default(),
            busy: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        env: Envelope<Msg>,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let (msg, _handling) = st.inbox.open(env);
        let settings = st.ctx.settings.membership.clone();
        match msg {
            Msg::Tick => {
                if st.ctx.settings.chaos.strikes(ActorKind::membership) {
                    return Err("injected fault: the membership actor fails".into());
                }
                st.timers.after(&st.me, settings.renew_every, Msg::Tick);
                st.look(Some(settings.lease_duration));
            }
            Msg::Check => st.look(None),
            Msg::Checked(found) => {
                st.busy = None;
                checked(st, found, settings.renew_every);
            }
            Msg::Leave(reply) => {
                let (ctx, me) = (st.ctx.clone(), myself.clone());
                // Not a task of the state: it outlives the actor it stops.
                tokio::spawn(async move {
                    if let Err(e) = ctx.cluster.release_member(&ctx.identity).await {
                        tracing::warn!(error = %e, "deleting this replica's membership Lease failed; it expires");
                    }
                    let _ = reply.send(());
                    me.stop(None);
                });
                st.busy = None;
                st.timers = Timers::default();
            }
            Msg::Forget => {
                st.last = None;
                st.look(None);
            }
        }
        Ok(())
    }
}

impl State {
    /// Renews this replica's Lease (when `renew` names its duration), then
    /// lists the live members, in a task that reports back. A look still
    /// under way is left to finish; the next tick looks again.
    fn look(&mut self, renew: Option<Duration>) {
        if self.busy.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let (ctx, group, me) = (self.ctx.clone(), self.group.clone(), self.me.clone());
        self.busy = Some(Task::spawn(async move {
            let cluster = &ctx.cluster;
            if let Some(duration) = renew {
                let renewed = cluster.renew_member(&group, &ctx.identity, duration).await;
                let result = if renewed.is_ok() { "ok" } else { "failed" };
                ctx.metrics
                    .renewals
                    .get_or_create(&crate::metrics::ResultLabels { result })
                    .inc();
                if let Err(e) = renewed {
                    // Not renewed for a lease duration, this replica drops
                    // out of the live set and gives its requests up.
                    tracing::warn!(error = %e, "renewing this replica's membership Lease failed");
                }
            }
            let found = cluster
                .live_members(&group)
                .await
                .map_err(|e| e.to_string());
            me.tell(Msg::Checked(found));
        }));
    }
}

/// Tells the registry when the live members changed. A Lease that expires
/// before the next tick gets a check of its own at its expiry, so a dead
/// replica's requests move within the lease duration, not up to a renewal
/// interval after it.
fn checked(
    st: &mut State,
    found: Result<(Vec<String>, Option<Timestamp>), String>,
    next_tick: Duration,
) {
    match found {
        Ok((live, first_expiry)) => {
            st.ctx.metrics.members.set(live.len() as i64);
            if st.last.as_ref() != Some(&live) {
                tracing::info!(members = ?live, "live replicas changed");
                st.last = Some(live.clone());
                st.registry.tell(RegistryMsg::Members(live));
            }
            let until_expiry = first_expiry
                .and_then(|t| Duration::try_from(t.duration_since(Timestamp::now())).ok());
            if let Some(wait) = until_expiry.filter(|w| *w < next_tick) {
                // Just past the expiry, so that the Lease reads as expired.
                st.timers
                    .after(&st.me, wait + Duration::from_millis(50), Msg::Check);
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing live replicas failed"),
    }
}
