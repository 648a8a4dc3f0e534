//! Who takes part in a request for one key: a snapshot of the key's replicas in this region,
//! taken once when the request starts, and the routing decisions made from it.

use geokv_core::{NodeId, Op};
use geokv_topology::{Placement, Ring, Target};

use crate::Action;

/// A key's replicas in this region as this node sees them when a request starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicas {
    pub me: NodeId,
    /// Replicas of a key (the replication factor N).
    pub n: usize,
    /// The key's home replicas (its preference list) and where a write goes: healthy home
    /// replicas and stand-ins for the unhealthy ones.
    pub placement: Placement,
    /// Home replicas this node holds healthy, in ring order (this node always is).
    pub healthy_home: Vec<NodeId>,
    /// Nodes taking the key over (joining, or replacing a leaving node), each with whether
    /// it is healthy: they get every write too, outside the quorum.
    pub incoming: Vec<(NodeId, bool)>,
}

impl Replicas {
    /// The snapshot for `key` on `ring`, given which nodes are healthy and which nodes are
    /// taking the key over.
    pub fn new(
        me: NodeId,
        ring: &Ring,
        n: usize,
        key: &[u8],
        healthy: impl Fn(NodeId) -> bool,
        incoming: impl IntoIterator<Item = NodeId>,
    ) -> Replicas {
        let healthy = |id| id == me || healthy(id);
        let placement = ring.placement(key, n, healthy);
        let healthy_home = placement.home.iter().copied().filter(|&h| healthy(h)).collect();
        let incoming = incoming.into_iter().filter(|&id| id != me).map(|id| (id, healthy(id))).collect();
        Replicas { me, n, placement, healthy_home, incoming }
    }

    pub fn home(&self) -> &[NodeId] {
        &self.placement.home
    }

    pub fn is_home(&self) -> bool {
        self.placement.home.contains(&self.me)
    }

    fn healthy(&self, id: NodeId) -> bool {
        self.healthy_home.contains(&id) || self.placement.targets.iter().any(|t| t.node == id)
    }

    /// Who gets a new state of the key besides this node, and who gets a hint kept by this
    /// node instead: the healthy home replicas and the stand-ins, the healthy incoming nodes;
    /// hints for the incoming nodes that are down and for the unhealthy home replicas no
    /// stand-in covers (the region has no spare node).
    pub fn fan_out(&self) -> (Vec<Target>, Vec<NodeId>) {
        let mut sends: Vec<Target> =
            self.placement.targets.iter().copied().filter(|t| t.node != self.me).collect();
        // This node may itself be the stand-in for a home replica that is down (a node that
        // is not a home replica applies a state from another region): it keeps the hint.
        let mut hints: Vec<NodeId> =
            self.placement.targets.iter().filter(|t| t.node == self.me).filter_map(|t| t.hint_for).collect();
        for &(node, healthy) in &self.incoming {
            if healthy {
                sends.push(Target { node, hint_for: None });
            } else {
                hints.push(node);
            }
        }
        for &home in self.placement.home.iter().filter(|&&h| !self.healthy(h)) {
            if !self.placement.targets.iter().any(|t| t.hint_for == Some(home)) {
                hints.push(home);
            }
        }
        (sends, hints)
    }
}

/// Where a client write runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node coordinates it.
    Here,
    /// This node hands it to these healthy home replicas, tried in ring order (this node among
    /// them for a swap whose first choice is another node).
    Forward(Vec<NodeId>),
}

/// Where `action` runs. A write runs on this node if it is a home replica of the key. A
/// compare-and-swap runs on the first healthy home replica, so concurrent swaps through
/// different nodes meet on one coordinator while it is up. (Swaps are still not linearizable,
/// there is no consensus: a coordinator change during a failure can let two both succeed.)
pub fn route(action: &Action, replicas: &Replicas) -> Route {
    let here = match action {
        Action::Cas { .. } => replicas.healthy_home.first() == Some(&replicas.me),
        Action::Op(_) => replicas.is_home(),
    };
    if here {
        Route::Here
    } else {
        Route::Forward(replicas.healthy_home.clone())
    }
}

/// Whether running a write again gives the same result: a put, delete, set change or TTL
/// change does, and so does an increment or an append with a request id (it applies once); a
/// plain increment or append would apply twice, and a compare-and-swap would find its own write.
pub fn repeatable(action: &Action) -> bool {
    matches!(
        action,
        Action::Op(
            Op::Put { .. }
                | Op::Delete
                | Op::SetAdd { .. }
                | Op::SetRemove { .. }
                | Op::IncrementOnce { .. }
                | Op::AppendOnce { .. }
                | Op::Expire { .. }
        )
    )
}

/// Where a replica keeps a state it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Merged into its own store.
    Merge,
    /// As a hint for this home replica, which is down.
    Hint(NodeId),
}

/// Where node `me` keeps a state sent to it as a stand-in for `hint_for`: a state sent for
/// `me` itself (its peers thought it down) is merged.
pub fn keep(me: NodeId, hint_for: Option<NodeId>) -> Keep {
    match hint_for {
        Some(home) if home != me => Keep::Hint(home),
        _ => Keep::Merge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_core::Expect;

    fn ring() -> Ring {
        Ring::new([1, 2, 3, 4], 16)
    }

    fn key_homed_at(first: NodeId) -> Vec<u8> {
        (0..1000u32)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| ring().preference_list(k, 3)[0] == first)
            .expect("some key")
    }

    #[test]
    fn a_write_runs_on_a_home_replica_and_is_forwarded_from_elsewhere() {
        let key = key_homed_at(1);
        let home = ring().preference_list(&key, 3);
        let spare = *[1, 2, 3, 4].iter().find(|id| !home.contains(id)).unwrap();
        let put = Action::Op(Op::Put { value: b"v".to_vec(), ttl_ms: None });
        let at = |me| Replicas::new(me, &ring(), 3, &key, |_| true, []);
        assert_eq!(route(&put, &at(home[1])), Route::Here);
        assert_eq!(route(&put, &at(spare)), Route::Forward(home.clone()));
    }

    #[test]
    fn a_swap_runs_on_the_first_healthy_home_replica() {
        let key = key_homed_at(1);
        let home = ring().preference_list(&key, 3);
        let cas = Action::Cas { expect: Expect::Absent, value: b"v".to_vec(), ttl_ms: None };
        let r = Replicas::new(home[1], &ring(), 3, &key, |_| true, []);
        assert_eq!(route(&cas, &r), Route::Forward(home.clone()));
        let first_down = Replicas::new(home[1], &ring(), 3, &key, |id| id != home[0], []);
        assert_eq!(route(&cas, &first_down), Route::Here);
    }

    #[test]
    fn the_fan_out_covers_down_replicas_with_stand_ins_or_hints() {
        let key = key_homed_at(1);
        let home = ring().preference_list(&key, 3);
        let spare = *[1, 2, 3, 4].iter().find(|id| !home.contains(id)).unwrap();
        let r = Replicas::new(home[0], &ring(), 3, &key, |id| id != home[2], []);
        let (sends, hints) = r.fan_out();
        assert_eq!(
            sends,
            vec![Target { node: home[1], hint_for: None }, Target { node: spare, hint_for: Some(home[2]) }]
        );
        assert!(hints.is_empty());
        // With the spare down too, nobody stands in: the coordinator keeps the hint.
        let r = Replicas::new(home[0], &ring(), 3, &key, |id| id != home[2] && id != spare, []);
        assert_eq!(r.fan_out(), (vec![Target { node: home[1], hint_for: None }], vec![home[2]]));
    }

    /// Found by the simulation (seed 200): a node applying a state from another region was
    /// itself the stand-in for a home replica that was down, sent the state to the others and
    /// kept no hint, so the home replica missed it until anti-entropy.
    #[test]
    fn a_node_standing_in_for_a_down_home_replica_keeps_its_hint() {
        let key = key_homed_at(1);
        let home = ring().preference_list(&key, 3);
        let spare = *[1, 2, 3, 4].iter().find(|id| !home.contains(id)).unwrap();
        let r = Replicas::new(spare, &ring(), 3, &key, |id| id != home[1], []);
        assert!(r.placement.targets.contains(&Target { node: spare, hint_for: Some(home[1]) }));
        let (sends, hints) = r.fan_out();
        assert_eq!(
            sends,
            vec![Target { node: home[0], hint_for: None }, Target { node: home[2], hint_for: None }]
        );
        assert_eq!(hints, vec![home[1]]);
    }

    #[test]
    fn incoming_nodes_get_the_write_or_a_hint() {
        let key = key_homed_at(1);
        let home = ring().preference_list(&key, 3);
        let r = Replicas::new(home[0], &ring(), 3, &key, |id| id != 9, [8, 9]);
        let (sends, hints) = r.fan_out();
        assert!(sends.contains(&Target { node: 8, hint_for: None }));
        assert_eq!(hints, vec![9]);
    }

    #[test]
    fn only_writes_that_may_run_twice_are_repeatable() {
        assert!(repeatable(&Action::Op(Op::Delete)));
        assert!(!repeatable(&Action::Op(Op::Increment { delta: 1, ttl_ms: None })));
        assert!(repeatable(&Action::Op(Op::IncrementOnce { delta: 1, ttl_ms: None, id: 1 })));
        assert!(repeatable(&Action::Op(Op::AppendOnce { value: b"x".to_vec(), ttl_ms: None, id: 1 })));
        assert!(!repeatable(&Action::Op(Op::Append { value: b"x".to_vec(), ttl_ms: None })));
        let cas = Action::Cas { expect: Expect::Absent, value: Vec::new(), ttl_ms: None };
        assert!(!repeatable(&cas));
    }

    #[test]
    fn a_state_sent_for_the_receiver_itself_is_merged() {
        assert_eq!(keep(2, None), Keep::Merge);
        assert_eq!(keep(2, Some(2)), Keep::Merge);
        assert_eq!(keep(2, Some(3)), Keep::Hint(3));
    }
}
