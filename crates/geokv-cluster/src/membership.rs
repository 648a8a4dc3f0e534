//! Membership of a regional cluster: who the nodes are, where they stand on the ring, and
//! whether they are reachable.
//!
//! Every node carries a [`MemberInfo`]: its id, addresses, region, ring [`Status`] and a
//! version that grows with each change the node makes to its own info (a status change, a
//! restart). Gossip spreads these infos (the info is the SWIM identity, so a newer version
//! replaces an older one everywhere) together with liveness; [`Membership`] folds both into the
//! view a node routes by:
//!
//! - the **owners ring**: nodes that serve reads and count toward write quorums
//!   (`Normal` and `Leaving`);
//! - the **future ring**: the ring once every move in progress has finished (`Normal` and
//!   `Joining`). Writes also go to a key's future replicas that are not owners yet, so a
//!   joining node misses nothing written while it streams its ranges in, and the node taking
//!   over from a leaving one misses nothing written while the leaving node streams out.
//!
//! Owns: the view and its rules (newest info wins, news about an older identity is ignored,
//! a node never heard from is presumed alive only for a grace period). Does not own: the
//! transport or the timers of gossip (the server runs `foca` over UDP and feeds this view).

use std::collections::BTreeMap;

use geokv_core::NodeId;
use geokv_topology::Ring;
use serde::{Deserialize, Serialize};

/// Where a node stands on its region's ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Streaming in the ranges it will own; receives writes, serves no reads yet.
    Joining,
    /// Owns its ranges.
    Normal,
    /// Streaming its ranges out to their next owners; still an owner until done.
    Leaving,
    /// Gone from the ring for good (until it joins again with a newer version).
    Left,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Normal => "normal",
            Status::Leaving => "leaving",
            Status::Left => "left",
        }
    }

    fn owns(self) -> bool {
        matches!(self, Status::Normal | Status::Leaving)
    }

    fn will_own(self) -> bool {
        matches!(self, Status::Normal | Status::Joining)
    }
}

/// What a node says about itself. Its gossip identity: two infos of the same node conflict,
/// and the higher version wins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub version: u64,
    pub status: Status,
    pub region: String,
    pub client_addr: String,
    pub peer_addr: String,
}

impl MemberInfo {
    /// This info with `status` and a version above both the current one and `floor` (the
    /// caller passes wall-clock milliseconds, so a node whose data was wiped still comes back
    /// with a version above the one its peers remember).
    pub fn next(&self, status: Status, floor: u64) -> MemberInfo {
        MemberInfo { status, version: (self.version + 1).max(floor), ..self.clone() }
    }
}

impl foca::Identity for MemberInfo {
    type Addr = NodeId;

    /// A node declared down rejoins at once under the next version (same status).
    fn renew(&self) -> Option<Self> {
        Some(MemberInfo { version: self.version + 1, ..self.clone() })
    }

    fn addr(&self) -> NodeId {
        self.id
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.version > adversary.version
    }
}

/// Whether a node can be used as a replica now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Alive,
    /// Failed a probe and has not refuted it yet: not used as a replica target (its writes go
    /// to stand-ins as hints) until it answers again.
    Suspect,
    Dead,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Alive => "alive",
            Health::Suspect => "suspect",
            Health::Dead => "dead",
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    info: MemberInfo,
    /// `None` until gossip has said anything about this node since this process started.
    health: Option<Health>,
}

/// One node's view of its region.
#[derive(Clone, Debug)]
pub struct Membership {
    me: NodeId,
    n: usize,
    vnodes: u32,
    /// Until this time, nodes gossip has not reported on yet are presumed alive.
    presume_alive_until: u64,
    members: BTreeMap<NodeId, Entry>,
    owners: Ring,
    future: Ring,
}

impl Membership {
    /// The view of node `me.id`, knowing `others` (from its saved view or the topology file).
    /// Nodes not heard from by gossip count as alive until `now_ms + grace_ms`, then as dead.
    pub fn new(
        me: MemberInfo,
        others: impl IntoIterator<Item = MemberInfo>,
        n: usize,
        vnodes: u32,
        now_ms: u64,
        grace_ms: u64,
    ) -> Membership {
        let me_id = me.id;
        let mut members: BTreeMap<NodeId, Entry> =
            others.into_iter().map(|info| (info.id, Entry { info, health: None })).collect();
        members.insert(me_id, Entry { info: me, health: Some(Health::Alive) });
        let mut m = Membership {
            me: me_id,
            n,
            vnodes,
            presume_alive_until: now_ms.saturating_add(grace_ms),
            members,
            owners: Ring::new([], vnodes),
            future: Ring::new([], vnodes),
        };
        m.rebuild();
        m
    }

    fn region(&self) -> &str {
        &self.members[&self.me].info.region
    }

    fn rebuild(&mut self) {
        let region = self.region().to_owned();
        let of_region = || self.members.values().filter(|e| e.info.region == region);
        self.owners = Ring::new(of_region().filter(|e| e.info.status.owns()).map(|e| e.info.id), self.vnodes);
        self.future =
            Ring::new(of_region().filter(|e| e.info.status.will_own()).map(|e| e.info.id), self.vnodes);
    }

    pub fn me(&self) -> &MemberInfo {
        &self.members[&self.me].info
    }

    /// Replication factor of the region.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Replaces this node's own info (a status change, or a renewed gossip identity).
    pub fn set_me(&mut self, info: MemberInfo) {
        assert_eq!(info.id, self.me, "set_me takes this node's own info");
        self.members.insert(self.me, Entry { info, health: Some(Health::Alive) });
        self.rebuild();
    }

    /// Takes in a node's info as gossip carries it, with the health gossip reports for that
    /// identity. An info older than the one known is ignored. Returns whether the info (not
    /// only the health) changed, i.e. whether the view must be saved.
    pub fn learn(&mut self, info: MemberInfo, health: Health) -> bool {
        if info.id == self.me {
            return false;
        }
        match self.members.get_mut(&info.id) {
            Some(e) if e.info.version > info.version => false,
            Some(e) if e.info == info => {
                e.health = Some(health);
                false
            }
            _ => {
                self.members.insert(info.id, Entry { info, health: Some(health) });
                self.rebuild();
                true
            }
        }
    }

    /// Health news about version `version` of node `id`; news about an older identity (one the
    /// node has since replaced) is ignored. Returns whether the node's health changed.
    pub fn observe(&mut self, id: NodeId, version: u64, health: Health) -> bool {
        match self.members.get_mut(&id) {
            Some(e) if id != self.me && e.info.version == version && e.health != Some(health) => {
                e.health = Some(health);
                true
            }
            _ => false,
        }
    }

    /// A node's health at `now_ms` (this node is always alive; unknown nodes are dead).
    pub fn health(&self, id: NodeId, now_ms: u64) -> Health {
        match self.members.get(&id) {
            None => Health::Dead,
            Some(e) => e.health.unwrap_or(if now_ms < self.presume_alive_until {
                Health::Alive
            } else {
                Health::Dead
            }),
        }
    }

    /// What gossip last reported about a node's health (None: nothing since this start).
    pub fn reported(&self, id: NodeId) -> Option<Health> {
        self.members.get(&id).and_then(|e| e.health)
    }

    pub fn info(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.get(&id).map(|e| &e.info)
    }

    /// Every known node, of every region, with its info.
    pub fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values().map(|e| &e.info)
    }

    /// The other nodes of this region that have not left.
    pub fn peers(&self) -> Vec<NodeId> {
        let region = self.region();
        self.members
            .values()
            .filter(|e| e.info.id != self.me && e.info.region == region && e.info.status != Status::Left)
            .map(|e| e.info.id)
            .collect()
    }

    /// The ring reads and write quorums use.
    pub fn owners(&self) -> &Ring {
        &self.owners
    }

    /// The ring once every join and leave in progress has finished.
    pub fn future_owners(&self) -> &Ring {
        &self.future
    }

    /// Whether some node of the region is joining or leaving.
    pub fn in_transition(&self) -> bool {
        self.owners.nodes() != self.future.nodes()
    }

    /// The key's home replicas (owners ring).
    pub fn home(&self, key: &[u8]) -> Vec<NodeId> {
        self.owners.preference_list(key, self.n)
    }

    /// Future replicas of the key that are not home replicas yet: they get every write too,
    /// without counting toward its quorum.
    pub fn incoming(&self, key: &[u8]) -> Vec<NodeId> {
        if !self.in_transition() {
            return Vec::new();
        }
        let home = self.home(key);
        self.future.preference_list(key, self.n).into_iter().filter(|id| !home.contains(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: NodeId, status: Status, version: u64) -> MemberInfo {
        MemberInfo {
            id,
            version,
            status,
            region: "r".into(),
            client_addr: format!("127.0.0.1:{}", 1000 + id),
            peer_addr: format!("127.0.0.1:{}", 2000 + id),
        }
    }

    fn view() -> Membership {
        Membership::new(
            info(1, Status::Normal, 1),
            [info(2, Status::Normal, 1), info(3, Status::Normal, 1)],
            3,
            64,
            0,
            1_000,
        )
    }

    #[test]
    fn nodes_not_heard_from_are_presumed_alive_only_during_the_grace_period() {
        let mut m = view();
        assert_eq!(m.health(2, 500), Health::Alive);
        assert_eq!(m.health(2, 1_500), Health::Dead);
        assert!(m.observe(2, 1, Health::Alive));
        assert_eq!(m.health(2, 1_500), Health::Alive);
        assert_eq!(m.health(1, 9_999), Health::Alive, "a node is alive to itself");
        assert_eq!(m.health(42, 0), Health::Dead, "unknown nodes are never targets");
    }

    #[test]
    fn news_about_an_older_identity_is_ignored() {
        let mut m = view();
        assert!(m.learn(info(2, Status::Normal, 5), Health::Alive));
        assert!(!m.learn(info(2, Status::Leaving, 4), Health::Alive), "older info");
        assert_eq!(m.info(2).unwrap().status, Status::Normal);
        assert!(!m.observe(2, 4, Health::Dead), "the old identity went down, not the node");
        assert_eq!(m.health(2, 0), Health::Alive);
        assert!(m.observe(2, 5, Health::Suspect));
        assert_eq!(m.health(2, 0), Health::Suspect);
        assert!(!m.learn(info(1, Status::Left, 99), Health::Dead), "nobody else speaks for me");
        assert_eq!(m.me().status, Status::Normal);
    }

    #[test]
    fn a_joining_node_gets_writes_for_its_future_ranges_but_owns_nothing_yet() {
        let mut m = view();
        assert!(!m.in_transition());
        m.learn(info(4, Status::Joining, 1), Health::Alive);
        assert!(m.in_transition());
        let mut incoming = 0;
        for i in 0..2_000 {
            let key = format!("k{i}").into_bytes();
            let home = m.home(&key);
            assert!(!home.contains(&4), "a joining node is no home replica");
            assert_eq!(home.len(), 3);
            let inc = m.incoming(&key);
            assert!(inc.is_empty() || inc == vec![4]);
            incoming += inc.len();
        }
        // With 4 nodes and N = 3, the newcomer replicates about 3/4 of the keys.
        assert!((1_200..1_800).contains(&incoming), "{incoming} of 2000 keys go to the newcomer");
        m.learn(info(4, Status::Normal, 2), Health::Alive);
        assert!(!m.in_transition());
        assert!(m.owners().nodes().contains(&4));
    }

    #[test]
    fn a_leaving_node_stays_an_owner_until_it_has_left() {
        let mut m = view();
        m.learn(info(4, Status::Normal, 1), Health::Alive);
        m.learn(info(2, Status::Leaving, 2), Health::Alive);
        assert!(m.owners().nodes().contains(&2));
        assert!(!m.future_owners().nodes().contains(&2));
        for i in 0..500 {
            let key = format!("k{i}").into_bytes();
            let inc = m.incoming(&key);
            assert!(!inc.contains(&2));
            assert_eq!(inc.is_empty(), !m.home(&key).contains(&2), "keys of node 2 gain a replica");
        }
        m.learn(info(2, Status::Left, 3), Health::Alive);
        assert!(!m.owners().nodes().contains(&2));
        assert!(!m.peers().contains(&2));
    }

    #[test]
    fn other_regions_are_known_but_not_on_this_ring() {
        let mut m = view();
        let mut far = info(9, Status::Normal, 1);
        far.region = "elsewhere".into();
        m.learn(far, Health::Alive);
        assert!(!m.owners().nodes().contains(&9));
        assert!(!m.peers().contains(&9));
        assert!(m.info(9).is_some());
    }

    #[test]
    fn a_newer_version_always_wins_the_identity_conflict() {
        use foca::Identity;
        let old = info(2, Status::Normal, 7);
        let new = old.next(Status::Leaving, 0);
        assert!(new.win_addr_conflict(&old) && !old.win_addr_conflict(&new));
        assert_eq!(old.next(Status::Normal, 1_000).version, 1_000, "wall-clock floor");
        let renewed = old.renew().unwrap();
        assert_eq!((renewed.version, renewed.status), (8, Status::Normal));
        assert_eq!(renewed.addr(), 2);
    }
}
