//! Residency in the simulation. Every node starts with one policy (version 0) of three rules
//! on top of "anything anywhere": keys starting with [`PINNED`] may be held only in region 0
//! and are served there through the nearest allowed region (`on_foreign = "forward"`); keys
//! starting with [`REGION_1_ONLY`] only in region 1, and refused elsewhere (`"reject"`); keys
//! starting with [`MOVING`] anywhere at first. An operator changes the regions [`MOVING`] keys
//! may be held in during a run (`Fault::Residency`: narrowed, widened or moved), and the change
//! spreads and is enforced as on the server (see [`super::enforce`]).
//!
//! The decisions are the server's: `geokv_protocol::residency::residence` routes a client
//! request, `residency::change` decides adoption, admission, what enforcement hands over and
//! erases and what it re-ships; the replicator ships a key only to regions that may hold it
//! (`xregion::next_batch`'s filter), a receiver drops a key its region may not hold, and a
//! cross-region exchange covers only keys both regions may hold. The checker then asks that
//! every node ends on the same policy and that no replica of a region the final policy
//! excludes holds a key.

use std::sync::{Arc, RwLock};

use geokv_protocol::residency::{residence, Residence};
use geokv_topology::{Policy, Topology};

use super::Layout;

/// Registers that only region 0 may hold; requests elsewhere are forwarded there.
pub const PINNED: &str = "pin-";
/// Registers that only region 1 may hold; requests elsewhere are refused.
pub const REGION_1_ONLY: &str = "only1-";
/// Registers and counters whose regions an operator changes during a run; requests elsewhere
/// are forwarded.
pub const MOVING: &str = "mv-";

/// The deployment's topology (region locations), shared by every node.
pub struct SimResidency {
    topology: Topology,
    regions: usize,
}

/// The policy a node holds: its version, its text (what versions are compared by) and the
/// parsed rules. Shared with the node's store, whose admission check reads it.
pub struct Held {
    pub version: u64,
    pub text: String,
    pub policy: Policy,
}

pub type SharedPolicy = Arc<RwLock<Held>>;

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
        SimResidency { topology, regions: layout.regions }
    }

    /// The policy text under which [`MOVING`] keys may be held in `moving` (region indexes).
    pub fn text(&self, moving: &[usize]) -> String {
        let names: Vec<String> = moving.iter().map(|&r| format!("\"{}\"", Layout::region_name(r))).collect();
        format!(
            "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n\
             [[rules]]\nname = \"pinned\"\nprefix = \"{PINNED}\"\nregions = [\"{}\"]\non_foreign = \"forward\"\n\
             [[rules]]\nname = \"region-1-only\"\nprefix = \"{REGION_1_ONLY}\"\nregions = [\"{}\"]\non_foreign = \"reject\"\n\
             [[rules]]\nname = \"moving\"\nprefix = \"{MOVING}\"\nregions = [{}]\non_foreign = \"forward\"\n",
            Layout::region_name(0),
            Layout::region_name(1),
            names.join(", ")
        )
    }

    /// The policy every node starts with (version 0): [`MOVING`] keys anywhere.
    pub fn initial(&self) -> Held {
        let text = self.text(&(0..self.regions).collect::<Vec<_>>());
        self.held(0, text).expect("the initial policy is valid")
    }

    /// A policy version from its text, validated as a node validates one it adopts.
    pub fn held(&self, version: u64, text: String) -> Result<Held, String> {
        let policy = Policy::parse(&text, &format!("residency policy version {version}"), &self.topology)
            .map_err(|e| e.to_string())?;
        Ok(Held { version, text, policy })
    }

    /// Where a client request for `key` made in `region` runs under `held` (see the module
    /// docs).
    pub fn residence(&self, held: &Held, key: &[u8], region: usize, forwarded: bool) -> Residence {
        residence(&held.policy, held.version, &self.topology, &Layout::region_name(region), key, forwarded)
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
        let held = r.initial();
        let allows = |key: &[u8], region| held.policy.allows(key, &Layout::region_name(region));
        assert!(allows(b"reg-1", 2) && allows(b"pin-1", 0) && !allows(b"pin-1", 1) && allows(b"mv-1", 2));
        assert_eq!(r.residence(&held, b"pin-1", 0, false), Residence::Here);
        match r.residence(&held, b"pin-1", 2, false) {
            Residence::Forward { regions, .. } => assert_eq!(regions, ["region-0"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.residence(&held, b"only1-1", 0, false), Residence::Refused(_)));
        assert!(matches!(r.residence(&held, b"pin-1", 2, true), Residence::Refused(_)));
        assert_eq!(region_index("region-2"), 2);
        // A change moves the moving keys, nearest allowed region first.
        let moved = r.held(1, r.text(&[2, 1])).unwrap();
        assert!(!moved.policy.allows(b"mv-1", "region-0") && moved.policy.allows(b"mv-1", "region-2"));
        match r.residence(&moved, b"mv-1", 0, false) {
            Residence::Forward { regions, .. } => assert_eq!(regions, ["region-1", "region-2"]),
            other => panic!("{other:?}"),
        }
    }
}
