//! `config_parse`: topology files and residency policies, as `geokv` loads them.

use std::sync::LazyLock;

use geokv_topology::{Policy, Topology};

/// Splits an input into a topology file and a policy file (both halves stay valid TOML: the
/// separator is a comment line).
pub const SEPARATOR: &str = "\n# --- residency policy ---\n";

/// Policies in inputs without a topology half are validated against this one.
static THREE_REGIONS: LazyLock<Topology> = LazyLock::new(|| {
    Topology::parse(include_str!("../../topology/three-regions.toml"), "three-regions.toml")
        .expect("the example topology is valid")
});

/// Rings are built only for topologies up to this many tokens, to keep executions fast.
const MAX_RING_TOKENS: u64 = 1 << 16;

/// `TOPOLOGY SEPARATOR POLICY` parses the policy against the topology (or against the
/// three-region example when the topology is invalid); an input without the separator is
/// parsed as both kinds of file.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (topology_text, policy_text) = text.split_once(SEPARATOR).unwrap_or((text, text));
    let parsed = match Topology::parse(topology_text, "fuzz-topology.toml") {
        Ok(t) => {
            topology_invariants(&t);
            Some(t)
        }
        Err(e) => {
            assert!(e.to_string().contains("fuzz-topology.toml"), "error does not name the file: {e}");
            None
        }
    };
    let topology = parsed.as_ref().unwrap_or(&THREE_REGIONS);
    match Policy::parse(policy_text, "fuzz-policy.toml", topology) {
        Ok(p) => policy_invariants(&p, topology),
        Err(e) => assert!(e.to_string().contains("fuzz-policy.toml"), "error does not name the file: {e}"),
    }
}

/// What the rest of geokv relies on in a validated topology: distances are finite, and each
/// region's ring gives every key `replication_factor` distinct replicas of that region.
fn topology_invariants(t: &Topology) {
    let tokens = t.nodes.len() as u64 * u64::from(t.vnodes_per_node);
    for a in &t.regions {
        for b in &t.regions {
            let d = t.distance_km(&a.name, &b.name).expect("both regions exist");
            assert!(d.is_finite() && d >= 0.0, "distance {} -> {} is {d}", a.name, b.name);
        }
        if tokens <= MAX_RING_TOKENS {
            let ring = t.ring(&a.name);
            for key in [&b""[..], b"k", b"user:42"] {
                let list = ring.preference_list(key, a.replication_factor);
                assert_eq!(list.len(), a.replication_factor, "region {}", a.name);
                assert!(list.iter().all(|n| t.node(*n).is_some_and(|n| n.region == a.name)));
            }
        }
    }
    for n in &t.nodes {
        let _ = (n.client_addr_from("elsewhere"), n.peer_addr_from(&n.region), n.listen_addr(&n.peer_addr));
    }
}

/// What the server relies on in a validated policy: every key has a deciding rule (the
/// longest matching prefix), and forwarding visits exactly the rule's allowed regions.
fn policy_invariants(p: &Policy, t: &Topology) {
    for rule in p.rules() {
        let mut key = rule.prefix.clone();
        key.push(b'x');
        let decider = p.rule_for(&key);
        assert!(key.starts_with(&decider.prefix) && decider.prefix.len() >= rule.prefix.len());
        for r in &t.regions {
            let mut order = Policy::forward_order(rule, &r.name, t);
            assert_eq!(order.len(), rule.allowed.len());
            order.sort();
            assert!(order.iter().eq(rule.allowed.iter()), "rule {:?} from {}", rule.name, r.name);
        }
    }
    let _ = p.rule_for(b"");
}
