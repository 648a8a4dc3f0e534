//! Figures read when Prometheus scrapes: they live in the replicator, the cluster view, the
//! storage engine and the residency evaluator, and are copied into the registry here. Runs on
//! the blocking pool (it reads RocksDB properties and counts hints and backlog).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::{Cluster, Node};

use super::{hot::key_label, sync_counter, Metrics, HOT_LABEL_CHARS};

/// Updates every scrape-time metric of `node` (and its cluster, if it is in one).
pub fn refresh(node: &Node, cluster: Option<&Arc<Cluster>>) {
    let m = node.metrics();
    m.uptime.set(m.started.elapsed().as_secs_f64());
    let region = cluster.map(|c| c.region().to_owned()).unwrap_or_default();
    m.node_info.reset();
    m.node_info.with_label_values(&[&node.id().to_string(), &region, env!("CARGO_PKG_VERSION")]).set(1);
    storage(node, m);
    hot_keys(node, m);
    if let Some(cluster) = cluster {
        members(cluster, m);
        counters(cluster, m);
        if let Some(replicator) = cluster.replicator() {
            replication(&replicator.status(), m);
        }
    }
}

fn storage(node: &Node, m: &Metrics) {
    let s = node.engine().stats();
    for (kind, v) in [
        ("disk", s.disk_bytes),
        ("sst", s.sst_bytes),
        ("memtable", s.memtable_bytes),
        ("live", s.live_data_bytes),
    ] {
        m.storage_bytes.with_label_values(&[kind]).set(v as i64);
    }
    m.storage_keys.set(s.estimated_keys as i64);
    m.storage_pending_compaction.set(s.pending_compaction_bytes as i64);
    m.storage_running_compactions.set(s.running_compactions as i64);
    sync_counter(&m.storage_writes, s.writes);
    sync_counter(&m.storage_corrupt_reads, s.corrupt_reads);
    sync_counter(&m.storage_corrupt_replaced, s.corrupt_replaced);
    sync_counter(&m.storage_oversized_merges, s.oversized_merges);
    m.hints_pending.set(node.engine().hint_count() as i64);
}

fn hot_keys(node: &Node, m: &Metrics) {
    let top = m.hot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).hottest(node.now_ms()).to_vec();
    m.hot_keys.reset();
    for h in top {
        m.hot_keys.with_label_values(&[&key_label(&h.key, HOT_LABEL_CHARS)]).set(h.per_second);
    }
}

fn members(cluster: &Cluster, m: &Metrics) {
    let (view, now) = (cluster.view(), cluster.node().now_ms());
    m.members.reset();
    m.peer_up.reset();
    for member in view.members().filter(|i| i.region == cluster.region()) {
        let health = view.health(member.id, now);
        m.members.with_label_values(&[health.as_str(), member.status.as_str()]).inc();
        if member.id != cluster.node().id() {
            let up = i64::from(health == geokv_cluster::Health::Alive);
            m.peer_up.with_label_values(&[&member.id.to_string(), &member.region]).set(up);
        }
    }
    m.recovering.set(i64::from(cluster.recovery_waiting().is_some()));
    let own = cluster.ownership();
    m.ownership.with_label_values(&["primary"]).set(own.primary);
    m.ownership.with_label_values(&["replica"]).set(own.replica);
}

fn counters(cluster: &Cluster, m: &Metrics) {
    let s = cluster.counters();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    sync_counter(&m.ae_rounds, get(&s.ae_rounds));
    sync_counter(&m.ae_keys_compared, get(&s.ae_keys_compared));
    sync_counter(&m.ae_keys_repaired, get(&s.ae_keys_repaired));
    sync_counter(&m.ae_bytes.with_label_values(&["sent"]), get(&s.ae_state_bytes_sent));
    sync_counter(&m.ae_bytes.with_label_values(&["received"]), get(&s.ae_state_bytes_received));
    sync_counter(&m.ae_bytes.with_label_values(&["summary"]), get(&s.ae_summary_bytes));
    sync_counter(&m.hints_delivered, get(&s.hints_delivered));
    sync_counter(&m.read_repairs, get(&s.read_repairs));
    let (forwards, rejects, dropped, version) = cluster.residency_stats();
    sync_counter(&m.residency_requests.with_label_values(&["forward"]), forwards);
    sync_counter(&m.residency_requests.with_label_values(&["reject"]), rejects);
    sync_counter(&m.residency_dropped, dropped);
    m.residency_version.set(version as i64);
}

fn replication(s: &geokv_proto::v1::ReplicationStatusResponse, m: &Metrics) {
    sync_counter(&m.repl_batches_received, s.batches_received);
    sync_counter(&m.repl_deltas_applied, s.deltas_applied);
    sync_counter(&m.drift_rejections, s.drift_rejections);
    sync_counter(&m.deltas_set_aside, s.deltas_set_aside);
    for d in &s.destinations {
        let pair = [s.region.as_str(), d.destination.as_str()];
        m.lag_seconds.with_label_values(&pair).set(d.oldest_unacked_ms as f64 / 1000.0);
        m.backlog_entries.with_label_values(&pair).set(d.backlog_entries as i64);
        m.backlog_bytes.with_label_values(&pair).set(d.backlog_bytes as i64);
        m.link_up.with_label_values(&pair).set(i64::from(d.connected));
        let delay = d.link.map_or(0, |l| l.delay_ms);
        m.link_delay_seconds.with_label_values(&pair).set(delay as f64 / 1000.0);
        let [origin, destination] = pair;
        sync_counter(&m.repl_bytes.with_label_values(&[origin, destination, "raw"]), d.raw_bytes);
        sync_counter(&m.repl_bytes.with_label_values(&[origin, destination, "wire"]), d.wire_bytes);
        sync_counter(&m.repl_deltas.with_label_values(&[origin, destination, "sent"]), d.deltas_sent);
        sync_counter(&m.repl_deltas.with_label_values(&[origin, destination, "acked"]), d.deltas_acked);
        sync_counter(
            &m.repl_takeover.with_label_values(&[origin, destination, "covered"]),
            d.takeover_covered,
        );
        sync_counter(
            &m.repl_takeover.with_label_values(&[origin, destination, "shipped"]),
            d.takeover_shipped,
        );
        sync_counter(&m.repl_batches_sent.with_label_values(&pair), d.batches_sent);
        sync_counter(&m.repl_resends.with_label_values(&pair), d.resends);
    }
}
