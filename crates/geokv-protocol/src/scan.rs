//! A scan across the replicas of a region ([`ScanRound`]).
//!
//! The coordinator asks every node it believes up for a page of its own states (tombstones
//! and expired states included, so a delete on one replica hides the key's older value on
//! another) from the same start key, one state more than the page it will answer so it can
//! tell whether a node had more to give. With M of the region's nodes answering, at most
//! `N - R` may be missing (R the level's replica count): then every key was read from at
//! least R of its N replicas, as a Get at that level would. Of each key only the states of its
//! home replicas count (a copy a move left behind may be long stale). A key is complete up to
//! the smallest last key among the nodes that had more to give (the bound); the coordinator
//! merges each complete key's states, drops what is not visible, and answers up to `limit`
//! keys. The next page resumes after the last key answered, or, when the visible keys ran
//! short, after the bound.

use std::collections::BTreeMap;

use geokv_cluster::Level;
use geokv_core::{Crdt, NodeId, Record};

use crate::{Failure, PeerError};

/// One node's page: its states in key order, and where it stopped (`None`: its end).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodePage {
    pub items: Vec<(Vec<u8>, Record)>,
    pub more: Option<Vec<u8>>,
}

/// What a scan answers: visible keys with their merged states, in key order, and the key the
/// next page starts after (`None`: the scan is complete).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanAnswer {
    pub items: Vec<(Vec<u8>, Record)>,
    pub next: Option<Vec<u8>>,
}

/// One page of a scan, collected from a region's nodes.
#[derive(Debug)]
pub struct ScanRound {
    asked: Vec<NodeId>,
    region_nodes: usize,
    n: usize,
    level: Level,
    limit: usize,
    pages: BTreeMap<NodeId, Option<NodePage>>,
}

impl ScanRound {
    /// A page of `limit` keys at `level`, asked of `nodes` (those believed up) out of the
    /// region's `region_nodes`, with `n` replicas per key. Returns the nodes to ask, each for
    /// [`want`](ScanRound::want) states.
    pub fn start(
        nodes: Vec<NodeId>,
        region_nodes: usize,
        n: usize,
        level: Level,
        limit: usize,
    ) -> (ScanRound, Vec<NodeId>) {
        let ask = nodes.clone();
        (ScanRound { asked: nodes, region_nodes, n, level, limit, pages: BTreeMap::new() }, ask)
    }

    /// How many states to ask each node for.
    pub fn want(&self) -> usize {
        self.limit + 1
    }

    /// A node's answer (an error counts the node missing). Returns whether every node asked
    /// has answered.
    pub fn on_page(&mut self, node: NodeId, page: Result<NodePage, PeerError>) -> bool {
        if self.asked.contains(&node) {
            self.pages.entry(node).or_insert(page.ok());
        }
        self.done()
    }

    pub fn done(&self) -> bool {
        self.pages.len() == self.asked.len()
    }

    /// The answer from the pages received so far (nodes that did not answer are missing).
    /// `home` gives a key's home replicas; `now_ms` decides what is visible.
    pub fn finish(self, home: impl Fn(&[u8]) -> Vec<NodeId>, now_ms: u64) -> Result<ScanAnswer, Failure> {
        let pages: Vec<(NodeId, NodePage)> =
            self.pages.into_iter().filter_map(|(id, p)| p.map(|p| (id, p))).collect();
        let missing = self.region_nodes.saturating_sub(pages.len());
        let allowed = self.n.saturating_sub(self.level.required(self.n));
        if missing > allowed {
            return Err(Failure::quorum(
                format!(
                    "a scan at this consistency level tolerates {allowed} missing nodes and {missing} did not answer"
                ),
                false,
            ));
        }
        let bound: Option<Vec<u8>> = pages.iter().filter_map(|(_, p)| p.more.clone()).min();
        let mut merged: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
        for (id, page) in pages {
            for (key, rec) in page.items {
                if bound.as_ref().is_some_and(|b| &key > b) || !home(&key).contains(&id) {
                    continue;
                }
                match merged.get_mut(&key) {
                    Some(m) => m.merge(&rec),
                    None => {
                        merged.insert(key, rec);
                    }
                }
            }
        }
        let mut items: Vec<(Vec<u8>, Record)> =
            merged.into_iter().filter(|(_, r)| r.is_visible(now_ms)).collect();
        let next = if items.len() > self.limit {
            items.truncate(self.limit);
            items.last().map(|(k, _)| k.clone())
        } else {
            bound
        };
        Ok(ScanAnswer { items, next })
    }
}

#[cfg(test)]
mod tests {
    use geokv_core::{apply, Limits, Op, Stamp};

    use super::*;
    use crate::Kind;

    const NOW: u64 = 1_700_000_000_000;

    fn put(v: &str, t: u64) -> Record {
        let stamp = Stamp::new(Stamp::ntp_from_millis(NOW + t), 1);
        apply(None, &Op::Put { value: v.as_bytes().to_vec(), ttl_ms: None }, stamp, NOW, &Limits::default())
            .expect("applies")
            .record
    }

    fn deleted(t: u64) -> Record {
        let stamp = Stamp::new(Stamp::ntp_from_millis(NOW + t), 1);
        apply(Some(&put("x", 0)), &Op::Delete, stamp, NOW, &Limits::default()).expect("applies").record
    }

    fn page(items: &[(&str, Record)], more: Option<&str>) -> NodePage {
        NodePage {
            items: items.iter().map(|(k, r)| (k.as_bytes().to_vec(), r.clone())).collect(),
            more: more.map(|m| m.as_bytes().to_vec()),
        }
    }

    fn keys(a: &ScanAnswer) -> Vec<String> {
        a.items.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect()
    }

    /// Every key lives on every node (N = 3 of 3).
    fn everywhere(_: &[u8]) -> Vec<NodeId> {
        vec![1, 2, 3]
    }

    #[test]
    fn asks_every_node_for_one_more_than_the_page_and_waits_for_all() {
        let (mut round, ask) = ScanRound::start(vec![1, 2, 3], 3, 3, Level::Quorum, 2);
        assert_eq!((ask, round.want()), (vec![1, 2, 3], 3));
        assert!(!round.on_page(1, Ok(NodePage::default())));
        assert!(!round.on_page(9, Ok(NodePage::default())), "a node not asked does not count");
        assert!(!round.on_page(2, Err(PeerError::TimedOut("slow".into()))));
        assert!(round.on_page(3, Ok(NodePage::default())));
    }

    #[test]
    fn merges_newest_states_and_hides_deleted_keys() {
        let (mut round, _) = ScanRound::start(vec![1, 2], 3, 3, Level::Quorum, 10);
        round.on_page(1, Ok(page(&[("a", put("old", 1)), ("b", put("b", 1))], None)));
        round.on_page(2, Ok(page(&[("a", put("new", 2)), ("b", deleted(2))], None)));
        let answer = round.finish(everywhere, NOW + 10).unwrap();
        assert_eq!(keys(&answer), vec!["a"], "a tombstone on one replica hides the other's value");
        assert_eq!(answer.items[0].1, put("new", 2));
        assert_eq!(answer.next, None);
    }

    #[test]
    fn too_many_missing_nodes_fail_the_page_and_one_is_enough_at_one() {
        let (mut round, _) = ScanRound::start(vec![1, 2, 3], 3, 3, Level::Quorum, 10);
        round.on_page(1, Ok(page(&[("a", put("a", 1))], None)));
        round.on_page(2, Err(PeerError::Transport("reset".into())));
        round.on_page(3, Err(PeerError::TimedOut("slow".into())));
        let e = round.finish(everywhere, NOW).unwrap_err();
        assert_eq!((e.kind, e.maybe_applied), (Kind::Unavailable, false));
        assert!(e.message.contains("tolerates 1 missing nodes and 2 did not answer"), "{e}");

        let (mut round, _) = ScanRound::start(vec![1], 3, 3, Level::One, 10);
        round.on_page(1, Ok(page(&[("a", put("a", 1))], None)));
        assert_eq!(keys(&round.finish(everywhere, NOW + 10).unwrap()), vec!["a"]);
    }

    #[test]
    fn keys_past_the_smallest_bound_wait_for_the_next_page() {
        let (mut round, _) = ScanRound::start(vec![1, 2, 3], 3, 3, Level::Quorum, 5);
        round.on_page(1, Ok(page(&[("a", put("a", 1)), ("b", put("b", 1))], Some("b"))));
        round.on_page(2, Ok(page(&[("a", put("a", 1)), ("c", put("c", 1))], None)));
        round.on_page(3, Ok(page(&[("a", put("a", 1)), ("d", put("d", 1))], Some("d"))));
        let answer = round.finish(everywhere, NOW + 10).unwrap();
        assert_eq!(keys(&answer), vec!["a", "b"], "node 1 may hold keys between b and c");
        assert_eq!(answer.next, Some(b"b".to_vec()));
    }

    #[test]
    fn a_full_page_resumes_after_its_last_key_and_only_home_replicas_count() {
        let home = |k: &[u8]| if k == b"c" { vec![2, 3] } else { vec![1, 2, 3] };
        let (mut round, _) = ScanRound::start(vec![1, 2], 3, 3, Level::Quorum, 2);
        round.on_page(1, Ok(page(&[("a", put("a", 1)), ("c", put("left behind", 9))], None)));
        round.on_page(2, Ok(page(&[("b", put("b", 1)), ("c", put("c", 1))], None)));
        let answer = round.finish(home, NOW + 10).unwrap();
        assert_eq!(keys(&answer), vec!["a", "b"]);
        assert_eq!(answer.next, Some(b"b".to_vec()));

        let (mut round, _) = ScanRound::start(vec![1, 2], 3, 3, Level::Quorum, 5);
        round.on_page(1, Ok(page(&[("c", put("left behind", 9))], None)));
        round.on_page(2, Ok(page(&[("c", put("c", 1))], None)));
        let answer = round.finish(home, NOW + 10).unwrap();
        assert_eq!(answer.items, vec![(b"c".to_vec(), put("c", 1))], "a copy on a non-home node is ignored");
    }
}
