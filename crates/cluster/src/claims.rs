//! Claims as coordination.k8s.io Leases: one supervisor at a time acts for
//! a request on a target (the target locks).
//!
//! Creating a Lease is atomic, so exactly one contender gets it; the holder
//! deletes it when done. A holder that dies leaves a Lease that expires
//! after its duration and is then taken over with an optimistic-concurrency
//! update; the holder's own Lease, left by a process that died, is taken
//! back by the replica that adopted its request.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};

use crate::{Cluster, Result, bounded};

/// A held claim. Release it when done; if dropped unreleased it expires.
#[derive(Debug)]
pub struct LeaseClaim {
    api: Api<Lease>,
    name: String,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl Cluster {
    /// Tries to take the Lease `name` in the lease namespace for `holder`,
    /// a request (one supervisor at a time acts for it); `None` while
    /// someone else holds it unexpired. The holder's own unexpired Lease is
    /// taken back: it was left by a process that died, and the replica that
    /// adopted the request continues its work.
    pub async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Result<Option<LeaseClaim>> {
        let api: Api<Lease> =
            Api::namespaced(self.client().clone(), &self.config().lease_namespace);
        let name = name.to_string();
        let now = Timestamp::now();
        let spec = LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "kubernaut".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(spec.clone()),
        };
        match bounded(api.create(&PostParams::default(), &lease)).await {
            Ok(l) => return Ok(Some(LeaseClaim::held(api, name, &l))),
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e),
        }
        // Someone holds it; take it over only if it has expired, or if it
        // is this holder's own.
        let Some(current) = bounded(api.get_opt(&name)).await? else {
            return Ok(None); // released just now: the caller retries
        };
        let ours = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(holder);
        if !ours && !expired(&current, now) {
            return Ok(None);
        }
        let takeover = Lease {
            metadata: ObjectMeta {
                resource_version: current.metadata.resource_version.clone(),
                ..lease.metadata
            },
            spec: Some(spec),
        };
        match bounded(api.replace(&name, &PostParams::default(), &takeover)).await {
            Ok(l) => {
                tracing::warn!(lease = %name, previous = ?current.spec.and_then(|s| s.holder_identity), "took over a claim: expired, or left by this holder's previous process");
                Ok(Some(LeaseClaim::held(api, name, &l)))
            }
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn expired(lease: &Lease, now: Timestamp) -> bool {
    held_until(lease).is_none_or(|until| until < now)
}

/// When a Lease expires unless renewed: its last renewal (or acquisition)
/// plus its duration; `None` when it says neither.
pub(crate) fn held_until(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    renewed.0.checked_add(SignedDuration::from_secs(secs)).ok()
}

impl LeaseClaim {
    fn held(api: Api<Lease>, name: String, lease: &Lease) -> Self {
        Self {
            api,
            name,
            uid: lease.metadata.uid.clone(),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }

    /// The Lease's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the Lease if it is still ours (same uid and version), so that a
    /// claim taken over after expiry is never released by its old holder.
    pub async fn release(self) {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: self.uid,
                resource_version: self.resource_version,
            }),
            ..Default::default()
        };
        match bounded(self.api.delete(&self.name, &dp)).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.is_conflict() => {}
            // It expires on its own; only contenders wait a little longer.
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "could not release a creation claim")
            }
        }
    }
}
