//! A consistent-hash ring with virtual nodes, one per region.
//!
//! Each node owns `vnodes` tokens on a 64-bit ring (xxh3 of the node id and the vnode index,
//! stable across processes and versions). A key hashes to a point; its **preference list** is
//! the first N distinct nodes clockwise from that point. With some nodes unhealthy, the home
//! replicas that are down are covered by **stand-ins**: the next healthy nodes further along
//! the ring, each told which home replica it holds a hint for (sloppy quorum).

use std::collections::BTreeSet;

use geokv_core::NodeId;
use xxhash_rust::xxh3::xxh3_64;

/// One replica a write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub node: NodeId,
    /// `Some(home)` when this node stands in for `home`, which is down; it keeps the write as a
    /// hint and hands it to `home` when it is back.
    pub hint_for: Option<NodeId>,
}

/// Where a key's replicas go, given which nodes are healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The key's N home replicas (the preference list), healthy or not.
    pub home: Vec<NodeId>,
    /// Healthy home replicas, then stand-ins for the unhealthy ones, as many as could be found.
    pub targets: Vec<Target>,
}

#[derive(Clone, Debug)]
pub struct Ring {
    /// (token, node), sorted by token.
    tokens: Vec<(u64, NodeId)>,
    nodes: BTreeSet<NodeId>,
    vnodes: u32,
}

/// The ring position of a key.
pub fn key_token(key: &[u8]) -> u64 {
    xxh3_64(key)
}

fn vnode_token(node: NodeId, v: u32) -> u64 {
    let mut buf = [0u8; 12];
    buf[..8].copy_from_slice(&node.to_be_bytes());
    buf[8..].copy_from_slice(&v.to_be_bytes());
    xxh3_64(&buf)
}

impl Ring {
    /// A ring of `nodes`, each with `vnodes` tokens (at least 1).
    pub fn new(nodes: impl IntoIterator<Item = NodeId>, vnodes: u32) -> Ring {
        let vnodes = vnodes.max(1);
        let nodes: BTreeSet<NodeId> = nodes.into_iter().collect();
        let mut tokens: Vec<(u64, NodeId)> =
            nodes.iter().flat_map(|&n| (0..vnodes).map(move |v| (vnode_token(n, v), n))).collect();
        tokens.sort_unstable();
        Ring { tokens, nodes, vnodes }
    }

    pub fn nodes(&self) -> &BTreeSet<NodeId> {
        &self.nodes
    }

    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// A copy of this ring with `node` added.
    pub fn with_node(&self, node: NodeId) -> Ring {
        Ring::new(self.nodes.iter().copied().chain([node]), self.vnodes)
    }

    /// A copy of this ring without `node`.
    pub fn without_node(&self, node: NodeId) -> Ring {
        Ring::new(self.nodes.iter().copied().filter(|&n| n != node), self.vnodes)
    }

    /// Distinct nodes clockwise from the key's position, each once.
    fn walk(&self, key: &[u8]) -> impl Iterator<Item = NodeId> + '_ {
        let start = self.tokens.partition_point(|&(t, _)| t < key_token(key));
        let mut seen = BTreeSet::new();
        self.tokens[start..]
            .iter()
            .chain(&self.tokens[..start])
            .map(|&(_, n)| n)
            .filter(move |n| seen.insert(*n))
    }

    /// The first `n` distinct nodes clockwise from the key (fewer if the ring is smaller).
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.walk(key).take(n).collect()
    }

    /// The key's home replicas, and where writes go given `healthy`: healthy home replicas,
    /// plus one healthy stand-in (further along the ring) for each unhealthy home replica.
    pub fn placement(&self, key: &[u8], n: usize, healthy: impl Fn(NodeId) -> bool) -> Placement {
        let mut walk = self.walk(key);
        let home: Vec<NodeId> = walk.by_ref().take(n).collect();
        let mut targets: Vec<Target> =
            home.iter().filter(|&&h| healthy(h)).map(|&node| Target { node, hint_for: None }).collect();
        let mut down = home.iter().copied().filter(|&h| !healthy(h));
        for candidate in walk.filter(|&c| healthy(c)) {
            match down.next() {
                Some(home_node) => targets.push(Target { node: candidate, hint_for: Some(home_node) }),
                None => break,
            }
        }
        Placement { home, targets }
    }

    /// The share of the key space `node` is the first home replica of (`primary`) and one of
    /// the `n` home replicas of (`replica`), each between 0 and 1, computed exactly over the
    /// ring's arcs.
    pub fn ownership(&self, node: NodeId, n: usize) -> Ownership {
        let mut own = Ownership::default();
        let Some(&(last, _)) = self.tokens.last() else { return own };
        let full = 2f64.powi(64);
        let mut prev = last;
        for i in 0..self.tokens.len() {
            // Keys hashing into (prev, token_i] start their walk at token i.
            let token = self.tokens[i].0;
            let arc = if self.tokens.len() == 1 { full } else { token.wrapping_sub(prev) as f64 };
            prev = token;
            let mut seen = BTreeSet::new();
            let list = self.tokens[i..].iter().chain(&self.tokens[..i]).map(|&(_, m)| m);
            let list: Vec<NodeId> = list.filter(|m| seen.insert(*m)).take(n).collect();
            if list.first() == Some(&node) {
                own.primary += arc / full;
            }
            if list.contains(&node) {
                own.replica += arc / full;
            }
        }
        own
    }
}

/// A node's share of a ring's key space (see [`Ring::ownership`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ownership {
    pub primary: f64,
    pub replica: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn keys(n: usize) -> impl Iterator<Item = Vec<u8>> {
        (0..n).map(|i| format!("key-{i}").into_bytes())
    }

    #[test]
    fn keys_balance_across_3_to_10_nodes_within_20_percent() {
        for n in 3..=10u64 {
            let ring = Ring::new(1..=n, 256);
            let mut owned: BTreeMap<NodeId, usize> = BTreeMap::new();
            let total = 100_000;
            for k in keys(total) {
                *owned.entry(ring.preference_list(&k, 1)[0]).or_default() += 1;
            }
            let fair = total as f64 / n as f64;
            for (node, count) in owned {
                let dev = (count as f64 - fair).abs() / fair;
                assert!(dev < 0.20, "{n} nodes: node {node} owns {count} keys, {:.1}% off fair", dev * 100.0);
            }
        }
    }

    #[test]
    fn a_join_moves_about_one_nth_of_the_keys_and_only_to_the_new_node() {
        for n in 3..=9u64 {
            let before = Ring::new(1..=n, 256);
            let after = before.with_node(n + 1);
            let total = 50_000;
            let mut moved = 0;
            for k in keys(total) {
                let old: BTreeSet<_> = before.preference_list(&k, 3).into_iter().collect();
                let new: BTreeSet<_> = after.preference_list(&k, 3).into_iter().collect();
                let gained: Vec<_> = new.difference(&old).collect();
                assert!(gained.iter().all(|&&g| g == n + 1), "a key moved between old nodes");
                if before.preference_list(&k, 1) != after.preference_list(&k, 1) {
                    moved += 1;
                    assert_eq!(after.preference_list(&k, 1), vec![n + 1]);
                }
            }
            let frac = moved as f64 / total as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!((frac - ideal).abs() < ideal * 0.25, "{n}->{}: {frac:.3} moved, ideal {ideal:.3}", n + 1);
        }
    }

    #[test]
    fn ownership_shares_add_up_and_match_sampled_keys() {
        let ring = Ring::new(1..=5, 64);
        let shares: Vec<Ownership> = (1..=5).map(|node| ring.ownership(node, 3)).collect();
        let primary: f64 = shares.iter().map(|s| s.primary).sum();
        let replica: f64 = shares.iter().map(|s| s.replica).sum();
        assert!((primary - 1.0).abs() < 1e-9, "primaries cover the ring once: {primary}");
        assert!((replica - 3.0).abs() < 1e-9, "replicas cover it N times: {replica}");
        let total = 50_000;
        let sampled = keys(total).filter(|k| ring.preference_list(k, 1)[0] == 2).count();
        assert!((sampled as f64 / total as f64 - shares[1].primary).abs() < 0.02);
        assert_eq!(Ring::new([7], 1).ownership(7, 3), Ownership { primary: 1.0, replica: 1.0 });
        assert_eq!(Ring::new([7], 4).ownership(8, 3), Ownership::default());
    }

    #[test]
    fn a_leave_moves_only_the_leaving_nodes_keys() {
        let before = Ring::new(1..=6, 256);
        let after = before.without_node(4);
        for k in keys(20_000) {
            let old = before.preference_list(&k, 3);
            let new = after.preference_list(&k, 3);
            if !old.contains(&4) {
                assert_eq!(old, new);
            } else {
                let kept: Vec<_> = old.iter().filter(|&&x| x != 4).copied().collect();
                assert!(kept.iter().all(|k| new.contains(k)));
            }
        }
    }

    #[test]
    fn preference_lists_are_distinct_and_stable() {
        let ring = Ring::new([10, 20, 30, 40], 64);
        for k in keys(1000) {
            let p = ring.preference_list(&k, 3);
            assert_eq!(p.len(), 3);
            assert_eq!(p.iter().collect::<BTreeSet<_>>().len(), 3);
            assert_eq!(
                p,
                Ring::new([40, 30, 20, 10], 64).preference_list(&k, 3),
                "order of construction is irrelevant"
            );
        }
        assert_eq!(ring.preference_list(b"x", 9).len(), 4, "never more nodes than the ring has");
    }

    #[test]
    fn unhealthy_home_replicas_get_stand_ins_with_hints() {
        let ring = Ring::new(1..=5, 64);
        let key = b"some-key";
        let home = ring.preference_list(key, 3);
        let down = home[1];
        let p = ring.placement(key, 3, |n| n != down);
        assert_eq!(p.home, home);
        assert_eq!(p.targets.len(), 3);
        let stand_in = p.targets.iter().find(|t| t.hint_for.is_some()).unwrap();
        assert_eq!(stand_in.hint_for, Some(down));
        assert!(!home.contains(&stand_in.node));
        assert_eq!(stand_in.node, ring.preference_list(key, 4)[3], "the next node clockwise stands in");
        // With everything else down, there is nobody to stand in.
        let alone = ring.placement(key, 3, |n| n == home[0]);
        assert_eq!(alone.targets, vec![Target { node: home[0], hint_for: None }]);
    }
}
