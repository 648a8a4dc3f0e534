//! Thousands of simulated fault schedules, each checked; the deliberate bugs must be caught.
//!
//! - `GEOKV_SIM_SEEDS=N`: schedules per shard (default 500, four shards: 2,000 in all).
//! - `GEOKV_SIM_SEED=S`: replay one seed, printing its schedule and report.
//! - `GEOKV_SOAK=MINUTES`: each shard keeps drawing new seeds for that long.

use std::time::{Duration, Instant};

use geokv_sim::sim::{run, run_schedule, Bug, Fault, Schedule, SimConfig, SimRun, Step};

const SHARDS: u64 = 4;

/// Seeds that once found a bug, kept as regression tests (see docs/testing.md).
const REGRESSIONS: &[u64] = &[
    FORWARD_RETRY_SEED,
    CLEANUP_SEED,
    28683,
    33878,
    RETRY_PROMISE_SEED,
    STAND_IN_HINT_SEED,
    UNKNOWN_REMOVE_SEED,
    RECOVERING_QUIET_SEED,
    EXPIRED_MARKER_SEED,
    UNKNOWN_SWAP_SEED,
    STALE_RING_EXCHANGE_SEED,
    GHOST_DELETE_SEED,
];

/// Found by the 30-minute soak the day residency changes ran (a simulator driver bug): after a
/// node left, a simulated anti-entropy exchange decided which keys a peer of the same region
/// holds from the topology's ring instead of the node's view, so a node restarted on a wiped
/// disk "recovered" from a peer without the keys the leave had given it, and its next append
/// overwrote an acknowledged one. The server always used the view; the decision is now
/// `geokv_protocol::anti_entropy::peer_replicates`, for both.
const STALE_RING_EXCHANGE_SEED: u64 = 2977;

/// Found by the same soak (a checker bug): a delete forwarded to a home replica whose clock
/// had jumped past the drift bound lost its answer and was retried on another; both applied,
/// and the first one's stamp, from the jumped clock, ordered after a put acknowledged later,
/// so a scan rightly left the key out. Stamps order writes by time within the drift bound
/// only (docs/value-model.md): with such a clock in the schedule, the scan rule lets any delete
/// that may have applied hide a key.
const GHOST_DELETE_SEED: u64 = 4096;

/// Found by the 30-minute soak the day nodes first left and rejoined (seeds 8949, 28683 and
/// 33878; a store bug): a node whose clock had jumped ahead acknowledged a write at ONE that
/// every peer refused (stamped beyond the drift bound, so not hinted): its copy was the only
/// one. A node then left and joined again, the key's ring changed, and the cleanup after it
/// dropped that copy as foreign. A cleanup now hands each copy to the key's home replicas and
/// drops it only once all of them took it (`geokv_protocol::moves::hand_over_to`). Since
/// schedules were redrawn, `jump_during_a_rejoin` sets the same trap on purpose.
const CLEANUP_SEED: u64 = 8949;

/// Found the same day (a checker bug): the only write of a register was a compare-and-swap
/// whose outcome was unknown (its connection broke), and the key ended absent, which the
/// register rule took for a lost write. A write of unknown outcome may not have applied.
const UNKNOWN_SWAP_SEED: u64 = 1529;

/// Found when the sweeper first ran in the simulation (a checker bug, not a store bug): a
/// node whose clock had jumped back wrote a TTL key with an HLC stamp ahead of its wall clock,
/// so the key's deadline, and the expiry marker stamped with it, came before the write's
/// stamp. The marker reads as absent, as it should; the checker no longer takes its older
/// stamp for a lost write.
const EXPIRED_MARKER_SEED: u64 = 1177;

/// Found when wipes were first drawn: a wiped node restarted while a split kept it from two
/// of its peers, and the run ended (the cluster looked quiet) before it had recovered, with
/// its replicas apart. A recovering node has work left: the simulator waits for it.
const RECOVERING_QUIET_SEED: u64 = 753;

/// Found by the 30-minute soak: an acknowledged set add was gone at the end, removed by a
/// remove whose outcome was unknown and that completed (for its client) before the add began
/// but ran on its coordinator after a pause. The checker's rule was too strict: a remove whose
/// outcome is unknown may take effect at any time after it began.
const UNKNOWN_REMOVE_SEED: u64 = 5992;

/// A node applying a state from another region was itself the stand-in for a home replica
/// that was down and kept no hint for it (see `geokv_protocol::Replicas::fan_out`).
const STAND_IN_HINT_SEED: u64 = 200;

/// A set add forwarded to a home replica lost its answer, was retried on the next one, whose
/// first read failed: the client was told nothing was written, though the first attempt had
/// written it (see `geokv_protocol::Forwarder`). Found when clients ran only Put, Increment
/// and SetAdd; the protocol's unit test
/// `a_retry_that_stores_nothing_does_not_promise_the_first_attempt_stored_nothing` pins it.
const RETRY_PROMISE_SEED: u64 = 204;

/// Exposes the forward-retry bug (see `seed_exposes_the_forward_retry_bug_and_passes_with_the_fix`;
/// seed 6 until the simulator ran handoff, anti-entropy and batches through the protocol crate,
/// then seed 1 until clients scanned and sent batches, then 13 until nodes ran cross-region
/// anti-entropy, then 6 until nodes joined and left, then 1 until clients wrote keys only one
/// region may hold, then 6 until residency policies changed, then 4 until one replica per key
/// shipped it to other regions (with the others' takeover checks), then 16 until a read asked
/// R replicas instead of every healthy one; each change redrew every schedule).
const FORWARD_RETRY_SEED: u64 = 46;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn explain(run: &SimRun) -> String {
    format!(
        "{}\n{}\nreplay: GEOKV_SIM_SEED={} cargo test -p geokv-sim --test simulation replay -- --nocapture",
        run.schedule, run.report, run.schedule.seed
    )
}

fn check_seed(seed: u64, cfg: &SimConfig) -> SimRun {
    let r = run(seed, cfg);
    assert!(r.report.passed(), "simulated schedule failed:\n{}", explain(&r));
    r
}

fn shard(index: u64) {
    let cfg = SimConfig::default();
    let per_shard = env_u64("GEOKV_SIM_SEEDS").unwrap_or(500);
    let soak = env_u64("GEOKV_SOAK").map(|m| Duration::from_secs(m * 60));
    let started = Instant::now();
    let (mut runs, mut ops, mut unknown, mut raw, mut oversized) = (0u64, 0usize, 0usize, 0usize, 0u64);
    let (mut rejoins, mut streamed, mut cleaned) = (0u64, 0u64, 0u64);
    let (mut changes, mut erased, mut kept) = (0u64, 0u64, 0u64);
    let mut staleness = Vec::new();
    let mut seed = index;
    loop {
        let done = match soak {
            Some(limit) => started.elapsed() >= limit,
            None => runs >= per_shard,
        };
        if done {
            break;
        }
        let r = check_seed(seed, &cfg);
        runs += 1;
        ops += r.history.len();
        unknown += r.report.unknown;
        raw += r.report.raw_checked;
        oversized += r.oversized_merges;
        rejoins += r.rejoins;
        streamed += r.streamed;
        cleaned += r.cleaned;
        changes += r.policy_changes;
        erased += r.erased;
        kept += r.kept_rounds;
        staleness.extend(r.report.staleness_quantile(0.99));
        seed += SHARDS;
    }
    staleness.sort_unstable();
    let p = |q: f64| staleness.get(((staleness.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(0);
    println!(
        "shard {index}: {runs} schedules passed in {:.1} s: {ops} operations ({unknown} unknown), {raw} read-after-write checks, {oversized} oversized merges stored, {rejoins} nodes left and joined again ({streamed} states streamed, {cleaned} copies cleaned up), {changes} residency changes ({erased} keys erased, {kept} enforcement rounds kept keys back); per-run staleness p99: median {} ms, worst {} ms",
        started.elapsed().as_secs_f64(),
        p(0.5),
        p(1.0)
    );
}

#[test]
fn simulated_schedules_shard_0() {
    shard(0);
}

/// Schedules whose clients also change TTLs (Expire and Persist; `SimConfig::ttl_changes`):
/// a TTL key whose deadline an Expire moved still ends absent, a Persist leaves a counter's
/// count, and an Expire of an absent key writes nothing and answers no version.
#[test]
fn schedules_with_ttl_changes() {
    let cfg = SimConfig { ttl_changes: true, ..SimConfig::default() };
    let seeds = env_u64("GEOKV_SIM_SEEDS").unwrap_or(500).min(200);
    let expires = (0..seeds)
        .map(|seed| check_seed(seed, &cfg))
        .map(|r| {
            r.history.iter().filter(|e| matches!(e.action, geokv_sim::history::Action::Expire { .. })).count()
        })
        .sum::<usize>();
    assert!(expires > seeds as usize, "{expires} Expires over {seeds} schedules");
    println!("{seeds} schedules with TTL changes passed ({expires} Expires)");
}

/// Schedules whose clients append with request ids and send an append whose outcome is
/// unknown again, to another node (`SimConfig::append_ids`): each chunk ends in its log at most
/// once however many of its attempts were applied, and an acknowledged retry keeps its chunk
/// as its first attempt would have. Without the ids (a planted bug) the retries append twice.
#[test]
fn schedules_with_idempotent_appends() {
    use geokv_sim::history::Action;
    let cfg = SimConfig { append_ids: true, ..SimConfig::default() };
    let seeds = env_u64("GEOKV_SIM_SEEDS").unwrap_or(500).min(200);
    let mut retried = 0;
    for seed in 0..seeds {
        let r = check_seed(seed, &cfg);
        let mut attempts = std::collections::BTreeMap::new();
        for e in &r.history {
            if let Action::AppendOnce { id, .. } = e.action {
                *attempts.entry(id).or_insert(0) += 1;
            }
        }
        retried += attempts.values().filter(|&&n| n > 1).count();
    }
    assert!(retried > 0, "no append was sent again over {seeds} schedules");
    println!("{seeds} schedules with idempotent appends passed ({retried} appends sent again)");
    let buggy = SimConfig { bug: Some(Bug::AppendIdDropped), ..cfg };
    let caught = (0..200)
        .find(|&seed| run(seed, &buggy).report.violations.iter().any(|v| v.contains("applied twice")));
    assert!(caught.is_some(), "appends retried without their ids went unnoticed");
    println!("AppendIdDropped caught by seed {}", caught.unwrap_or_default());
}

#[test]
fn simulated_schedules_shard_1() {
    shard(1);
}

#[test]
fn simulated_schedules_shard_2() {
    shard(2);
}

#[test]
fn simulated_schedules_shard_3() {
    shard(3);
}

#[test]
fn regression_seeds_pass() {
    for &seed in REGRESSIONS {
        check_seed(seed, &SimConfig::default());
    }
}

#[test]
fn replay() {
    let Some(seed) = env_u64("GEOKV_SIM_SEED") else { return };
    let r = run(seed, &SimConfig::default());
    println!("{}", explain(&r));
    println!(
        "{} simulated ms, {} messages, {} dropped, {} oversized merges stored, {} rejoins ({} states streamed, {} copies cleaned up), {} residency changes ({} keys erased, {} enforcement rounds kept keys back)",
        r.sim_ms, r.messages, r.dropped, r.oversized_merges, r.rejoins, r.streamed, r.cleaned, r.policy_changes, r.erased, r.kept_rounds
    );
    assert!(r.report.passed());
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::default();
    let (a, b) = (run(42, &cfg), run(42, &cfg));
    assert_eq!(a.schedule, b.schedule);
    assert_eq!(a.history, b.history);
    assert_eq!((a.messages, a.dropped, a.sim_ms), (b.messages, b.dropped, b.sim_ms));
    assert!(!a.history.is_empty());
}

/// Each deliberate bug is caught within a few seeds, each by the rule it breaks: the checks
/// can fail. (A fragment of the violation each rule reports.)
#[test]
fn the_checker_catches_deliberate_bugs() {
    let planted = [
        (Bug::AckWithoutQuorum, ""),
        (Bug::SkipRemoteDeltas, ""),
        (Bug::NoRepair, ""),
        (Bug::RetryAnyForward, ""),
        // Appends keep what they read; removes remove what they saw.
        (Bug::SkipReadFirst, "acknowledged append of"),
        (Bug::RemoveWithoutContext, "after an acknowledged QUORUM remove"),
        // A failed swap writes nothing.
        (Bug::SwapIgnoresCondition, "was never written"),
        // A wrong-type write is refused.
        (Bug::WrongTypeOverwrites, "on a counter"),
        // Keys expire everywhere.
        (Bug::TtlDropped, "written only with TTLs"),
        // A QUORUM scan answers each key as a QUORUM read would.
        (Bug::ScanLocalOnly, "QUORUM scan in"),
        // A batch runs a key's items in the client's order.
        (Bug::BatchReversed, "an earlier item of the same batch"),
        // A tombstone outlives every outage (the grace period), so a deleted value cannot
        // come back.
        (Bug::PurgeEarly, "is older than acknowledged write version"),
        // Two states within the size limit may merge to more: stored, or replicas stay apart.
        (Bug::OversizedMergeDropped, ""),
        // A key stays in the regions its residency rule allows.
        (Bug::ShipEverywhere, "which its residency rule does not allow"),
        // A residency change loses no acknowledged write: keys are handed over before they are
        // erased (a lost write breaks whichever final-state rule its key's type has).
        (Bug::EraseWithoutHandover, ""),
        // Every node ends on the same residency policy.
        (Bug::NoPolicySync, "residency policies did not converge"),
    ];
    for (bug, rule) in planted {
        let cfg = SimConfig { bug: Some(bug), ..SimConfig::default() };
        let seeds = 40;
        let caught =
            (0..seeds).find(|&seed| run(seed, &cfg).report.violations.iter().any(|v| v.contains(rule)));
        assert!(caught.is_some(), "{bug:?} went unnoticed by the rule {rule:?} over {seeds} seeds");
        println!("{bug:?} caught by seed {} ({rule:?})", caught.unwrap_or_default());
    }
}

/// The bug the fault suites found: a node forwarding an increment to a home replica retried it
/// on the next home replica when the call's connection failed, though the first may have run
/// it, so it was counted twice. Its seed shows the old behaviour breaking the counter bounds,
/// and passes with the fix.
#[test]
fn seed_exposes_the_forward_retry_bug_and_passes_with_the_fix() {
    let buggy = SimConfig { bug: Some(Bug::RetryAnyForward), ..SimConfig::default() };
    let r = run(FORWARD_RETRY_SEED, &buggy);
    assert!(r.report.violations.iter().any(|v| v.contains("counter ends at")), "{}", explain(&r));
    check_seed(FORWARD_RETRY_SEED, &SimConfig::default());
}

/// The schedule of the cleanup hole (`CLEANUP_SEED`), drawn on purpose: node C of region 0
/// leaves and comes back (200..2,500 ms) while node A's clock has jumped 3 s past the drift
/// bound (1,000..7,000 ms). A's writes at ONE are refused by every peer (and not hinted), so A's copy
/// is the only one; C, joining again, skips A's states stamped beyond the bound when it
/// streams them in; and the cleanup after C's join finds A's copies foreign.
fn jump_during_a_rejoin(seed: u64) -> Schedule {
    let layout = SimConfig::default().layout;
    let (a, c) = (layout.node(0, 3), layout.node(0, 2));
    let step = |start_ms, end_ms, fault| Step { start_ms, end_ms, fault };
    Schedule {
        seed,
        steps: vec![
            step(200, 2_500, Fault::Move { node: c }),
            step(1_000, 7_000, Fault::ClockJump { node: a, ms: 3_000 }),
        ],
    }
}

#[test]
fn a_cleanup_drops_no_copy_a_home_replica_did_not_take() {
    let buggy = SimConfig { bug: Some(Bug::CleanupDropsAtOnce), ..SimConfig::default() };
    let caught = (0..20).find(|&seed| {
        let r = run_schedule(jump_during_a_rejoin(seed), &buggy);
        r.report.violations.iter().any(|v| v.contains("older than acknowledged"))
    });
    let Some(seed) = caught else { panic!("a cleanup dropping copies at once went unnoticed over 20 seeds") };
    println!("CleanupDropsAtOnce caught by the rejoin schedule with seed {seed}");
    for seed in 0..=seed {
        let r = run_schedule(jump_during_a_rejoin(seed), &SimConfig::default());
        assert!(r.report.passed(), "{}", explain(&r));
    }
    check_seed(CLEANUP_SEED, &SimConfig::default());
}

/// The hole soaking with wipes found (seeds 6292 and 27394 before recovery existed): writes
/// acknowledged by nodes A and B while C missed them (A and B cannot send to C); then A is
/// wiped and B crashes before A restarts. Had A voted in reads at once, a QUORUM read would
/// merge A's empty store with C's and answer an older version than acknowledged. A recovering
/// node refuses its vote until it has exchanged with every peer (B included), so those reads
/// fail instead, and succeed once B is back. The region is cut off from the others meanwhile,
/// so A cannot get its keys back from them either.
fn wipe_while_a_peer_is_down(seed: u64) -> Schedule {
    let layout = SimConfig::default().layout;
    let (a, b, c) = (layout.node(0, 0), layout.node(0, 1), layout.node(0, 2));
    let step = |start_ms, end_ms, fault| Step { start_ms, end_ms, fault };
    Schedule {
        seed,
        steps: vec![
            step(0, 1_400, Fault::OneWay { from: a, to: c }),
            step(0, 1_400, Fault::OneWay { from: b, to: c }),
            step(1_000, 1_600, Fault::Wipe { node: a }),
            step(1_400, 5_000, Fault::Crash { node: b }),
            // Nor can A get the keys back from the other regions (cross-region anti-entropy).
            step(0, 5_000, Fault::CutRegion { region: 0 }),
        ],
    }
}

#[test]
fn a_wiped_node_votes_in_no_read_until_it_has_recovered() {
    let buggy = SimConfig { bug: Some(Bug::RecoveringVotes), ..SimConfig::default() };
    let caught = (0..20).find(|&seed| {
        run_schedule(wipe_while_a_peer_is_down(seed), &buggy)
            .report
            .violations
            .iter()
            .any(|v| v.contains("older than"))
    });
    let Some(seed) = caught else { panic!("a wiped node voting at once went unnoticed over 20 seeds") };
    println!("RecoveringVotes caught by the wipe schedule with seed {seed}");
    for seed in 0..20 {
        let r = run_schedule(wipe_while_a_peer_is_down(seed), &SimConfig::default());
        assert!(r.report.passed(), "{}", explain(&r));
    }
}
