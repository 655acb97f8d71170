//! The membership actor (K-RR-7): it keeps this replica's Lease
//! (`kubernaut-member-<identity>`) renewed, reads which replicas of its
//! group are alive, and tells the registry whenever that set changes.
//! Requests are assigned to live replicas by rendezvous hashing
//! ([`owner_of`]): every replica computes the same owner from the same
//! member list, and when a member joins or leaves only the requests that
//! hash to it move.

use std::sync::Arc;
use std::time::Duration;

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};

use crate::Context;
use crate::mailbox::{Addr, Envelope, Inbox};
use crate::metrics::ActorKind;
use crate::registry::RegistryMsg;

/// The member that owns `key`: the one with the highest hash of
/// (member, key). Stable across processes and builds (SHA-256).
pub fn owner_of<'a>(key: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| {
            let digest = Sha256::new()
                .chain_update(m.as_bytes())
                .chain_update([0u8])
                .chain_update(key.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            (u64::from_be_bytes(first), m.as_str())
        })
        .map(String::as_str)
}

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
    /// Delete this replica's Lease (graceful shutdown), then stop.
    Leave(RpcReplyPort<()>),
}

pub struct State {
    ctx: Arc<Context>,
    inbox: Inbox,
    _live: crate::mailbox::Live,
    me: Addr<Msg>,
    registry: Addr<RegistryMsg>,
    group: String,
    last: Option<Vec<String>>,
}

pub async fn start(
    ctx: Arc<Context>,
    registry: Addr<RegistryMsg>,
) -> Result<Addr<Msg>, ractor::SpawnErr> {
    let inbox = Inbox::new(&ctx.metrics, ActorKind::membership);
    let (actor, _) = Actor::spawn(None, Membership, (ctx, registry, inbox.clone())).await?;
    Ok(inbox.addr(actor))
}

impl Actor for Membership {
    type Msg = Envelope<Msg>;
    type State = State;
    type Arguments = (Arc<Context>, Addr<RegistryMsg>, Inbox);

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
                let cluster = &st.ctx.cluster;
                if let Err(e) = cluster
                    .renew_member(&st.group, &st.ctx.identity, settings.lease_duration)
                    .await
                {
                    // Not renewed for a lease duration, this replica drops
                    // out of the live set below and gives its requests up.
                    tracing::warn!(error = %e, "renewing this replica's membership Lease failed");
                }
                check(st, settings.renew_every).await;
                st.me.tell_after(settings.renew_every, Msg::Tick);
            }
            Msg::Check => check(st, settings.renew_every).await,
            Msg::Leave(reply) => {
                if let Err(e) = st.ctx.cluster.release_member(&st.ctx.identity).await {
                    tracing::warn!(error = %e, "deleting this replica's membership Lease failed; it expires");
                }
                let _ = reply.send(());
                myself.stop(None);
            }
        }
        Ok(())
    }
}

/// Lists the live members and tells the registry when they changed. A
/// Lease that expires before the next tick gets a check of its own at its
/// expiry, so a dead replica's requests move within the lease duration,
/// not up to a renewal interval after it.
async fn check(st: &mut State, next_tick: Duration) {
    match st.ctx.cluster.live_members(&st.group).await {
        Ok((live, first_expiry)) => {
            if st.last.as_ref() != Some(&live) {
                tracing::info!(members = ?live, "live replicas changed");
                st.last = Some(live.clone());
                st.registry.tell(RegistryMsg::Members(live));
            }
            let until_expiry = first_expiry
                .and_then(|t| Duration::try_from(t.duration_since(Timestamp::now())).ok());
            if let Some(wait) = until_expiry.filter(|w| *w < next_tick) {
                // Just past the expiry, so that the Lease reads as expired.
                st.me
                    .tell_after(wait + Duration::from_millis(50), Msg::Check);
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing live replicas failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::owner_of;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    #[test]
    fn every_key_has_one_owner_and_the_load_spreads() {
        let m = members(3);
        let mut counts = [0usize; 3];
        for k in 0..3000 {
            let o = owner_of(&format!("ns/rr-{k}"), &m).unwrap_or_default();
            let i = m.iter().position(|x| x == o).unwrap_or(usize::MAX);
            counts[i] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(owner_of("x", &[]), None);
    }

    #[test]
    fn a_leaving_member_moves_only_its_own_keys() {
        let all = members(4);
        let fewer: Vec<String> = all.iter().filter(|m| *m != "replica-2").cloned().collect();
        for k in 0..1000 {
            let key = format!("ns/rr-{k}");
            let before = owner_of(&key, &all);
            let after = owner_of(&key, &fewer);
            if before != Some("replica-2") {
                assert_eq!(before, after, "{key} moved although its owner stayed");
            }
        }
    }
}
