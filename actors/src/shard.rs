//! Which live replica owns a request (K-RR-7): rendezvous hashing over the
//! member list. Every replica computes the same owner from the same list,
//! and when a member joins or leaves only the requests that hash to it
//! move. The registry and the janitor both shard by it.

use sha2::{Digest, Sha256};

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

/// What one replica knows of the group: who it is, the live members
/// (`None` until first known: nothing is adopted before), and whether it
/// is handing everything over.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub identity: &'a str,
    pub members: Option<&'a [String]>,
    pub releasing: bool,
}

impl View<'_> {
    /// Whether rendezvous hashing gives `key` to this replica now.
    pub fn mine(&self, key: &kubernaut_api::RequestKey) -> bool {
        !self.releasing
            && self
                .members
                .is_some_and(|m| owner_of(&key.to_string(), m) == Some(self.identity))
    }

    /// Whether nobody live drives a request recorded with `owner`: none,
    /// this replica, or a replica no longer among the members.
    pub fn free(&self, owner: Option<&str>) -> bool {
        match owner {
            None => true,
            Some(o) if o == self.identity => true,
            Some(o) => !self.members.is_some_and(|m| m.iter().any(|x| x == o)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{View, owner_of};
    use kubernaut_api::RequestKey;

    #[test]
    fn a_replica_adopts_only_its_own_share_and_only_once_it_knows_the_members() {
        let m = members(3);
        let key = (0..100)
            .map(|i| RequestKey::new("ns", format!("rr-{i}")))
            .find(|k| owner_of(&k.to_string(), &m) == Some("replica-1"))
            .unwrap();
        let view = |identity, members, releasing| View {
            identity,
            members,
            releasing,
        };
        assert!(view("replica-1", Some(&m), false).mine(&key));
        assert!(!view("replica-0", Some(&m), false).mine(&key));
        assert!(
            !view("replica-1", None, false).mine(&key),
            "members unknown"
        );
        assert!(
            !view("replica-1", Some(&m), true).mine(&key),
            "handing over"
        );
    }

    #[test]
    fn a_request_is_free_unless_a_live_other_replica_drives_it() {
        let m = members(2);
        let v = View {
            identity: "replica-0",
            members: Some(&m),
            releasing: false,
        };
        assert!(v.free(None));
        assert!(v.free(Some("replica-0")), "its own");
        assert!(!v.free(Some("replica-1")), "a live peer's");
        assert!(v.free(Some("replica-9")), "a dead replica's");
        let unknown = View { members: None, ..v };
        assert!(
            unknown.free(Some("replica-1")),
            "no member list: nobody is known alive"
        );
    }

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
