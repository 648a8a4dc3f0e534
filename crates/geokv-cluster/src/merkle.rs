//! Merkle summaries for anti-entropy between two replicas.
//!
//! The key space is cut into `LEAVES` buckets by the top bits of the key's ring token. A
//! bucket's hash is the XOR of `h(key, state)` over the keys in it that both replicas should
//! hold, so equal buckets mean equal contents (up to hash collisions) and a bucket's hash can
//! be updated from any subset of keys in any order. The root is the hash of the bucket hashes.
//! Two replicas compare roots, then buckets, then the per-key digests of differing buckets, and
//! exchange only the keys whose digests differ.

use std::collections::BTreeMap;

use geokv_topology::ring::key_token;
use xxhash_rust::xxh3::xxh3_64;

/// Buckets per summary (2^12).
pub const LEAVES: usize = 4096;
const LEAF_BITS: u32 = 12;

/// The bucket of a key.
pub fn leaf_of(key: &[u8]) -> u32 {
    (key_token(key) >> (64 - LEAF_BITS)) as u32
}

/// Digest of one key's state (the state's canonical, uncompressed encoding). Key and state
/// are hashed together: a digest that combined separate key and state hashes linearly would
/// let two keys changing to the same state cancel out in a bucket's XOR.
pub fn digest(key: &[u8], state: &[u8]) -> u64 {
    let mut buf = Vec::with_capacity(8 + key.len() + state.len());
    buf.extend_from_slice(&(key.len() as u64).to_be_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(state);
    xxh3_64(&buf)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub leaves: Vec<u64>,
}

impl Default for Summary {
    fn default() -> Self {
        Summary { leaves: vec![0; LEAVES] }
    }
}

impl Summary {
    pub fn add(&mut self, key: &[u8], digest: u64) {
        self.leaves[leaf_of(key) as usize] ^= digest;
    }

    pub fn root(&self) -> u64 {
        let bytes: Vec<u8> = self.leaves.iter().flat_map(|l| l.to_be_bytes()).collect();
        xxh3_64(&bytes)
    }

    /// Buckets whose hashes differ (all of them if `other` is malformed).
    pub fn differing(&self, other: &Summary) -> Vec<u32> {
        if other.leaves.len() != LEAVES {
            return (0..LEAVES as u32).collect();
        }
        (0..LEAVES).filter(|&i| self.leaves[i] != other.leaves[i]).map(|i| i as u32).collect()
    }
}

/// Keys whose digests differ between two replicas' digests of the same buckets (present on
/// one side only, or with different states).
pub fn differing_keys(mine: &BTreeMap<Vec<u8>, u64>, theirs: &BTreeMap<Vec<u8>, u64>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> =
        mine.iter().filter(|(k, d)| theirs.get(*k) != Some(d)).map(|(k, _)| k.clone()).collect();
    out.extend(theirs.keys().filter(|k| !mine.contains_key(*k)).cloned());
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_order_independent_and_localise_differences() {
        let keys: Vec<Vec<u8>> = (0..10_000).map(|i: u32| format!("k{i}").into_bytes()).collect();
        let mut a = Summary::default();
        let mut b = Summary::default();
        for k in &keys {
            a.add(k, digest(k, b"s"));
        }
        for k in keys.iter().rev() {
            b.add(k, digest(k, b"s"));
        }
        assert_eq!(a, b);
        assert_eq!(a.root(), b.root());
        // Change 10 keys on b: at most 10 buckets differ, and they are the keys' buckets.
        let mut changed = std::collections::BTreeSet::new();
        for k in keys.iter().step_by(1000) {
            b.add(k, digest(k, b"s"));
            b.add(k, digest(k, b"t"));
            changed.insert(leaf_of(k));
        }
        let diff = a.differing(&b);
        assert_eq!(diff.into_iter().collect::<std::collections::BTreeSet<_>>(), changed);
        assert_ne!(a.root(), b.root());
    }

    #[test]
    fn keys_changing_to_the_same_state_do_not_cancel_out() {
        // Two keys of one bucket, both changing from state s to state t.
        let keys: Vec<Vec<u8>> = (0..100_000).map(|i: u32| format!("k{i}").into_bytes()).collect();
        let first = &keys[0];
        let second = keys[1..].iter().find(|k| leaf_of(k) == leaf_of(first)).unwrap();
        let (mut a, mut b) = (Summary::default(), Summary::default());
        for k in [first, second] {
            a.add(k, digest(k, b"s"));
            b.add(k, digest(k, b"t"));
        }
        assert_eq!(a.differing(&b), vec![leaf_of(first)]);
    }

    #[test]
    fn differing_keys_covers_changed_and_one_sided_keys() {
        let mine = BTreeMap::from([(b"a".to_vec(), 1), (b"b".to_vec(), 2), (b"c".to_vec(), 3)]);
        let theirs = BTreeMap::from([(b"a".to_vec(), 1), (b"b".to_vec(), 9), (b"d".to_vec(), 4)]);
        assert_eq!(differing_keys(&mine, &theirs), vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
    }
}
