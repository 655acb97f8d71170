//! The controller's view of requests: a kube-runtime watcher (with its
//! backoff and re-list) turned into plain events. It reads through
//! [`Guarded`]: a request the API server accepted but these types reject
//! (a field out of range, a hand-written status) is reported as
//! [`RequestEvent::Malformed`] and skipped, so that one bad object never
//! stalls the list or the watch for all the others.
//!
//! The controller shares one watch of every request with the intake's
//! index ([`crate::KnownRequests`]): every request write reaches a process
//! once, not once per reader, which halves what the API server sends and
//! what this process parses per write.

use std::borrow::Cow;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher::Event;
use kubernaut_api::RemediationRequest;
use serde::{Deserialize, Deserializer};

use crate::Cluster;

#[derive(Debug)]
pub enum RequestEvent {
    Applied(Box<RemediationRequest>),
    Deleted {
        namespace: String,
        name: String,
    },
    /// A request that does not parse: skipped.
    Malformed {
        namespace: String,
        name: String,
        error: String,
    },
    /// The initial list (or a re-list) is complete.
    Synced,
}

/// A request as a list or a watch brings it, or why these types reject it
/// and its metadata. What kube's `DeserializeGuard` does, cheaper: that
/// one parses every object into a tree of values, clones the whole tree and
/// parses the clone into the type (about a tenth of the control plane's CPU
/// on a busy watch). This one parses the type from the tree it borrows,
/// and looks at the tree's metadata only for an object it rejects.
///
/// The tree is needed at all because the watch event's tag may follow the
/// object, and then serde has buffered it already: keeping the raw text
/// would only work with serde_json reading the object in place.
#[derive(Clone, Debug)]
pub struct Guarded(pub Result<RemediationRequest, Rejected>);

/// A request these types reject: why, and its metadata.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub error: String,
    pub metadata: ObjectMeta,
}

impl<'de> Deserialize<'de> for Guarded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tree = serde_json::Value::deserialize(d)?;
        Ok(Guarded(match RemediationRequest::deserialize(&tree) {
            Ok(rr) => Ok(rr),
            Err(e) => {
                let metadata = match tree.get("metadata") {
                    Some(m) => ObjectMeta::deserialize(m).map_err(serde::de::Error::custom)?,
                    None => ObjectMeta::default(),
                };
                Err(Rejected {
                    error: e.to_string(),
                    metadata,
                })
            }
        }))
    }
}

impl Resource for Guarded {
    type DynamicType = ();
    type Scope = <RemediationRequest as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        RemediationRequest::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        RemediationRequest::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        RemediationRequest::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        RemediationRequest::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match &self.0 {
            Ok(rr) => &rr.metadata,
            Err(rejected) => &rejected.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match &mut self.0 {
            Ok(rr) => &mut rr.metadata,
            Err(rejected) => &mut rejected.metadata,
        }
    }
}

/// A watch event as the controller sees it; `None` for what it does not
/// need (a list beginning).
pub(crate) fn request_event(ev: Event<Guarded>) -> Option<RequestEvent> {
    match ev {
        Event::Apply(g) | Event::InitApply(g) => Some(applied(g)),
        Event::Delete(g) => {
            let meta = g.meta();
            Some(RequestEvent::Deleted {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
            })
        }
        Event::InitDone => Some(RequestEvent::Synced),
        Event::Init => None,
    }
}

fn applied(guard: Guarded) -> RequestEvent {
    match guard.0 {
        Ok(rr) => RequestEvent::Applied(Box::new(rr)),
        Err(invalid) => RequestEvent::Malformed {
            namespace: invalid.metadata.namespace.unwrap_or_default(),
            name: invalid.metadata.name.unwrap_or_default(),
            error: invalid.error,
        },
    }
}

impl RequestEvent {
    /// The namespace of the request it is about; `None` for
    /// [`RequestEvent::Synced`].
    pub fn namespace(&self) -> Option<&str> {
        match self {
            RequestEvent::Applied(rr) => Some(rr.metadata.namespace.as_deref().unwrap_or_default()),
            RequestEvent::Deleted { namespace, .. } | RequestEvent::Malformed { namespace, .. } => {
                Some(namespace)
            }
            RequestEvent::Synced => None,
        }
    }
}

impl Cluster {
    /// Requests of one namespace, or of all when `namespace` is `None`.
    /// Each call starts from a full list (a [`RequestEvent::Synced`] ends
    /// it). The events come from the watch of every request that this
    /// handle shares with [`Cluster::known_requests`] (which needs it
    /// anyway), filtered; a new call takes that watch over from the
    /// previous one, whose stream ends.
    pub fn request_events(
        &self,
        namespace: Option<&str>,
    ) -> impl Stream<Item = RequestEvent> + Send + 'static {
        let namespace = namespace.map(str::to_owned);
        self.known_requests().subscribe().filter(move |ev| {
            let ours = match (&namespace, ev.namespace()) {
                (Some(want), Some(ns)) => want == ns,
                _ => true,
            };
            std::future::ready(ours)
        })
    }
}

#[cfg(test)]
mod tests {
    use kube::core::{ObjectList, WatchEvent};
    use serde_json::json;

    use super::*;

    fn request(attempts: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
            "metadata": {"name": "r1", "namespace": "shop", "resourceVersion": "7"},
            "spec": {
                "fingerprint": "fp", "signalName": "Down", "severity": "warning",
                "source": "generic", "instanceId": "i1",
                "target": {"kind": "Deployment", "namespace": "shop", "name": "web"},
                "signalResource": {"kind": "Deployment", "namespace": "shop", "name": "web"},
                "firingTime": "2026-11-22T03:00:00Z", "receivedTime": "2026-11-22T03:00:00Z",
                "originalPayload": "{}"
            },
            "status": {"phase": "Failed", "analysis": {
                "decidedBy": "rules", "action": "notify_only",
                "workflow": {"steps": []}, "attempts": attempts}}
        })
    }

    /// Parsed as kube parses a watch line and a list answer: with
    /// serde_json, through the adjacently tagged watch event.
    #[test]
    fn a_rejected_request_keeps_its_metadata_and_the_others_parse() {
        let line = |o: serde_json::Value| json!({"type": "MODIFIED", "object": o}).to_string();
        let ok: WatchEvent<Guarded> = serde_json::from_str(&line(request(json!(1)))).unwrap();
        // json! sorts keys, so that line has its object before its tag; the
        // API server writes the tag first.
        let tag_first = format!(r#"{{"type":"MODIFIED","object":{}}}"#, request(json!(1)));
        let also: WatchEvent<Guarded> = serde_json::from_str(&tag_first).unwrap();
        assert!(
            matches!(also, WatchEvent::Modified(Guarded(Ok(_)))),
            "{also:?}"
        );
        let WatchEvent::Modified(Guarded(Ok(rr))) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(rr.metadata.name.as_deref(), Some("r1"));
        assert_eq!(rr.phase(), kubernaut_api::Phase::Failed);

        // An attempt count a u32 cannot hold: the API server accepts it.
        let bad: WatchEvent<Guarded> =
            serde_json::from_str(&line(request(json!(5_000_000_000u64)))).unwrap();
        let WatchEvent::Modified(g @ Guarded(Err(_))) = bad else {
            panic!("{bad:?}")
        };
        assert_eq!(g.meta().resource_version.as_deref(), Some("7"));
        let Err(rejected) = g.0 else { unreachable!() };
        assert_eq!(rejected.metadata.namespace.as_deref(), Some("shop"));
        assert!(rejected.error.contains("5000000000"), "{}", rejected.error);

        let list = json!({
            "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequestList",
            "metadata": {"resourceVersion": "9"},
            "items": [request(json!(5_000_000_000u64)), request(json!(2))]
        })
        .to_string();
        let list: ObjectList<Guarded> = serde_json::from_str(&list).unwrap();
        let parsed: Vec<bool> = list.items.iter().map(|g| g.0.is_ok()).collect();
        assert_eq!(parsed, [false, true]);
    }
}
