//! Replica membership (K-RR-7) as coordination.k8s.io Leases named
//! `kubernaut-member-<identity>`, one per live replica, labelled with the
//! replica's group (the namespace it supervises, or `all`) so that control
//! planes supervising different scopes never shard between each other.
//! A replica renews its Lease well within its duration; one whose Lease
//! has not been renewed within the duration is dead.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};

use crate::{Cluster, Result, bounded};

const GROUP_LABEL: &str = "kubernaut.io/member-group";

/// The Lease name of a replica: its identity made a valid object name.
pub fn member_lease_name(identity: &str) -> String {
    let clean: String = identity
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    let mut name = format!("kubernaut-member-{}", clean.trim_matches('-'));
    name.truncate(253);
    name.trim_end_matches('-').to_string()
}

impl Cluster {
    /// Creates or renews this replica's Lease.
    pub async fn renew_member(
        &self,
        group: &str,
        identity: &str,
        duration: Duration,
    ) -> Result<()> {
        let api: Api<Lease> =
            Api::namespaced(self.client().clone(), &self.config().lease_namespace);
        let name = member_lease_name(identity);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(GROUP_LABEL.to_string(), group_label(group))].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_string()),
                lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let mut body =
            serde_json::to_value(&lease).map_err(|e| crate::Error::Serialize("lease", e))?;
        body["apiVersion"] = "coordination.k8s.io/v1".into();
        body["kind"] = "Lease".into();
        let pp = PatchParams::apply("kubernaut-membership").force();
        bounded(api.patch(&name, &pp, &Patch::Apply(&body))).await?;
        Ok(())
    }

    /// The live members of `group`, sorted, and when the first of their
    /// Leases expires unless renewed (when a dead one drops out).
    pub async fn live_members(&self, group: &str) -> Result<(Vec<String>, Option<Timestamp>)> {
        let api: Api<Lease> =
            Api::namespaced(self.client().clone(), &self.config().lease_namespace);
        let lp = ListParams::default().labels(&format!("{GROUP_LABEL}={}", group_label(group)));
        let now = Timestamp::now();
        let leases: Vec<(String, Timestamp)> = bounded(api.list(&lp))
            .await?
            .items
            .into_iter()
            .filter_map(|l| {
                let spec = l.spec?;
                let renewed = spec.renew_time?.0;
                let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?));
                let expires = renewed.checked_add(duration).ok()?;
                (expires > now).then_some((spec.holder_identity?, expires))
            })
            .collect();
        let first_expiry = leases.iter().map(|(_, e)| *e).min();
        let mut live: Vec<String> = leases.into_iter().map(|(m, _)| m).collect();
        live.sort();
        live.dedup();
        Ok((live, first_expiry))
    }

    /// Deletes this replica's Lease, so that peers take over at once.
    pub async fn release_member(&self, identity: &str) -> Result<()> {
        let api: Api<Lease> =
            Api::namespaced(self.client().clone(), &self.config().lease_namespace);
        match bounded(api.delete(&member_lease_name(identity), &DeleteParams::default())).await {
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }
}

fn group_label(group: &str) -> String {
    if group.is_empty() {
        "all".into()
    } else {
        group.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::member_lease_name;

    #[test]
    fn identities_become_valid_lease_names() {
        assert_eq!(
            member_lease_name("kubernaut-7d9f-abc12345"),
            "kubernaut-member-kubernaut-7d9f-abc12345"
        );
        assert_eq!(
            member_lease_name("Host.Example_1"),
            "kubernaut-member-host-example-1"
        );
        assert!(member_lease_name(&"x".repeat(400)).len() <= 253);
    }
}
