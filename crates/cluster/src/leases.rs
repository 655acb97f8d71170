//! The target locks as a watch sees them, so that a step whose target is
//! locked by another request waits for the lock to go (or expire) without
//! asking the API server again and again: ten thousand waiting steps cost
//! one watch, not ten thousand polls.
//!
//! The watch is only ever a reason to wait, never a reason to act: a lock
//! it shows free is still taken by creating the Lease (the API server
//! decides), and one it shows held is waited on only until the watch says
//! it changed or until its recorded expiry, whichever comes first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

/// The controller's Leases in its lease namespace, and who waits on which.
pub struct Leases {
    store: Store<Lease>,
    namespace: String,
    synced: Arc<AtomicBool>,
    /// One wake-up per Lease name that someone waits on; an entry lives
    /// only while a waiter holds it, so this is bounded by waiting steps.
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

/// Whether `holder` may try to take the Lease now, by what the watch shows:
/// `Ok(())` when it is absent, expired or its own; otherwise who holds it
/// and until when.
fn free_for(
    lease: Option<&Lease>,
    holder: &str,
    now: Timestamp,
) -> Result<(), (String, Timestamp)> {
    let Some((lease, Some(spec))) = lease.map(|l| (l, l.spec.as_ref())) else {
        return Ok(());
    };
    let owner = spec.holder_identity.clone().unwrap_or_default();
    if owner == holder {
        return Ok(());
    }
    match crate::claims::held_until(lease) {
        Some(until) if until > now => Err((owner, until)),
        _ => Ok(()),
    }
}

impl Leases {
    pub fn start(client: &Client, namespace: &str) -> Self {
        let (store, writer) = reflector::store();
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=kubernaut");
        let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
        let synced = Arc::new(AtomicBool::new(false));
        let waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>> = Arc::default();
        let (flag, wake) = (synced.clone(), waiters.clone());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut warned = false;
            while let Some(ev) = stream.next().await {
                let name = match ev {
                    Ok(watcher::Event::Apply(l) | watcher::Event::Delete(l)) => l.metadata.name,
                    Ok(watcher::Event::InitDone) => {
                        flag.store(true, Ordering::Release);
                        None
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(error = %e, "the Lease watch failed; steps waiting on a locked target wait for its expiry");
                        }
                        warned = true;
                        continue;
                    }
                };
                warned = false;
                let waiters = wake.lock().unwrap_or_else(|p| p.into_inner());
                match name {
                    Some(n) => {
                        if let Some(w) = waiters.get(&n) {
                            w.notify_waiters();
                        }
                    }
                    // A fresh list: anything may have changed.
                    None => waiters.values().for_each(|w| w.notify_waiters()),
                }
            }
        });
        Self {
            store,
            namespace: namespace.to_string(),
            synced,
            waiters,
        }
    }

    /// Waits until the watch has listed, at most until `deadline`.
    pub async fn wait_synced(&self, deadline: tokio::time::Instant) -> bool {
        while !self.synced.load(Ordering::Acquire) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    fn get(&self, name: &str) -> Option<Arc<Lease>> {
        self.store
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Returns once the watch shows the Lease `name` free for `holder`
    /// (absent, expired, or its own); at once while the watch has not
    /// listed yet. Cancel-safe: dropping the future stops the wait.
    pub async fn wait_free(&self, name: &str, holder: &str) {
        if !self.synced.load(Ordering::Acquire) {
            return;
        }
        let waiter = self.waiter(name);
        let mut logged = false;
        loop {
            // Registered before the check, so a change right after it wakes us.
            let changed = waiter.notify.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let (owner, until) = match free_for(self.get(name).as_deref(), holder, Timestamp::now())
            {
                Ok(()) => return,
                Err(held) => held,
            };
            if !logged {
                tracing::info!(lock = name, %owner, %until, "the target is locked by another request; waiting for the lock to go");
                logged = true;
            }
            let left = until
                .duration_since(Timestamp::now())
                .try_into()
                .unwrap_or_default();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(left) => {}
            }
        }
    }

    /// The wake-up for changes to the Lease `name`, shared by everyone
    /// waiting on it, for as long as the returned guard lives.
    fn waiter<'a>(&'a self, name: &'a str) -> Waiter<'a> {
        let notify = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            waiters.entry(name.to_string()).or_default().clone()
        };
        Waiter {
            waiters: &self.waiters,
            name,
            notify,
        }
    }

    /// After the API server refused `holder` the Lease `name`: waits until
    /// the watch shows it held by another, at most `max`. The watch lags
    /// the API server, so a Lease created just before the refused claim may
    /// not be in it yet, and [`wait_free`](Self::wait_free) would return at
    /// once. False when the watch did not catch up in time (or has not
    /// listed): the caller should not wait on it.
    pub async fn wait_seen_held(&self, name: &str, holder: &str, max: Duration) -> bool {
        if !self.synced.load(Ordering::Acquire) {
            return false;
        }
        let deadline = tokio::time::Instant::now() + max;
        let waiter = self.waiter(name);
        loop {
            let changed = waiter.notify.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let held = || free_for(self.get(name).as_deref(), holder, Timestamp::now()).is_err();
            if held() {
                return true;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return held(),
            }
        }
    }
}

/// One wait on a Lease name; dropped, it removes the name's entry when it
/// was the last one waiting on it.
struct Waiter<'a> {
    waiters: &'a Mutex<HashMap<String, Arc<Notify>>>,
    name: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(&self.notify) <= 2 {
            waiters.remove(self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::SignedDuration;

    use super::*;

    fn lease(holder: &str, renewed: Timestamp, secs: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lock_is_free_when_absent_expired_or_the_holders_own() {
        let now = Timestamp::now();
        assert_eq!(free_for(None, "me", now), Ok(()));
        assert_eq!(free_for(Some(&lease("me", now, 60)), "me", now), Ok(()));
        let old = now.checked_sub(SignedDuration::from_secs(61)).unwrap();
        assert_eq!(free_for(Some(&lease("other", old, 60)), "me", now), Ok(()));
        let until = now.checked_add(SignedDuration::from_secs(60)).unwrap();
        assert_eq!(
            free_for(Some(&lease("other", now, 60)), "me", now),
            Err(("other".to_string(), until))
        );
    }
}
