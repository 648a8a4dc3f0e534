//! The simulated node as a driver of [`geokv_protocol::ScanRound`]: a client scan asks every
//! node of the region it believes up for a page of its states (a recovering node refuses, as
//! it refuses a vote in a read), and answers the merged page once all have answered or the
//! deadline passed.

use geokv_cluster::Level;
use geokv_core::{NodeId, Record, Stamp};
use geokv_protocol::{Failure, NodePage, PeerError, ScanRound};

use super::node::{Ctx, Key, Msg, Node, Timer, REQUEST_TIMEOUT_MS};
use super::{Addr, Bug};
use crate::history::Observed;

/// A scan this node coordinates for a client.
pub(crate) struct ScanJob {
    round: ScanRound,
    /// The region as this node saw it when the scan began: whose pages count is decided on
    /// it, as the server's driver does (a move finishing meanwhile changes nothing).
    view: geokv_cluster::Membership,
    client: Addr,
    id: u64,
}

/// A scan's answer to the client: each visible key with its version and value, and where the
/// next page would start.
pub type ScanReply = Result<(Vec<(Key, Stamp, Observed)>, Option<Key>), Failure>;

impl Node {
    pub(crate) fn start_scan(
        &mut self,
        client: Addr,
        id: u64,
        prefix: Key,
        limit: usize,
        level: Level,
        ctx: &mut Ctx,
    ) {
        // As on the server: this node and its peers (joining ones too) that are believed up.
        let mut nodes: Vec<NodeId> =
            std::iter::once(self.id).chain(self.view.peers()).filter(|&p| self.healthy(p, ctx.now)).collect();
        let mut region_nodes = self.view.peers().len() + 1;
        // Planted bug: the scan reads this node's store only (the region taken to be this
        // node alone).
        if ctx.bug == Some(Bug::ScanLocalOnly) {
            (nodes, region_nodes) = (vec![self.id], 1);
        }
        let (round, ask) = ScanRound::start(nodes, region_nodes, self.n, level, limit);
        let want = round.want();
        let job = self.next();
        ctx.timers.push((ctx.now + REQUEST_TIMEOUT_MS, Timer::Deadline(job)));
        self.scans.insert(job, ScanJob { round, view: self.view.clone(), client, id });
        for node in ask {
            if node == self.id {
                let page = self.page(&prefix, want, ctx.bug).map_err(PeerError::Answered);
                self.on_page(job, node, page, ctx);
            } else {
                let call = self.next();
                self.scan_calls.insert(call, (job, node));
                ctx.send(Addr::Node(node), Msg::ScanPage { id: call, prefix: prefix.clone(), want });
            }
        }
    }

    /// This node's page of states for a scan (refused while it recovers its keys).
    pub(crate) fn page(&self, prefix: &[u8], want: usize, bug: Option<Bug>) -> Result<NodePage, Failure> {
        self.vote(bug)?;
        let page =
            geokv_storage::ReplicaStore::scan(&self.store, b"", prefix, want, usize::MAX, |_, _| Some(1))
                .expect("the in-memory store does not fail");
        Ok(NodePage { items: page.items, more: page.resume_after })
    }

    /// A peer's answer to page request `call`.
    pub(crate) fn on_page_answer(&mut self, call: u64, page: Result<NodePage, Failure>, ctx: &mut Ctx) {
        if let Some((job, node)) = self.scan_calls.remove(&call) {
            self.on_page(job, node, page.map_err(PeerError::Answered), ctx);
        }
    }

    fn on_page(&mut self, job: u64, node: NodeId, page: Result<NodePage, PeerError>, ctx: &mut Ctx) {
        let Some(scan) = self.scans.get_mut(&job) else { return };
        if scan.round.on_page(node, page) {
            self.finish_scan(job, ctx);
        }
    }

    /// Answers scan `job` with what it has (its deadline passed, or every node answered).
    /// Returns whether `job` was a scan.
    pub(crate) fn finish_scan(&mut self, job: u64, ctx: &mut Ctx) -> bool {
        let Some(ScanJob { round, view, client, id }) = self.scans.remove(&job) else { return false };
        self.scan_calls.retain(|_, (j, _)| *j != job);
        let now_ms = self.physical_ms(ctx.now);
        let answer: ScanReply = round.finish(|key| view.home(key), now_ms).map(|a| {
            let items = a
                .items
                .into_iter()
                .map(|(key, rec): (Key, Record)| {
                    let version = rec.version();
                    (key, version, Observed::from_view(rec.view(now_ms)))
                })
                .collect();
            (items, a.next)
        });
        ctx.sends.push((client, Msg::ScanResp { id, answer }, self.disk_delay_ms));
        true
    }
}
