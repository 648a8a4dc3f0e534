//! Key layouts of the auxiliary column families.

/// Why a key is in the TTL index. (One reason today; the tag byte leaves room for more.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlTag {
    /// The key (a tombstone, or expired by then) may be purged at the deadline.
    Purge = 1,
}

/// An entry of the TTL index whose deadline has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueEntry {
    pub deadline_ms: u64,
    pub tag: TtlTag,
    pub key: Vec<u8>,
}

/// `deadline (u64 BE) ++ tag (u8) ++ key`: ordered by deadline.
pub(crate) fn ttl_key(deadline_ms: u64, tag: TtlTag, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.extend_from_slice(&deadline_ms.to_be_bytes());
    k.push(tag as u8);
    k.extend_from_slice(key);
    k
}

pub(crate) fn parse_ttl_key(raw: &[u8]) -> Option<DueEntry> {
    if raw.len() < 9 {
        return None;
    }
    let deadline_ms = u64::from_be_bytes(raw[..8].try_into().ok()?);
    let tag = match raw[8] {
        1 => TtlTag::Purge,
        _ => return None,
    };
    Some(DueEntry { deadline_ms, tag, key: raw[9..].to_vec() })
}

/// Change-log key: the sequence number, big-endian so the log iterates in order.
pub(crate) fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_keys_round_trip_and_sort_by_deadline() {
        let a = ttl_key(5, TtlTag::Purge, b"zz");
        let b = ttl_key(6, TtlTag::Purge, b"aa");
        assert!(a < b);
        assert_eq!(
            parse_ttl_key(&a),
            Some(DueEntry { deadline_ms: 5, tag: TtlTag::Purge, key: b"zz".to_vec() })
        );
        assert_eq!(parse_ttl_key(b"short"), None);
    }
}
