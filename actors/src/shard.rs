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
