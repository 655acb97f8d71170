//! Instrumented mailboxes (K-OP-1). Every actor of the tree receives
//! [`Envelope`]s stamped when sent, through an [`Addr`] that counts what is
//! waiting, so each actor kind reports its mailbox depth and wait, how many
//! messages it handled and how long that took, and how many are alive.
//! ractor does not expose queue lengths, hence the wrapper.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use ractor::ActorRef;

use crate::metrics::{ActorKind, Metrics};

/// A message and when it was sent.
pub struct Envelope<M> {
    sent: Instant,
    msg: M,
}

/// One actor's mailbox counters, shared by its senders and itself so that
/// what is still queued when it stops leaves the depth gauge again.
#[derive(Clone)]
pub struct Inbox {
    pub kind: ActorKind,
    pending: Arc<AtomicI64>,
    depth: Gauge,
    wait: Histogram,
    handling: Histogram,
    handled: Counter,
    live: Gauge,
}

impl Inbox {
    pub fn new(metrics: &Metrics, kind: ActorKind) -> Self {
        let l = metrics.actor(kind);
        Self {
            kind,
            pending: Arc::default(),
            depth: metrics.mailbox_depth.get_or_create(&l).clone(),
            wait: metrics.mailbox_wait.get_or_create(&l).clone(),
            handling: metrics.handling.get_or_create(&l).clone(),
            handled: metrics.handled.get_or_create(&l).clone(),
            live: metrics.live.get_or_create(&l).clone(),
        }
    }

    pub fn addr<M>(&self, actor: ActorRef<Envelope<M>>) -> Addr<M> {
        Addr {
            actor,
            inbox: self.clone(),
        }
    }

    /// Takes a message out, recording its wait; the guard records the
    /// handling when dropped at the end of the handler.
    pub fn open<M>(&self, env: Envelope<M>) -> (M, Handling) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        self.depth.dec();
        self.wait.observe(env.sent.elapsed().as_secs_f64());
        (
            env.msg,
            Handling {
                start: Instant::now(),
                hist: self.handling.clone(),
                handled: self.handled.clone(),
            },
        )
    }

    /// Call from `pre_start` and keep the guard in the actor's state: the
    /// actor counts as live until its state is dropped, however it ends
    /// (stopped, killed or panicked; ractor skips `post_stop` for the last
    /// two), and what it never handled then leaves the depth gauge.
    pub fn started(&self) -> Live {
        self.live.inc();
        Live {
            inbox: self.clone(),
        }
    }
}

pub struct Live {
    inbox: Inbox,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.inbox.live.dec();
        let left = self.inbox.pending.swap(0, Ordering::Relaxed);
        self.inbox.depth.dec_by(left);
    }
}

pub struct Handling {
    start: Instant,
    hist: Histogram,
    handled: Counter,
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.hist.observe(self.start.elapsed().as_secs_f64());
        self.handled.inc();
    }
}

/// Where to send an actor messages.
pub struct Addr<M> {
    actor: ActorRef<Envelope<M>>,
    inbox: Inbox,
}

impl<M> Clone for Addr<M> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            inbox: self.inbox.clone(),
        }
    }
}

impl<M: Send + 'static> Addr<M> {
    /// Whether the message was queued (false: the actor is gone).
    pub fn tell(&self, msg: M) -> bool {
        self.inbox.pending.fetch_add(1, Ordering::Relaxed);
        self.inbox.depth.inc();
        let env = Envelope {
            sent: Instant::now(),
            msg,
        };
        if self.actor.send_message(env).is_err() {
            self.inbox.pending.fetch_sub(1, Ordering::Relaxed);
            self.inbox.depth.dec();
            return false;
        }
        true
    }

    /// Sends the message built around a reply port and waits up to
    /// `timeout` for the answer; `None` without one.
    pub async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
        timeout: Duration,
    ) -> Option<T> {
        let (tx, rx) = ractor::concurrency::oneshot();
        if !self.tell(build(tx.into())) {
            return None;
        }
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    pub fn actor(&self) -> &ActorRef<Envelope<M>> {
        &self.actor
    }
}

/// Where to reach an actor that may be replaced: the newest one.
pub struct Route<M>(Arc<RwLock<Option<Addr<M>>>>);

impl<M> Clone for Route<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> Default for Route<M> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<M: Send + 'static> Route<M> {
    pub fn get(&self) -> Option<Addr<M>> {
        self.0.read().ok()?.clone()
    }

    pub fn set(&self, addr: Addr<M>) {
        if let Ok(mut a) = self.0.write() {
            *a = Some(addr);
        }
    }

    /// Whether the message was queued (false: no live actor).
    pub fn tell(&self, msg: M) -> bool {
        self.get().is_some_and(|a| a.tell(msg))
    }

    pub async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
        timeout: Duration,
    ) -> Option<T> {
        self.get()?.ask(build, timeout).await
    }
}
