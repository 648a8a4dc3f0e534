//! Changing the residency policy: the decisions both the server (`residency/apply.rs`,
//! `residency/handover.rs`, the cross-region receiver) and the simulator carry out.
//!
//! - **Versions**: an apply offers one above every version the nodes it reached hold
//!   ([`next_version`]). Versions order policies, and so that two applies that picked the same
//!   version (each side of a partition) still converge, an equal version with another text is
//!   decided by the texts: the greater one wins everywhere ([`adoption`]).
//! - **Admission**: a node stores no key its installed policy keeps out of its region
//!   ([`admission`]), whatever the path (client write, merge, hint).
//! - **Enforcement**: the keys a node's region may no longer hold ([`doomed`]) are first handed
//!   to every other region the policy lets hold them ([`hand_over_regions`]); a key is erased
//!   only once all of them took it and the node's state is still the one handed over
//!   ([`erasable`]). Keys another region may now hold are logged again for shipping by their
//!   first home replica ([`reships`]).
//! - **Receiving**: a batch from a sender on a newer version is refused until this node has
//!   that version ([`on_sender_version`]); from an older one, keys this region may not hold
//!   are dropped.

use std::collections::BTreeSet;

use geokv_core::Stamp;
use geokv_topology::Policy;

use crate::{Failure, Kind};

/// The version an apply offers, given the versions held by the nodes it reached.
pub fn next_version(held: impl IntoIterator<Item = u64>) -> u64 {
    held.into_iter().max().unwrap_or(0) + 1
}

/// What a node holding policy `mine` does with an `offered` one (each as version and text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// Newer (or the same version whose text wins the tie): validate, save and install it.
    Adopt,
    /// Older, or the one this node holds already.
    Ignore,
    /// The same version with another text that loses the tie: this node keeps its own, and
    /// the offering node adopts it when it next compares versions. The message says so.
    Keep(String),
}

pub fn adoption(mine: (u64, &str), offered: (u64, &str)) -> Adoption {
    let ((mv, mt), (ov, ot)) = (mine, offered);
    if ov < mv || (ov == mv && ot == mt) {
        Adoption::Ignore
    } else if ov > mv || ot > mt {
        Adoption::Adopt
    } else {
        Adoption::Keep(format!(
            "this node holds another policy as version {mv} (applied elsewhere meanwhile; it wins the tie, and every node converges on it); apply the policy again to get a new version"
        ))
    }
}

/// Whether a node of `region` may store `key` under `policy` (version `version`): the
/// refusal names the rule.
pub fn admission(policy: &Policy, version: u64, region: &str, key: &[u8]) -> Result<(), String> {
    let rule = policy.rule_for(key);
    if rule.allows(region) {
        return Ok(());
    }
    Err(format!(
        "residency rule {:?} (policy version {version}) allows only {}",
        rule.name,
        rule.allowed.iter().cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// Whether enforcing `policy` in `region` removes `key`.
pub fn doomed(policy: &Policy, region: &str, key: &[u8]) -> bool {
    !policy.allows(key, region)
}

/// The regions a doomed key must be handed to before it is erased in `region`: every other
/// region `policy` lets hold it (none: the key is no longer held anywhere, and goes).
pub fn hand_over_regions(policy: &Policy, region: &str, key: &[u8]) -> BTreeSet<String> {
    policy.rule_for(key).allowed.iter().filter(|r| *r != region).cloned().collect()
}

/// Whether a key every destination took may be erased: this node's state `now` is the one it
/// handed over (`shipped`, its own copy's version then; `None` if it held only hints), or it
/// has none. A state written or merged since is kept for the next enforcement.
pub fn erasable(shipped: Option<Stamp>, now: Option<Stamp>) -> bool {
    now.is_none() || now == shipped
}

/// Whether, after enforcing `installed` in `region` (the previous enforced policy
/// `previous`), this node logs `key` again for shipping: some other region may hold it now
/// that could not before, and this node is its first home replica (one node per region).
pub fn reships(previous: &Policy, installed: &Policy, region: &str, key: &[u8], first_home: bool) -> bool {
    first_home && installed.rule_for(key).allowed.iter().any(|r| r != region && !previous.allows(key, r))
}

/// Whether a receiver on policy version `mine` takes a batch from a sender on `sender`: a
/// newer sender's batch is refused (the receiver fetches that version, and the sender resends);
/// an older one's is taken, without the keys this region may not hold.
pub fn on_sender_version(sender: u64, mine: u64) -> Result<(), Failure> {
    if sender > mine {
        return Err(Failure::refused(
            Kind::Unavailable,
            format!(
                "the sender holds residency policy version {sender} and this node {mine}; fetching it, resend shortly"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_topology::Topology;

    const THREE_REGIONS: &str = include_str!("../../../../topology/three-regions.toml");

    fn policy(t: &Topology, regions: &str) -> Policy {
        let text = format!(
            "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n[[rules]]\nname = \"moving\"\nprefix = \"m:\"\nregions = [{regions}]\non_foreign = \"forward\"\n"
        );
        Policy::parse(&text, "test", t).unwrap()
    }

    #[test]
    fn versions_count_up_and_a_tie_goes_to_the_greater_text() {
        assert_eq!(next_version([]), 1);
        assert_eq!(next_version([3, 7, 2]), 8);
        assert_eq!(adoption((2, "a"), (3, "a")), Adoption::Adopt);
        assert_eq!(adoption((2, "a"), (1, "b")), Adoption::Ignore);
        assert_eq!(adoption((2, "a"), (2, "a")), Adoption::Ignore);
        assert_eq!(adoption((2, "a"), (2, "b")), Adoption::Adopt);
        // Both sides of the tie end on "b".
        assert!(matches!(adoption((2, "b"), (2, "a")), Adoption::Keep(m) if m.contains("version 2")));
    }

    #[test]
    fn enforcement_hands_a_key_to_its_new_regions_and_erases_only_what_it_handed() {
        let t = Topology::parse(THREE_REGIONS, "three-regions.toml").unwrap();
        let (old, new) = (policy(&t, "\"us-east\""), policy(&t, "\"eu-west\", \"ap-south\""));
        assert!(doomed(&new, "us-east", b"m:1") && !doomed(&new, "eu-west", b"m:1"));
        assert!(!doomed(&new, "us-east", b"other"));
        assert_eq!(
            hand_over_regions(&new, "us-east", b"m:1").into_iter().collect::<Vec<_>>(),
            ["ap-south", "eu-west"]
        );
        assert!(admission(&new, 4, "us-east", b"m:1").unwrap_err().contains("\"moving\" (policy version 4)"));
        assert!(admission(&new, 4, "eu-west", b"m:1").is_ok());
        let (v1, v2) = (Stamp::new(10, 1), Stamp::new(11, 1));
        assert!(erasable(Some(v1), Some(v1)) && erasable(Some(v1), None) && erasable(None, None));
        assert!(!erasable(Some(v1), Some(v2)) && !erasable(None, Some(v1)));
        // Newly allowed regions get the key from its first home replica in each region.
        assert!(reships(&old, &new, "us-east", b"m:1", true));
        assert!(!reships(&old, &new, "us-east", b"m:1", false));
        assert!(!reships(&new, &new, "eu-west", b"m:1", true));
        assert!(!reships(&old, &new, "us-east", b"other", true));
    }

    #[test]
    fn a_batch_from_a_newer_policy_waits_for_it() {
        assert!(on_sender_version(3, 3).is_ok() && on_sender_version(2, 3).is_ok());
        let f = on_sender_version(4, 3).unwrap_err();
        assert_eq!((f.kind, f.maybe_applied), (Kind::Unavailable, false));
        assert!(f.message.contains("version 4 and this node 3"));
    }
}
