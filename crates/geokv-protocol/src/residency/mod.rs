//! The residency routing decision: where a client request for a key runs, given the policy
//! version this node holds. Served here if the key's rule allows this region; otherwise
//! forwarded to the allowed regions, nearest first (great-circle distance between region
//! locations), or refused with FAILED_PRECONDITION naming the rule, as the rule says. A
//! request another region forwarded here is never forwarded again: if this region may not hold
//! the key either, the two regions hold different policy versions, and it is refused.
//!
//! The policy itself (rules, evaluation, validation) is `geokv_topology::Policy`; which nodes
//! of a region a forward goes to is the server's (`residency/mod.rs`).

use geokv_topology::{OnForeign, Policy, Topology};

use crate::{Failure, Kind};

pub mod change;

/// Where a client request for a key runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Residence {
    /// This region may hold the key.
    Here,
    /// Through the regions the key's rule allows, nearest first.
    Forward { rule: String, regions: Vec<String> },
    /// Not at all: nothing was written.
    Refused(Failure),
}

/// How a key shows in a message: printable (invalid bytes as `\xNN`, control characters
/// escaped), cut after 64 characters (a message travels in a header, and the key may not have
/// been validated yet).
pub fn shown_key(key: &[u8]) -> String {
    geokv_core::key_label(key, 64)
}

/// Where a request for `key` runs in `region`, under `policy` (version `version`).
/// `forwarded`: another region sent it here already.
pub fn residence(
    policy: &Policy,
    version: u64,
    topology: &Topology,
    region: &str,
    key: &[u8],
    forwarded: bool,
) -> Residence {
    let rule = policy.rule_for(key);
    if rule.allows(region) {
        return Residence::Here;
    }
    let allowed = rule.allowed.iter().cloned().collect::<Vec<_>>().join(", ");
    let line = if rule.line > 0 { format!(" (line {})", rule.line) } else { String::new() };
    let refuse = |message: String| {
        let refused = Failure::refused(Kind::FailedPrecondition, message);
        Residence::Refused(Failure { reason: Some("RESIDENCY_REFUSED".into()), ..refused })
    };
    if forwarded {
        return refuse(format!(
            "key {:?} was forwarded to region {region}, which may not hold it either: residency rule {:?}{line} of policy version {version} allows only {allowed}; the regions hold different policy versions, retry shortly",
            shown_key(key),
            rule.name,
        ));
    }
    if rule.on_foreign == OnForeign::Reject {
        return refuse(format!(
            "key {:?} may not be held in region {region}: residency rule {:?}{line} allows only {allowed}; send the request to a node of {allowed}",
            shown_key(key),
            rule.name
        ));
    }
    Residence::Forward { rule: rule.name.clone(), regions: Policy::forward_order(rule, region, topology) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_REGIONS: &str = include_str!("../../../../topology/three-regions.toml");
    const EXAMPLE: &str = include_str!("../../../../topology/residency.toml");

    fn setup() -> (Topology, Policy) {
        let t = Topology::parse(THREE_REGIONS, "three-regions.toml").unwrap();
        let p = Policy::parse(EXAMPLE, "residency.toml", &t).unwrap();
        (t, p)
    }

    #[test]
    fn a_key_is_served_where_its_rule_allows_and_forwarded_or_refused_elsewhere() {
        let (t, p) = setup();
        let at = |region: &str, key: &[u8], forwarded| residence(&p, 3, &t, region, key, forwarded);
        assert_eq!(at("us-east", b"anything", false), Residence::Here);
        assert_eq!(at("eu-west", b"eu:user:1", false), Residence::Here);
        // eu-users forwards to the EU regions, nearest first.
        match at("us-east", b"eu:user:1", false) {
            Residence::Forward { rule, regions } => {
                assert_eq!(rule, "eu-users");
                assert_eq!(regions.first().map(String::as_str), Some("eu-west"));
            }
            other => panic!("expected a forward, got {other:?}"),
        }
        // us-health rejects, naming the rule and where to send the request.
        let Residence::Refused(f) = at("eu-west", b"us:phi:7", false) else { panic!("expected a refusal") };
        assert_eq!(
            (f.kind, f.maybe_applied, f.reason()),
            (Kind::FailedPrecondition, false, "RESIDENCY_REFUSED")
        );
        assert!(
            f.message.contains("\"us-health\"")
                && f.message.contains("send the request to a node of us-east")
        );
        // A forwarded request is never forwarded again.
        let Residence::Refused(f) = at("us-east", b"eu:user:1", true) else { panic!("expected a refusal") };
        assert!(
            f.message.contains("policy version 3") && f.message.contains("retry shortly"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_key_shows_printable_and_cut() {
        assert_eq!(shown_key(b"a\x00b\xff"), "a\\u{0}b\\xff");
        assert_eq!(shown_key(&[b'k'; 100]).chars().count(), 67);
    }
}
