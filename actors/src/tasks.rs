//! Tasks and timers owned by an actor. Kept in the actor's state, they are
//! aborted when the state is dropped, however the actor ends (stopped,
//! killed or panicked), so a stopped supervisor leaves no sleeping timer or
//! half-done API call behind.

use std::future::Future;
use std::time::Duration;

use tokio::task::{AbortHandle, JoinSet};

use crate::mailbox::Addr;

/// One background task, aborted when dropped.
#[derive(Debug)]
pub struct Task(AbortHandle);

impl Task {
    pub fn spawn(fut: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(fut).abort_handle())
    }

    /// Owns a task spawned elsewhere.
    pub fn of(handle: AbortHandle) -> Self {
        Self(handle)
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An actor's timers: each sends one message to the actor after its delay.
#[derive(Default)]
pub struct Timers(JoinSet<()>);

impl Timers {
    /// Sends `msg` to `to` after `delay`; it counts as waiting in the
    /// mailbox only once sent.
    pub fn after<M: Send + 'static>(&mut self, to: &Addr<M>, delay: Duration, msg: M) {
        // Reap the fired ones, so that a long-lived actor's set stays small.
        while self.0.try_join_next().is_some() {}
        let to = to.clone();
        self.0.spawn(async move {
            tokio::time::sleep(delay).await;
            to.tell(msg);
        });
    }

    /// Timers not fired yet.
    pub fn pending(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_task_is_aborted() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = Task::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = tx.send(());
        });
        drop(task);
        assert!(rx.await.is_err(), "the task's sender was dropped unsent");
    }
}
