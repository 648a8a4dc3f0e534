//! The takeover tail of a simulated node (`geokv_protocol::shipping`), as on the server: once
//! a page of shipped changes is settled, each key's shipper is asked whether the destination
//! acknowledged the state this node holds (`ShippedAsk`, or this node's own record when it is
//! the shipper); what is not covered, or not answered in time, is shipped from here.

use std::collections::BTreeMap;

use geokv_core::NodeId;
use geokv_protocol::shipping::{self, Tail};

use super::node::{Ctx, Key, Msg, Node, REQUEST_TIMEOUT_MS};
use super::xregion::Page;
use super::Addr;

/// A takeover page waiting for its shippers' answers.
pub(crate) struct Asking {
    page: Page,
    covered: Vec<bool>,
    /// Asks under way: id -> the indices of the page's states asked about.
    asks: BTreeMap<u64, Vec<usize>>,
    since: u64,
}

impl Node {
    /// The takeover tail's next step toward `region`.
    pub(crate) fn take_over(&mut self, region: usize, ctx: &mut Ctx) {
        if let Some(a) = self.asking.get(&region) {
            if ctx.now.saturating_sub(a.since) < REQUEST_TIMEOUT_MS {
                return;
            }
            // No answer in time: whatever is not known to be covered is shipped from here.
            let a = self.asking.remove(&region).expect("present");
            return self.finish_takeover(region, a, ctx);
        }
        let Some(page) = self.ship_page(region, Tail::Takeover, ctx) else { return };
        let now = ctx.now;
        let shippers = page.states.iter().enumerate().map(|(i, (k, _, _))| {
            let who: Option<NodeId> = shipping::shipper(&self.home(k), |n| self.healthy(n, now));
            (i, who)
        });
        let groups = shipping::by_shipper(shippers);
        let mut a =
            Asking { covered: vec![false; page.states.len()], page, asks: BTreeMap::new(), since: now };
        for (who, idx) in groups {
            match who {
                Some(n) if n == self.id => {
                    let acked = self.acked.get(&region);
                    for i in idx {
                        let (key, _, d) = &a.page.states[i];
                        a.covered[i] = shipping::covered(acked.and_then(|x| x.get(key)), d);
                    }
                }
                Some(n) => {
                    let id = self.next();
                    let items = idx
                        .iter()
                        .map(|&i| (a.page.states[i].0.clone(), a.page.states[i].2.clone()))
                        .collect();
                    ctx.send(Addr::Node(n), Msg::ShippedAsk { id, region, items });
                    a.asks.insert(id, idx);
                }
                // No shipper is up: nobody to ask.
                None => {}
            }
        }
        if a.asks.is_empty() {
            self.finish_takeover(region, a, ctx);
        } else {
            self.asking.insert(region, a);
        }
    }

    /// Ships the page's states that are not covered (the page's position moves the cursor
    /// past the covered ones too, once acknowledged).
    fn finish_takeover(&mut self, region: usize, a: Asking, ctx: &mut Ctx) {
        let Asking { mut page, covered, .. } = a;
        page.states = page.states.into_iter().zip(covered).filter(|(_, c)| !c).map(|(s, _)| s).collect();
        self.send_page(region, Tail::Takeover, page, ctx);
    }

    /// Another replica's takeover tail asks whether `region` acknowledged these states from
    /// this node.
    pub(crate) fn on_shipped_ask(
        &self,
        from: Addr,
        id: u64,
        region: usize,
        items: Vec<(Key, Vec<u8>)>,
        ctx: &mut Ctx,
    ) {
        let covered = match self.acked.get(&region) {
            Some(acked) => acked.answer(items.iter().map(|(k, d)| (k.as_slice(), d))),
            None => vec![false; items.len()],
        };
        ctx.send(from, Msg::ShippedIs { id, covered });
    }

    pub(crate) fn on_shipped_is(&mut self, id: u64, covered: Vec<bool>, ctx: &mut Ctx) {
        let Some(region) = self.asking.iter().find(|(_, a)| a.asks.contains_key(&id)).map(|(r, _)| *r) else {
            return;
        };
        let a = self.asking.get_mut(&region).expect("found");
        let idx = a.asks.remove(&id).expect("found");
        if covered.len() == idx.len() {
            for (i, c) in idx.into_iter().zip(covered) {
                a.covered[i] = c;
            }
        }
        if a.asks.is_empty() {
            let a = self.asking.remove(&region).expect("found");
            self.finish_takeover(region, a, ctx);
        }
    }
}
