//! Residency in the simulation: every node holds one policy (version 1) with two rules on top
//! of "anything anywhere": keys starting with [`PINNED`] may be held only in region 0 and are
//! served there through the nearest allowed region (`on_foreign = "forward"`); keys starting
//! with [`REGION_1_ONLY`] only in region 1, and refused elsewhere (`"reject"`). The decisions
//! are the server's: `geokv_protocol::residency::residence` routes a client request, the
//! replicator ships a key only to regions that may hold it (`xregion::next_batch`'s filter),
//! a receiver drops a key its region may not hold, and a cross-region exchange covers only
//! keys both regions may hold. The checker then asks that no replica of a region a key's rule
//! excludes holds it.

use geokv_protocol::residency::{residence, Residence};
use geokv_topology::{Policy, Topology};

use super::Layout;

/// Registers that only region 0 may hold; requests elsewhere are forwarded there.
pub const PINNED: &str = "pin-";
/// Registers that only region 1 may hold; requests elsewhere are refused.
pub const REGION_1_ONLY: &str = "only1-";

/// The deployment's topology (region locations) and its residency policy.
pub struct SimResidency {
    topology: Topology,
    policy: Policy,
}

impl SimResidency {
    pub fn new(layout: &Layout, n: usize) -> SimResidency {
        let mut text = String::from("vnodes_per_node = 64\n");
        for r in 0..layout.regions {
            // Regions along the equator, 30 degrees apart: region 0 is nearest to region 1.
            text += &format!(
                "[[regions]]\nname = \"{}\"\nlocation = [{}.0, 0.0]\njurisdiction = \"j{r}\"\nreplication_factor = {n}\n",
                Layout::region_name(r),
                30 * r
            );
        }
        for r in 0..layout.regions {
            for i in 0..layout.nodes_per_region {
                let id = layout.node(r, i);
                text += &format!(
                    "[[nodes]]\nid = {id}\nregion = \"{}\"\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\n",
                    Layout::region_name(r),
                    20_000 + id,
                    30_000 + id
                );
            }
        }
        let topology = Topology::parse(&text, "simulation").expect("the simulated topology is valid");
        let policy = format!(
            "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n\
             [[rules]]\nname = \"pinned\"\nprefix = \"{PINNED}\"\nregions = [\"{}\"]\non_foreign = \"forward\"\n\
             [[rules]]\nname = \"region-1-only\"\nprefix = \"{REGION_1_ONLY}\"\nregions = [\"{}\"]\non_foreign = \"reject\"\n",
            Layout::region_name(0),
            Layout::region_name(1)
        );
        let policy = Policy::parse(&policy, "simulation", &topology).expect("the simulated policy is valid");
        SimResidency { topology, policy }
    }

    /// Whether `region` may hold `key`.
    pub fn allows(&self, key: &[u8], region: usize) -> bool {
        self.policy.allows(key, &Layout::region_name(region))
    }

    /// Where a client request for `key` made in `region` runs (see the module docs).
    pub fn residence(&self, key: &[u8], region: usize, forwarded: bool) -> Residence {
        residence(&self.policy, 1, &self.topology, &Layout::region_name(region), key, forwarded)
    }
}

/// The index of a region from its name.
pub fn region_index(name: &str) -> usize {
    name.strip_prefix("region-").and_then(|i| i.parse().ok()).expect("a simulated region's name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_keys_are_forwarded_to_region_0_and_region_1_keys_refused_elsewhere() {
        let r = SimResidency::new(&Layout { regions: 3, nodes_per_region: 4 }, 3);
        assert!(r.allows(b"reg-1", 2) && r.allows(b"pin-1", 0) && !r.allows(b"pin-1", 1));
        assert_eq!(r.residence(b"pin-1", 0, false), Residence::Here);
        match r.residence(b"pin-1", 2, false) {
            Residence::Forward { regions, .. } => assert_eq!(regions, ["region-0"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.residence(b"only1-1", 0, false), Residence::Refused(_)));
        assert!(matches!(r.residence(b"pin-1", 2, true), Residence::Refused(_)));
        assert_eq!(region_index("region-2"), 2);
    }
}
