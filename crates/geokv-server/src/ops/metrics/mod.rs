//! A node's Prometheus metrics: one registry per node (several nodes may share a process, as
//! in `geokv demo`), served as text on the metrics port with a status page (see [`http`]).
//!
//! Event metrics (request latencies and codes, replication delivery times, commit times, hot
//! keys) are recorded where the event happens. Figures that already live elsewhere (lag and
//! backlog, gossip states, ring ownership, storage sizes, anti-entropy and residency counters)
//! are read when Prometheus scrapes ([`collect`]). docs/operations.md lists every metric.

mod charts;
mod collect;
pub mod hot;
pub mod http;
mod page;

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub use hot::HotKeys;
pub use page::human_bytes;

/// Keys counted by the hot-key detector, keys exported, and its window.
const HOT_CAPACITY: usize = 64;
const HOT_TOP: usize = 10;
const HOT_WINDOW_MS: u64 = 10_000;
/// Longest key label exported (characters).
const HOT_LABEL_CHARS: usize = 80;

/// Request latency buckets: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Replication delivery buckets: 1 ms to 5 min (a cut link delivers its backlog late).
const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    started: std::time::Instant,
    // Recorded at the event.
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub delivery_seconds: HistogramVec,
    pub last_delivery_seconds: GaugeVec,
    pub commit_seconds: Histogram,
    /// Items of coalescable peer calls, by rpc (`merge`, `fetch`) and call (`single`, `many`).
    pub peer_items: IntCounterVec,
    pub peer_many_calls: IntCounterVec,
    /// Reads whose replicas were slow, so the spare home replicas were asked too.
    pub speculative_reads: IntCounter,
    pub faults_injected: IntCounterVec,
    pub faults_active: IntGauge,
    pub auth_rejected: IntCounterVec,
    hot: Mutex<HotKeys>,
    // Read at scrape time (see `collect`).
    lag_seconds: GaugeVec,
    backlog_entries: IntGaugeVec,
    backlog_bytes: IntGaugeVec,
    link_up: IntGaugeVec,
    link_delay_seconds: GaugeVec,
    repl_bytes: IntCounterVec,
    repl_deltas: IntCounterVec,
    repl_takeover: IntCounterVec,
    repl_batches_sent: IntCounterVec,
    repl_resends: IntCounterVec,
    repl_batches_received: IntCounter,
    repl_deltas_applied: IntCounter,
    drift_rejections: IntCounter,
    deltas_set_aside: IntCounter,
    hints_pending: IntGauge,
    recovering: IntGauge,
    hints_delivered: IntCounter,
    ae_rounds: IntCounter,
    ae_keys_compared: IntCounter,
    ae_keys_repaired: IntCounter,
    ae_bytes: IntCounterVec,
    read_repairs: IntCounter,
    members: IntGaugeVec,
    peer_up: IntGaugeVec,
    ownership: GaugeVec,
    storage_bytes: IntGaugeVec,
    storage_keys: IntGauge,
    storage_pending_compaction: IntGauge,
    storage_running_compactions: IntGauge,
    storage_writes: IntCounter,
    storage_corrupt_reads: IntCounter,
    storage_corrupt_replaced: IntCounter,
    storage_oversized_merges: IntCounter,
    residency_requests: IntCounterVec,
    residency_dropped: IntCounter,
    residency_version: IntGauge,
    hot_keys: GaugeVec,
    node_info: IntGaugeVec,
    uptime: Gauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

/// Registers a metric built by `make` (names and label sets are constants: a failure here is
/// a programming error caught by every test).
fn reg<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: prometheus::Result<M>) -> M {
    let m = m.expect("valid metric definition");
    registry.register(Box::new(m.clone())).expect("metric registered once");
    m
}

const PAIR: &[&str] = &["origin", "destination"];

impl Metrics {
    pub fn new(now_ms: u64) -> Metrics {
        let r = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help).buckets(buckets.to_vec())
        };
        Metrics {
            started: std::time::Instant::now(),
            requests: reg(&r, IntCounterVec::new(opts("geokv_requests_total", "Client API requests served by this node, by operation, consistency level and gRPC status code."), &["op", "consistency", "code"])),
            request_seconds: reg(&r, HistogramVec::new(hist("geokv_request_duration_seconds", "Time to answer a client API request, by operation and consistency level.", LATENCY_BUCKETS), &["op", "consistency"])),
            delivery_seconds: reg(&r, HistogramVec::new(hist("geokv_replication_delivery_seconds", "Time from a change's HLC stamp to the destination region's acknowledgement, per acknowledged batch (its oldest change).", DELIVERY_BUCKETS), PAIR)),
            last_delivery_seconds: reg(&r, GaugeVec::new(opts("geokv_replication_last_delivery_seconds", "Delivery time of the last batch the destination acknowledged (its oldest change)."), PAIR)),
            commit_seconds: reg(&r, Histogram::with_opts(hist("geokv_storage_commit_seconds", "Time to commit one WriteBatch of key changes to RocksDB, including the WAL sync when storage.sync is on.", LATENCY_BUCKETS))),
            peer_items: reg(&r, IntCounterVec::new(opts("geokv_peer_items_total", "Replica states this node sent its region's peers (rpc=merge) and states it asked them for (rpc=fetch) for requests it coordinated, by call: single (one per call) or many (coalesced into a MergeMany or FetchMany call)."), &["rpc", "call"])),
            peer_many_calls: reg(&r, IntCounterVec::new(opts("geokv_peer_many_calls_total", "MergeMany (rpc=merge) and FetchMany (rpc=fetch) calls this node made; items with call=many over this is the average number of items per call."), &["rpc"])),
            speculative_reads: reg(&r, IntCounter::with_opts(opts("geokv_speculative_reads_total", "Quorum reads (and writes' first reads) this node coordinated whose replicas had not all answered within cluster.speculative_retry_ms, so the key's other healthy home replicas were asked too."))),
            auth_rejected: reg(&r, IntCounterVec::new(opts("geokv_auth_rejected_total", "Requests and connections this node refused for their credentials, by port (client, peer; any: a failed TLS handshake) and reason (plaintext, no_credentials, unknown_ca, expired, not_yet_valid, no_identity, client_on_peer_port, wrong_node, wrong_region, unknown_node, handshake, ...)."), &["port", "reason"])),
            faults_injected: reg(&r, IntCounterVec::new(opts("geokv_faults_injected_total", "Faults injected into node-to-node traffic (test clusters only), by kind: calls refused to an unreachable peer (unreachable), calls lost before sending (request_lost) or after the peer served them (response_lost), answers to an unreachable caller replaced (inbound_response_lost), replica state sends sent twice (duplicated), gossip datagrams lost (datagram_lost)."), &["kind"])),
            faults_active: reg(&r, IntGauge::with_opts(opts("geokv_faults_active", "1 while faults injected by InjectFaults are in force on this node (test clusters only), else 0."))),
            hot: Mutex::new(HotKeys::new(HOT_CAPACITY, HOT_TOP, HOT_WINDOW_MS, now_ms)),
            lag_seconds: reg(&r, GaugeVec::new(opts("geokv_replication_lag_seconds", "Age of the oldest change not yet acknowledged by the destination region (0 when caught up)."), PAIR)),
            backlog_entries: reg(&r, IntGaugeVec::new(opts("geokv_replication_backlog_entries", "Change-log entries not yet acknowledged by the destination region."), PAIR)),
            backlog_bytes: reg(&r, IntGaugeVec::new(opts("geokv_replication_backlog_bytes", "Bytes of the keys and states of the unacknowledged shipped entries (first 100,000 entries)."), PAIR)),
            link_up: reg(&r, IntGaugeVec::new(opts("geokv_replication_link_up", "1 while this node has a replication stream to the destination region and the link is not cut."), PAIR)),
            link_delay_seconds: reg(&r, GaugeVec::new(opts("geokv_replication_link_delay_seconds", "Emulated one-way WAN delay to the destination region (0 when not emulated)."), PAIR)),
            repl_bytes: reg(&r, IntCounterVec::new(opts("geokv_replication_bytes_total", "Bytes of batches shipped, before (stage=raw) and after (stage=wire) zstd compression."), &["origin", "destination", "stage"])),
            repl_deltas: reg(&r, IntCounterVec::new(opts("geokv_replication_deltas_total", "Deltas shipped (state=sent) and acknowledged (state=acked)."), &["origin", "destination", "state"])),
            repl_takeover: reg(&r, IntCounterVec::new(opts("geokv_replication_takeover_keys_total", "Keys the takeover tail checked with their shipper: found delivered (outcome=covered) or shipped from this node (outcome=shipped)."), &["origin", "destination", "outcome"])),
            repl_batches_sent: reg(&r, IntCounterVec::new(opts("geokv_replication_batches_sent_total", "Replication batches sent."), PAIR)),
            repl_resends: reg(&r, IntCounterVec::new(opts("geokv_replication_resends_total", "Batches given up in flight and sent again from the cursor."), PAIR)),
            repl_batches_received: reg(&r, IntCounter::with_opts(opts("geokv_replication_batches_received_total", "Replication batches received from other regions."))),
            repl_deltas_applied: reg(&r, IntCounter::with_opts(opts("geokv_replication_deltas_applied_total", "Deltas from other regions applied in this region."))),
            drift_rejections: reg(&r, IntCounter::with_opts(opts("geokv_hlc_drift_rejections_total", "Replication batches refused because their HLC stamp was beyond max_clock_drift_ms ahead of this node's clock."))),
            deltas_set_aside: reg(&r, IntCounter::with_opts(opts("geokv_replication_deltas_set_aside_total", "Replicated states this region refused for good (a stamp beyond max_clock_drift_ms, a merge over the size bound) and did not apply, instead of stalling the stream."))),
            hints_pending: reg(&r, IntGauge::with_opts(opts("geokv_hints_pending", "Hinted-handoff entries kept on this node for replicas that were down."))),
            recovering: reg(&r, IntGauge::with_opts(opts("geokv_recovering", "1 while this node recovers the keys of a new data directory from its peers (it votes in no quorum read until then), else 0."))),
            hints_delivered: reg(&r, IntCounter::with_opts(opts("geokv_hints_delivered_total", "Hints handed off to their replica."))),
            ae_rounds: reg(&r, IntCounter::with_opts(opts("geokv_anti_entropy_rounds_total", "Merkle anti-entropy rounds run with a peer."))),
            ae_keys_compared: reg(&r, IntCounter::with_opts(opts("geokv_anti_entropy_keys_compared_total", "Keys summarised as shared with a peer by anti-entropy."))),
            ae_keys_repaired: reg(&r, IntCounter::with_opts(opts("geokv_anti_entropy_keys_repaired_total", "Keys anti-entropy found different between replicas and exchanged (replica divergence)."))),
            ae_bytes: reg(&r, IntCounterVec::new(opts("geokv_anti_entropy_bytes_total", "Anti-entropy traffic: key states sent and received, and digests (summary)."), &["kind"])),
            read_repairs: reg(&r, IntCounter::with_opts(opts("geokv_read_repairs_total", "Stale replicas repaired after a read."))),
            members: reg(&r, IntGaugeVec::new(opts("geokv_members", "Nodes of this region in this node's gossip view, by health (alive, suspect, dead) and ring status."), &["health", "status"])),
            peer_up: reg(&r, IntGaugeVec::new(opts("geokv_peer_up", "1 if this node's gossip view holds the peer alive, 0 if suspect or dead."), &["peer", "region"])),
            ownership: reg(&r, GaugeVec::new(opts("geokv_ring_ownership_ratio", "Share of the region's key space this node is the first home replica of (role=primary) or one of the N home replicas of (role=replica)."), &["role"])),
            storage_bytes: reg(&r, IntGaugeVec::new(opts("geokv_storage_bytes", "Storage size: every file of the data directory (kind=disk), SST files (sst), memtables (memtable), estimated live data (live)."), &["kind"])),
            storage_keys: reg(&r, IntGauge::with_opts(opts("geokv_storage_estimated_keys", "RocksDB's estimate of the keys stored on this node."))),
            storage_pending_compaction: reg(&r, IntGauge::with_opts(opts("geokv_storage_pending_compaction_bytes", "RocksDB's estimate of bytes compaction still has to rewrite."))),
            storage_running_compactions: reg(&r, IntGauge::with_opts(opts("geokv_storage_running_compactions", "Compactions running now."))),
            storage_writes: reg(&r, IntCounter::with_opts(opts("geokv_storage_key_writes_total", "Key changes committed to storage."))),
            storage_corrupt_reads: reg(&r, IntCounter::with_opts(opts("geokv_storage_corrupt_reads_total", "Stored values that failed to decode (checksum or format)."))),
            storage_corrupt_replaced: reg(&r, IntCounter::with_opts(opts("geokv_storage_corrupt_replaced_total", "Corrupt stored values replaced by a replica's state (read repair, anti-entropy, hints)."))),
            storage_oversized_merges: reg(&r, IntCounter::with_opts(opts("geokv_storage_oversized_merges_total", "Merged replica states stored although over limits.max_record_bytes (each side was within it)."))),
            residency_requests: reg(&r, IntCounterVec::new(opts("geokv_residency_requests_total", "Client requests for keys this region may not hold, forwarded to an allowed region or rejected."), &["action"])),
            residency_dropped: reg(&r, IntCounter::with_opts(opts("geokv_residency_dropped_deltas_total", "Deltas from other regions dropped because this region may not hold the key."))),
            residency_version: reg(&r, IntGauge::with_opts(opts("geokv_residency_policy_version", "Version of the residency policy this node enforces."))),
            hot_keys: reg(&r, GaugeVec::new(opts("geokv_hot_key_requests_per_second", "Approximate request rate of this node's hottest keys over the last 10 s window (top 10 of those above an even share; Space-Saving guaranteed count, a lower bound)."), &["key"])),
            node_info: reg(&r, IntGaugeVec::new(opts("geokv_node_info", "Always 1; labels name the node, its region and the build."), &["node", "region", "version"])),
            uptime: reg(&r, Gauge::with_opts(opts("geokv_uptime_seconds", "Seconds since the node started."))),
            registry: r,
        }
    }

    /// Records one client request: its latency and the gRPC status code it ended with.
    pub fn request(&self, op: &str, consistency: &str, code: tonic::Code, took: Duration) {
        self.requests.with_label_values(&[op, consistency, code_name(code)]).inc();
        self.request_seconds.with_label_values(&[op, consistency]).observe(took.as_secs_f64());
    }

    /// Counts a request for `key` for hot-key detection.
    pub fn touch(&self, key: &[u8], now_ms: u64) {
        self.hot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).record(key, now_ms);
    }

    /// A batch shipped to `destination` was acknowledged `delivery` after its oldest change.
    pub fn delivered(&self, origin: &str, destination: &str, delivery: Duration) {
        let secs = delivery.as_secs_f64();
        self.delivery_seconds.with_label_values(&[origin, destination]).observe(secs);
        self.last_delivery_seconds.with_label_values(&[origin, destination]).set(secs);
    }

    /// The text exposition format of every metric (call [`collect::refresh`] first).
    pub fn encode(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// The canonical name of a gRPC code, as in `grpc-status` documentation (OK, NOT_FOUND, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Moves a counter up to `value` (counters kept elsewhere as plain atomics).
fn sync_counter(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}
