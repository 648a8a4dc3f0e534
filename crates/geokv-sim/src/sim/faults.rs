//! The world's side of the faults of a schedule: partitions, crashes and wipes, pauses, clock
//! faults, slow disks, lossy links, and nodes leaving and joining again.

use geokv_core::NodeId;

use super::{Fault, World};

impl World {
    fn block(&mut self, a: NodeId, b: NodeId, on: bool) {
        let count = self.blocked.entry((a, b)).or_default();
        if on {
            *count += 1;
        } else {
            *count -= 1;
            if *count == 0 {
                self.blocked.remove(&(a, b));
            }
        }
    }

    pub(super) fn fault(&mut self, i: usize, on: bool) {
        let layout = self.cfg.layout.clone();
        let sign = if on { 1 } else { -1 };
        match self.schedule.steps[i].fault.clone() {
            Fault::SplitRegion { side } => {
                let r = layout.region_of(side[0]);
                for b in (0..layout.nodes_per_region).map(|j| layout.node(r, j)).filter(|b| !side.contains(b))
                {
                    for &a in &side {
                        self.block(a, b, on);
                        self.block(b, a, on);
                    }
                }
            }
            Fault::OneWay { from, to } => self.block(from, to, on),
            Fault::CutRegion { region } => {
                let nodes: Vec<NodeId> = layout.nodes().collect();
                for &a in nodes.iter().filter(|&&a| layout.region_of(a) == region) {
                    for &b in nodes.iter().filter(|&&b| layout.region_of(b) != region) {
                        self.block(a, b, on);
                        self.block(b, a, on);
                    }
                }
            }
            Fault::OneWayRegions { from, to } => {
                for a in (0..layout.nodes_per_region).map(|j| layout.node(from, j)) {
                    for b in (0..layout.nodes_per_region).map(|j| layout.node(to, j)) {
                        self.block(a, b, on);
                    }
                }
            }
            Fault::Crash { node } => self.fault_crash(node, sign),
            Fault::Wipe { node } => {
                if on {
                    self.nodes.get_mut(&node).expect("node").wipe();
                }
                self.fault_crash(node, sign);
            }
            Fault::ClockJump { node, ms } => {
                self.nodes.get_mut(&node).expect("node").clock_offset_ms += sign * ms
            }
            Fault::Pause { node } => {
                let count = self.paused.entry(node).or_default();
                *count = (*count as i64 + sign) as u32;
                let paused = *count > 0;
                self.nodes.get_mut(&node).expect("node").paused = paused;
                if !paused {
                    for ev in self.deferred.remove(&node).unwrap_or_default() {
                        self.at(self.now, ev);
                    }
                }
            }
            Fault::ClockOffset { node, ms } => {
                self.nodes.get_mut(&node).expect("node").clock_offset_ms += sign * ms
            }
            Fault::ClockDrift { node, ppm } => {
                self.nodes.get_mut(&node).expect("node").clock_drift_ppm += sign * ppm
            }
            Fault::SlowDisk { node, ms } => {
                let n = self.nodes.get_mut(&node).expect("node");
                n.disk_delay_ms = (n.disk_delay_ms as i64 + sign * ms as i64) as u64;
            }
            Fault::Move { node } => {
                if on {
                    self.nodes.get_mut(&node).expect("node").ask_leave();
                } else {
                    self.rejoin_due.insert(node);
                }
            }
            Fault::Residency { node, regions } => {
                if on {
                    self.apply_residency(node, &regions);
                }
            }
            Fault::Lossy { drop, dup, jitter_ms } => {
                if on {
                    self.lossy.push((drop, dup, jitter_ms));
                } else if let Some(pos) = self.lossy.iter().position(|l| *l == (drop, dup, jitter_ms)) {
                    self.lossy.remove(pos);
                }
            }
        }
    }

    /// An operator at `node` applies a policy under which the moving keys may be held only in
    /// `regions`, as the server's `ApplyResidency` does: the version is one above every
    /// version the nodes it reaches hold, and those nodes adopt it (each enforces it on its
    /// next residency step). A node it cannot reach (down, paused, cut off either way) learns
    /// it from its peers later. Nothing happens if the operator's node is down.
    fn apply_residency(&mut self, node: NodeId, regions: &[usize]) {
        let reachable = |w: &World, b: NodeId| {
            let n = &w.nodes[&b];
            n.up && !n.paused
                && (b == node || !(w.blocked.contains_key(&(node, b)) || w.blocked.contains_key(&(b, node))))
        };
        if !reachable(self, node) {
            return;
        }
        let reached: Vec<NodeId> = self.nodes.keys().copied().filter(|&b| reachable(self, b)).collect();
        let version = geokv_protocol::residency::change::next_version(
            reached.iter().map(|b| self.nodes[b].policy_version().0),
        );
        let text = self.nodes[&node].residency.text(regions);
        for b in reached {
            let _ = self.nodes.get_mut(&b).expect("node").adopt(version, text.clone());
        }
        self.policy_changes += 1;
    }

    /// A crash (`sign` 1) or its end (-1): the node stops at the first, restarts at the last.
    fn fault_crash(&mut self, node: NodeId, sign: i64) {
        let count = self.crashed.entry(node).or_default();
        *count = (*count as i64 + sign) as u32;
        match (sign > 0, *count) {
            (true, 1) => {
                self.nodes.get_mut(&node).expect("node").crash();
                self.deferred.remove(&node);
            }
            // A node that left stays away until it joins again.
            (false, 0) if !self.gone.contains(&node) => self.with_node(node, |n, ctx| n.start(ctx)),
            _ => {}
        }
    }

    /// Moves the operator and the machines take part in: a node that has left goes away; one
    /// due back comes back on an empty disk and joins; once it has joined, every node of its
    /// region is asked to clean up.
    pub(super) fn moves_tick(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let n = &self.nodes[&id];
            if n.up
                && !self.gone.contains(&id)
                && n.view.me().status == geokv_cluster::Status::Left
                && n.moves_done()
            {
                self.gone.insert(id);
                self.nodes.get_mut(&id).expect("node").crash();
                self.deferred.remove(&id);
            }
            if self.gone.contains(&id)
                && self.rejoin_due.contains(&id)
                && self.crashed.get(&id).is_none_or(|&c| c == 0)
            {
                self.gone.remove(&id);
                self.rejoin_due.remove(&id);
                self.rejoined.insert(id);
                let now = self.now;
                self.with_node(id, |n, ctx| {
                    n.rejoin(now);
                    n.start(ctx)
                });
            }
            let n = &self.nodes[&id];
            if self.rejoined.contains(&id)
                && n.up
                && n.view.me().status == geokv_cluster::Status::Normal
                && n.moves_done()
            {
                self.rejoined.remove(&id);
                self.rejoins += 1;
                let region = self.cfg.layout.region_of(id);
                for peer in (0..self.cfg.layout.nodes_per_region).map(|i| self.cfg.layout.node(region, i)) {
                    self.nodes.get_mut(&peer).expect("node").ask_cleanup();
                }
            }
        }
    }
}
