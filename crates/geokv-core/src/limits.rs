//! Size and count limits on what clients may send. Defaults are documented in docs/api.md and
//! in the example server config; all are configurable.

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Room a record needs beyond its value: type, liveness, TTL and stamps.
pub const RECORD_OVERHEAD: usize = 4096;
/// The largest uncompressed state of one key the storage format decodes (256 MiB).
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest register value (after an append too), and largest set member, in bytes.
    pub max_value_bytes: usize,
    /// Most operations in one BatchWrite, or keys in one BatchGet.
    pub max_batch_items: usize,
    /// Most members in one SetAdd / SetRemove.
    pub max_set_members_per_request: usize,
    /// Largest encoded state of one key (a set grows with its members).
    pub max_record_bytes: usize,
    /// Largest page a Scan returns.
    pub max_scan_limit: usize,
    /// Longest TTL accepted, in milliseconds.
    pub max_ttl_ms: u64,
    /// Largest gRPC request message the server accepts, in bytes.
    pub max_request_bytes: usize,
    /// Largest response a Scan page or a BatchGet may build, in bytes (a Scan page stops
    /// early at this size; a BatchGet over it is refused).
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            max_batch_items: 1_000,
            max_set_members_per_request: 1_000,
            max_record_bytes: 16 * 1024 * 1024,
            max_scan_limit: 10_000,
            max_ttl_ms: 10 * 365 * 24 * 3600 * 1000,
            max_request_bytes: 16 * 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Limits {
    pub fn check_key(&self, key: &[u8]) -> Result<(), CoreError> {
        if key.is_empty() {
            return Err(CoreError::InvalidArgument("key is empty; keys must have at least 1 byte".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(CoreError::TooLarge {
                what: "key",
                actual: key.len(),
                limit: self.max_key_bytes,
                setting: "limits.max_key_bytes",
            });
        }
        Ok(())
    }

    pub fn check_value(&self, what: &'static str, value: &[u8]) -> Result<(), CoreError> {
        if value.len() > self.max_value_bytes {
            return Err(CoreError::TooLarge {
                what,
                actual: value.len(),
                limit: self.max_value_bytes,
                setting: "limits.max_value_bytes",
            });
        }
        Ok(())
    }

    pub fn check_batch(&self, what: &'static str, n: usize) -> Result<(), CoreError> {
        if n > self.max_batch_items {
            return Err(CoreError::TooMany {
                what,
                actual: n,
                limit: self.max_batch_items,
                setting: "limits.max_batch_items",
            });
        }
        Ok(())
    }

    pub fn check_members(&self, members: &[Vec<u8>]) -> Result<(), CoreError> {
        if members.is_empty() {
            return Err(CoreError::InvalidArgument("members is empty; name at least one member".into()));
        }
        if members.len() > self.max_set_members_per_request {
            return Err(CoreError::TooMany {
                what: "members",
                actual: members.len(),
                limit: self.max_set_members_per_request,
                setting: "limits.max_set_members_per_request",
            });
        }
        members.iter().try_for_each(|m| self.check_value("set member", m))
    }

    pub fn check_ttl(&self, ttl_ms: Option<u64>) -> Result<(), CoreError> {
        match ttl_ms {
            Some(0) => Err(CoreError::InvalidArgument(
                "ttl_ms is 0; give a positive TTL in milliseconds, or leave it unset for no expiry".into(),
            )),
            Some(t) if t > self.max_ttl_ms => Err(CoreError::InvalidArgument(format!(
                "ttl_ms is {t}, over the limit of {} ms (limits.max_ttl_ms)",
                self.max_ttl_ms
            ))),
            _ => Ok(()),
        }
    }

    /// Checks the limits against each other; used when a config file is loaded.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("max_batch_items", self.max_batch_items),
            ("max_set_members_per_request", self.max_set_members_per_request),
            ("max_record_bytes", self.max_record_bytes),
            ("max_scan_limit", self.max_scan_limit),
            ("max_request_bytes", self.max_request_bytes),
            ("max_response_bytes", self.max_response_bytes),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("limits.{name} is 0; it must be at least 1"));
            }
        }
        if self.max_record_bytes < self.max_value_bytes + RECORD_OVERHEAD {
            return Err(format!(
                "limits.max_record_bytes ({}) leaves no room for a value of limits.max_value_bytes ({}) plus {} bytes of CRDT metadata; raise max_record_bytes",
                self.max_record_bytes, self.max_value_bytes, RECORD_OVERHEAD
            ));
        }
        if self.max_record_bytes > MAX_RECORD_BYTES {
            return Err(format!(
                "limits.max_record_bytes ({}) is over the most a stored value may decode to ({MAX_RECORD_BYTES}); lower it",
                self.max_record_bytes
            ));
        }
        if self.max_request_bytes < self.max_value_bytes + self.max_key_bytes {
            return Err(format!(
                "limits.max_request_bytes ({}) cannot carry one key and value of the maximum sizes ({} + {}); raise it",
                self.max_request_bytes, self.max_key_bytes, self.max_value_bytes
            ));
        }
        if self.max_ttl_ms == 0 {
            return Err("limits.max_ttl_ms is 0; it must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_oversized_keys_are_rejected_with_the_sizes() {
        let l = Limits { max_key_bytes: 4, ..Limits::default() };
        assert!(matches!(l.check_key(b""), Err(CoreError::InvalidArgument(_))));
        let err = l.check_key(b"abcde").unwrap_err().to_string();
        assert!(err.contains("5 bytes") && err.contains("limit of 4"), "{err}");
        assert!(l.check_key(b"abcd").is_ok());
    }

    #[test]
    fn zero_ttl_is_rejected() {
        assert!(Limits::default().check_ttl(Some(0)).is_err());
        assert!(Limits::default().check_ttl(Some(1)).is_ok());
        assert!(Limits::default().check_ttl(None).is_ok());
    }
}
