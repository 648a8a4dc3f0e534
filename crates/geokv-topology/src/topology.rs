//! The topology file: regions and their nodes.
//!
//! ```toml
//! vnodes_per_node = 256          # optional, default 256
//!
//! [[regions]]
//! name = "eu-west"
//! location = [-6.2603, 53.3498]  # longitude, latitude in degrees (Dublin)
//! jurisdiction = "eu"
//! replication_factor = 3
//!
//! [[nodes]]
//! id = 1
//! region = "eu-west"
//! client_addr = "127.0.0.1:7401"
//! peer_addr = "127.0.0.1:7501"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use geo_types::Point;
use geokv_core::NodeId;
use serde::{Deserialize, Serialize};

use crate::{great_circle_km, HostPort, Ring};

const DEFAULT_VNODES: u32 = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Unique region name, e.g. "eu-west".
    pub name: String,
    /// `[longitude, latitude]` in degrees.
    pub location: [f64; 2],
    /// Jurisdiction tag used by residency policies, e.g. "eu", "us".
    pub jurisdiction: String,
    /// Replicas of each key in this region (N).
    pub replication_factor: usize,
}

impl RegionSpec {
    pub fn point(&self) -> Point<f64> {
        Point::new(self.location[0], self.location[1])
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: NodeId,
    pub region: String,
    /// Address of the client gRPC API: an IP address or a DNS name (resolved when a node or
    /// client connects, and again on every reconnect), and a port.
    pub client_addr: HostPort,
    /// Address of the node-to-node gRPC service (and gossip, UDP, on the same port).
    pub peer_addr: HostPort,
    /// The host other regions reach this node at, when it differs from the host of its
    /// addresses (a node with a private address in its region and a WAN-side one): nodes of
    /// other regions connect to `wan_host` with the same ports, and the node listens on all
    /// interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan_host: Option<std::net::IpAddr>,
}

impl NodeSpec {
    /// The node's client address as a node of `from_region` dials it.
    pub fn client_addr_from(&self, from_region: &str) -> HostPort {
        self.dialed_from(&self.client_addr, from_region)
    }

    /// The node's peer address as a node of `from_region` dials it.
    pub fn peer_addr_from(&self, from_region: &str) -> HostPort {
        self.dialed_from(&self.peer_addr, from_region)
    }

    fn dialed_from(&self, addr: &HostPort, from_region: &str) -> HostPort {
        match self.wan_host {
            Some(host) if from_region != self.region => addr.with_host(host),
            _ => addr.clone(),
        }
    }

    /// Where the node listens: its own address, or every interface at that port when it has
    /// a separate WAN-side host or its address is a DNS name.
    pub fn listen_addr(&self, addr: &HostPort) -> SocketAddr {
        match self.wan_host {
            Some(h) if h.is_ipv6() => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), addr.port()),
            Some(_) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port()),
            None => addr.listen(),
        }
    }
}

/// Emulated WAN link settings of one direction of a region pair (used when the nodes run with
/// `replication.emulate_wan`); unset fields keep their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub from: String,
    pub to: String,
    /// One-way delay in milliseconds; default: derived from the great-circle distance.
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability that a batch is lost, 0 to 1.
    #[serde(default)]
    pub loss: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default = "default_vnodes")]
    pub vnodes_per_node: u32,
    pub regions: Vec<RegionSpec>,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub links: Vec<LinkSpec>,
    /// The residency policy file (see topology/residency.toml), relative to this file.
    /// Without one every key may live in every region.
    #[serde(default)]
    pub residency: Option<std::path::PathBuf>,
}

fn default_vnodes() -> u32 {
    DEFAULT_VNODES
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {message}")]
    Read { path: String, message: String },
    #[error("topology file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("topology file {path}: {problem}; {fix}")]
    Invalid { path: String, problem: String, fix: String },
}

impl Topology {
    /// Reads and validates a topology file. A relative `residency` path is made relative to
    /// the topology file's directory.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TopologyError::Read { path: shown.clone(), message: e.to_string() })?;
        let mut t = Self::parse(&text, &shown)?;
        if let (Some(policy), Some(dir)) = (&t.residency, path.parent()) {
            if policy.is_relative() {
                t.residency = Some(dir.join(policy));
            }
        }
        Ok(t)
    }

    /// Parses and validates topology text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Topology, TopologyError> {
        let t: Topology = toml::from_str(text)
            .map_err(|e| TopologyError::Parse { path: origin.into(), message: e.to_string() })?;
        t.validate(origin)?;
        Ok(t)
    }

    pub fn validate(&self, origin: &str) -> Result<(), TopologyError> {
        let invalid = |problem: String, fix: &str| TopologyError::Invalid {
            path: origin.into(),
            problem,
            fix: fix.into(),
        };
        if self.regions.is_empty() {
            return Err(invalid("there are no [[regions]]".into(), "declare at least one region"));
        }
        if self.vnodes_per_node == 0 || self.vnodes_per_node > 4096 {
            return Err(invalid(
                format!("vnodes_per_node is {}", self.vnodes_per_node),
                "use 1 to 4096 (default 256)",
            ));
        }
        let mut names = BTreeSet::new();
        for r in &self.regions {
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(invalid(
                    format!("region name {:?} is empty or repeated", r.name),
                    "give every region a unique name",
                ));
            }
            let [lon, lat] = r.location;
            if !(-180.0..=180.0).contains(&lon)
                || !(-90.0..=90.0).contains(&lat)
                || !lon.is_finite()
                || !lat.is_finite()
            {
                return Err(invalid(
                    format!("region {:?} has location [{lon}, {lat}]", r.name),
                    "write location = [longitude, latitude] with longitude in -180..180 and latitude in -90..90",
                ));
            }
            if r.jurisdiction.is_empty() {
                return Err(invalid(
                    format!("region {:?} has an empty jurisdiction", r.name),
                    "tag it, e.g. jurisdiction = \"eu\"",
                ));
            }
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for n in &self.nodes {
            if n.id == 0 || !ids.insert(n.id) {
                return Err(invalid(
                    format!("node id {} is zero or repeated", n.id),
                    "give every node a unique positive id",
                ));
            }
            if !names.contains(n.region.as_str()) {
                return Err(invalid(
                    format!("node {} names unknown region {:?}", n.id, n.region),
                    &format!("use one of: {}", names.iter().copied().collect::<Vec<_>>().join(", ")),
                ));
            }
            for a in [&n.client_addr, &n.peer_addr] {
                if !addrs.insert(a.clone()) {
                    return Err(invalid(
                        format!("address {a} is used twice (node {})", n.id),
                        "give every node its own ports",
                    ));
                }
            }
        }
        let mut pairs = BTreeSet::new();
        for l in &self.links {
            if !names.contains(l.from.as_str()) || !names.contains(l.to.as_str()) || l.from == l.to {
                return Err(invalid(
                    format!("link {:?} -> {:?} does not join two different known regions", l.from, l.to),
                    &format!("use two of: {}", names.iter().copied().collect::<Vec<_>>().join(", ")),
                ));
            }
            if !pairs.insert((l.from.as_str(), l.to.as_str())) {
                return Err(invalid(format!("link {} -> {} is declared twice", l.from, l.to), "keep one"));
            }
            if !(0.0..=1.0).contains(&l.loss) || l.delay_ms.unwrap_or(0) > 60_000 || l.jitter_ms > 60_000 {
                return Err(invalid(
                    format!(
                        "link {} -> {} has loss {}, delay {:?} ms, jitter {} ms",
                        l.from, l.to, l.loss, l.delay_ms, l.jitter_ms
                    ),
                    "use a loss between 0 and 1 and delays up to 60000 ms",
                ));
            }
        }
        for r in &self.regions {
            let members = self.nodes.iter().filter(|n| n.region == r.name).count();
            if r.replication_factor == 0 || r.replication_factor > members {
                return Err(invalid(
                    format!(
                        "region {:?} has replication_factor {} but {} node(s)",
                        r.name, r.replication_factor, members
                    ),
                    "use a replication factor from 1 to the number of nodes in the region",
                ));
            }
        }
        Ok(())
    }

    /// The declared link settings from region `from` to region `to`, if any.
    pub fn link(&self, from: &str, to: &str) -> Option<&LinkSpec> {
        self.links.iter().find(|l| l.from == from && l.to == to)
    }

    pub fn region(&self, name: &str) -> Option<&RegionSpec> {
        self.regions.iter().find(|r| r.name == name)
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The nodes of a region, by id.
    pub fn nodes_in(&self, region: &str) -> BTreeMap<NodeId, &NodeSpec> {
        self.nodes.iter().filter(|n| n.region == region).map(|n| (n.id, n)).collect()
    }

    /// The ring of a region's nodes.
    pub fn ring(&self, region: &str) -> Ring {
        Ring::new(self.nodes_in(region).into_keys(), self.vnodes_per_node)
    }

    /// Great-circle distance between two regions, in kilometres.
    pub fn distance_km(&self, a: &str, b: &str) -> Option<f64> {
        Some(great_circle_km(self.region(a)?.point(), self.region(b)?.point()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_REGION: &str = include_str!("../../../topology/one-region.toml");
    const THREE_REGIONS: &str = include_str!("../../../topology/three-regions.toml");

    #[test]
    fn other_regions_dial_a_node_at_its_wan_host_with_the_same_ports() {
        let text = "[[regions]]\nname = \"a\"\nlocation = [0.0, 0.0]\njurisdiction = \"x\"\nreplication_factor = 1\n\
[[regions]]\nname = \"b\"\nlocation = [1.0, 1.0]\njurisdiction = \"y\"\nreplication_factor = 1\n\
[[nodes]]\nid = 1\nregion = \"a\"\nclient_addr = \"10.1.0.11:7400\"\npeer_addr = \"10.1.0.11:7500\"\nwan_host = \"10.9.0.11\"\n\
[[nodes]]\nid = 2\nregion = \"b\"\nclient_addr = \"10.2.0.12:7400\"\npeer_addr = \"10.2.0.12:7500\"\n";
        let t = Topology::parse(text, "wan.toml").unwrap();
        let (one, two) = (t.node(1).unwrap(), t.node(2).unwrap());
        assert_eq!(one.peer_addr_from("a").to_string(), "10.1.0.11:7500", "its own region: private address");
        assert_eq!(one.peer_addr_from("b").to_string(), "10.9.0.11:7500");
        assert_eq!(one.client_addr_from("b").to_string(), "10.9.0.11:7400");
        assert_eq!(one.listen_addr(&one.peer_addr).to_string(), "0.0.0.0:7500", "listens on every interface");
        assert_eq!(two.peer_addr_from("a"), two.peer_addr, "no wan_host: one address for all");
        assert_eq!(two.listen_addr(&two.client_addr).to_string(), two.client_addr.to_string());
    }

    #[test]
    fn example_topologies_are_valid() {
        let one = Topology::parse(ONE_REGION, "one-region.toml").unwrap();
        assert_eq!(one.nodes.len(), 3);
        let three = Topology::parse(THREE_REGIONS, "three-regions.toml").unwrap();
        assert_eq!(three.regions.len(), 3);
        assert_eq!(three.nodes.len(), 9);
        for r in &three.regions {
            assert_eq!(three.nodes_in(&r.name).len(), 3);
            assert_eq!(three.ring(&r.name).nodes().len(), 3);
        }
        let d = three.distance_km("eu-west", "us-east").unwrap();
        assert!(d > 5000.0, "{d}");
        let link = three.link("ap-south", "us-east").unwrap();
        assert_eq!((link.delay_ms, link.jitter_ms), (None, 10));
        assert!(three.link("us-east", "ap-south").is_none(), "links are one direction each");
    }

    #[test]
    fn links_must_join_two_known_regions_with_sane_settings() {
        let base = THREE_REGIONS.split("[[links]]").next().unwrap().to_string()
            + &THREE_REGIONS[THREE_REGIONS.find("[[nodes]]").unwrap()..];
        let with = |link: &str| format!("{base}\n[[links]]\n{link}\n");
        assert!(Topology::parse(&with("from = \"eu-west\"\nto = \"us-east\"\ndelay_ms = 5"), "t").is_ok());
        for (link, expected) in [
            ("from = \"eu-west\"\nto = \"mars\"", "does not join two different known regions"),
            ("from = \"eu-west\"\nto = \"eu-west\"", "does not join two different known regions"),
            ("from = \"eu-west\"\nto = \"us-east\"\nloss = 1.5", "use a loss between 0 and 1"),
        ] {
            let e = Topology::parse(&with(link), "t.toml").unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    fn err(text: &str) -> String {
        Topology::parse(text, "t.toml").unwrap_err().to_string()
    }

    const REGION: &str =
        "[[regions]]\nname = \"r\"\nlocation = [1.0, 2.0]\njurisdiction = \"eu\"\nreplication_factor = 1\n";

    fn node(id: u64, region: &str, port: u16) -> String {
        format!(
            "[[nodes]]\nid = {id}\nregion = \"{region}\"\nclient_addr = \"127.0.0.1:{port}\"\npeer_addr = \"127.0.0.1:{}\"\n",
            port + 1000
        )
    }

    #[test]
    fn validation_errors_name_the_problem_and_the_fix() {
        let ok = format!("{REGION}{}", node(1, "r", 7000));
        assert!(Topology::parse(&ok, "t.toml").is_ok());
        let e = err(&format!("{REGION}{}{}", node(1, "r", 7000), node(1, "r", 7001)));
        assert!(e.contains("t.toml") && e.contains("node id 1") && e.contains("unique"), "{e}");
        let e = err(&format!("{REGION}{}", node(1, "mars", 7000)));
        assert!(e.contains("unknown region \"mars\"") && e.contains("use one of: r"), "{e}");
        let e = err(&format!(
            "{}{}",
            REGION.replace("replication_factor = 1", "replication_factor = 3"),
            node(1, "r", 7000)
        ));
        assert!(e.contains("replication_factor 3 but 1 node"), "{e}");
        let e = err(&format!("{}{}", REGION.replace("[1.0, 2.0]", "[1.0, 200.0]"), node(1, "r", 7000)));
        assert!(e.contains("latitude"), "{e}");
        let e = err(&format!("{}{}", REGION.replace("[1.0, 2.0]", "\"north\""), node(1, "r", 7000)));
        assert!(e.contains("t.toml") && e.contains("location"), "{e}");
        let e = err(&format!("{REGION}{}{}", node(1, "r", 7000), node(2, "r", 7000)));
        assert!(e.contains("used twice"), "{e}");
        let e = err(&format!("{REGION}{REGION}{}", node(1, "r", 7000)));
        assert!(e.contains("repeated"), "{e}");
    }
}
