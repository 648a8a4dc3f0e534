//! Fault schedules: drawn from a seed, printed so a failing run can be replayed exactly.

use std::fmt;

use geokv_core::NodeId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::Layout;

/// One fault; it holds from a step's start until its end, then is undone.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The nodes of `side` and the rest of their region cannot reach each other.
    SplitRegion { side: Vec<NodeId> },
    /// `from` cannot send to `to` (same region); `to` still reaches `from`.
    OneWay { from: NodeId, to: NodeId },
    /// A region is cut off from every other region, both ways.
    CutRegion { region: usize },
    /// Region `from` cannot send to region `to`.
    OneWayRegions { from: usize, to: usize },
    /// The node is killed (volatile state lost, disk kept) and restarted at the end.
    Crash { node: NodeId },
    /// The node is killed, its disk wiped, and it restarts empty at the end (a replaced
    /// machine): it writes under a new actor, and recovers (`geokv_protocol::recovery`): it
    /// votes in no quorum read until it has completed an anti-entropy exchange with every
    /// peer of its region. Drawn in one schedule in four, on top of the other faults;
    /// schedules with a wipe write at QUORUM (a write at ONE lives on one disk until it
    /// spreads).
    Wipe { node: NodeId },
    /// The node's clock jumps `ms` ahead, past the drift bound: its peers refuse its stamps
    /// (its writes fail, nothing it stamps is stored elsewhere) until the clocks agree again.
    ClockJump { node: NodeId, ms: i64 },
    /// The node stops (SIGSTOP): it handles nothing until the end, then everything queued.
    Pause { node: NodeId },
    /// The node's physical clock runs `ms` ahead (negative: behind).
    ClockOffset { node: NodeId, ms: i64 },
    /// The node's physical clock gains `ppm` parts per million (negative: loses).
    ClockDrift { node: NodeId, ppm: i64 },
    /// Every durable write on the node takes `ms` longer.
    SlowDisk { node: NodeId, ms: u64 },
    /// The node leaves its region (`geokv_protocol::moves`: leaving, its keys streamed to the
    /// nodes taking them over, left) and goes away; at the step's end (or once it has left)
    /// it comes back on an empty disk and joins again (joining, streaming in, normal), after
    /// which every node of the region cleans up. Drawn in one schedule in three, from a
    /// generator of its own, never on the node a wipe hits.
    Move { node: NodeId },
    /// At the step's start, an operator at `node` applies a residency policy under which the
    /// moving keys (`residency::MOVING`) may be held only in `regions`: narrowed, widened or
    /// moved (`geokv_protocol::residency::change`; the nodes the apply reaches adopt it, the
    /// others learn it from their peers, and each enforces it). Nothing happens at the end.
    /// Drawn in one schedule in two, once or twice, from a generator of its own.
    Residency { node: NodeId, regions: Vec<usize> },
    /// Messages between nodes are dropped or duplicated with these probabilities and delayed
    /// by up to `jitter_ms` more (which reorders them).
    Lossy { drop: f64, dup: f64, jitter_ms: u64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
}

/// The faults of one run, in start order.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub seed: u64,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Between 2 and 6 faults within the first `window_ms`, each healed before the window ends.
    pub fn random(seed: u64, layout: &Layout, window_ms: u64) -> Schedule {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_fa17);
        let count = rng.gen_range(2..=6);
        let mut steps: Vec<Step> = (0..count)
            .map(|_| {
                let start_ms = rng.gen_range(0..window_ms * 3 / 4);
                let len = rng.gen_range(200..=window_ms / 2);
                let end_ms = (start_ms + len).min(window_ms);
                Step { start_ms, end_ms, fault: random_fault(&mut rng, layout) }
            })
            .collect();
        // A wipe is drawn from a generator of its own, so the other faults of a seed stay
        // what they were before wipes were drawn.
        let mut wipes = SmallRng::seed_from_u64(seed ^ 0x3196_e0a5);
        if wipes.gen_ratio(1, 4) {
            let node =
                layout.node(wipes.gen_range(0..layout.regions), wipes.gen_range(0..layout.nodes_per_region));
            let start_ms = wipes.gen_range(0..window_ms * 3 / 4);
            let end_ms = (start_ms + wipes.gen_range(200..=window_ms / 2)).min(window_ms);
            steps.push(Step { start_ms, end_ms, fault: Fault::Wipe { node } });
        }
        let wiped = steps.iter().find_map(|s| match s.fault {
            Fault::Wipe { node } => Some(node),
            _ => None,
        });
        let mut moves = SmallRng::seed_from_u64(seed ^ 0x6d0e_5eed);
        if moves.gen_ratio(1, 3) {
            let node =
                layout.node(moves.gen_range(0..layout.regions), moves.gen_range(0..layout.nodes_per_region));
            let start_ms = moves.gen_range(0..window_ms / 2);
            let end_ms = (start_ms + moves.gen_range(1_000..=window_ms / 2)).min(window_ms);
            if Some(node) != wiped {
                steps.push(Step { start_ms, end_ms, fault: Fault::Move { node } });
            }
        }
        let mut changes = SmallRng::seed_from_u64(seed ^ 0x0e51_de9c);
        if changes.gen_ratio(1, 2) {
            for _ in 0..changes.gen_range(1..=2) {
                let node = layout.node(
                    changes.gen_range(0..layout.regions),
                    changes.gen_range(0..layout.nodes_per_region),
                );
                // A non-empty set of regions, drawn as a bit mask.
                let mask = changes.gen_range(1..(1u32 << layout.regions));
                let regions = (0..layout.regions).filter(|r| mask & (1 << r) != 0).collect();
                let start_ms = changes.gen_range(0..window_ms * 3 / 4);
                steps.push(Step { start_ms, end_ms: start_ms, fault: Fault::Residency { node, regions } });
            }
        }
        steps.sort_by_key(|s| s.start_ms);
        Schedule { seed, steps }
    }
}

fn random_fault(rng: &mut SmallRng, layout: &Layout) -> Fault {
    let node = |rng: &mut SmallRng| {
        let r = rng.gen_range(0..layout.regions);
        layout.node(r, rng.gen_range(0..layout.nodes_per_region))
    };
    // (`Wipe` is drawn apart: see `Schedule::random`.)
    match rng.gen_range(0..11) {
        0 => {
            let r = rng.gen_range(0..layout.regions);
            let size = rng.gen_range(1..=layout.nodes_per_region / 2);
            let mut side: Vec<NodeId> = (0..layout.nodes_per_region).map(|i| layout.node(r, i)).collect();
            while side.len() > size {
                side.remove(rng.gen_range(0..side.len()));
            }
            Fault::SplitRegion { side }
        }
        1 => {
            let r = rng.gen_range(0..layout.regions);
            let a = rng.gen_range(0..layout.nodes_per_region);
            let b = (a + rng.gen_range(1..layout.nodes_per_region)) % layout.nodes_per_region;
            Fault::OneWay { from: layout.node(r, a), to: layout.node(r, b) }
        }
        2 => Fault::CutRegion { region: rng.gen_range(0..layout.regions) },
        3 => {
            let a = rng.gen_range(0..layout.regions);
            let b = (a + rng.gen_range(1..layout.regions)) % layout.regions;
            Fault::OneWayRegions { from: a, to: b }
        }
        4 => Fault::Crash { node: node(rng) },
        5 => Fault::Pause { node: node(rng) },
        6 => Fault::ClockOffset { node: node(rng), ms: rng.gen_range(-400..=400) },
        7 => Fault::ClockDrift { node: node(rng), ppm: rng.gen_range(-5_000..=5_000) },
        8 => Fault::SlowDisk { node: node(rng), ms: rng.gen_range(5..=300) },
        10 => Fault::ClockJump { node: node(rng), ms: rng.gen_range(1_000..=3_000) },
        _ => Fault::Lossy {
            drop: rng.gen_range(0.0..0.3),
            dup: rng.gen_range(0.0..0.3),
            jitter_ms: rng.gen_range(0..=50),
        },
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed {} ({} faults)", self.seed, self.steps.len())?;
        for s in &self.steps {
            write!(f, "\n  {:>6}..{:<6} ms  {:?}", s.start_ms, s.end_ms, s.fault)?;
        }
        Ok(())
    }
}
