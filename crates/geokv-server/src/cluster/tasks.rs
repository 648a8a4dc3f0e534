//! Background work of a cluster node: handing off hints, anti-entropy rounds.

use std::sync::Arc;
use std::time::Duration;

use geokv_cluster::Status;
use geokv_proto::v1 as pb;

use std::sync::atomic::Ordering;

use super::coordinator::encode;
use super::Cluster;

/// Offers kept hints to their nodes each `handoff_interval_ms`, when those answer probes.
pub fn spawn_handoff(cluster: Arc<Cluster>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(cluster.cfg.handoff_interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = handoff_once(&cluster).await {
                    tracing::warn!(error = %e, "hinted handoff round failed; will retry");
                }
            }
        },
        tracing::info_span!("handoff"),
    ))
}

/// One round of hinted handoff: every hint kept for every node that answers probes, a page
/// at a time. A hint the target refuses (not a transport failure) is logged and left for a
/// later round without holding up the others; a transport failure ends the round for that
/// target. Returns how many hints were delivered.
pub async fn handoff_once(cluster: &Arc<Cluster>) -> Result<usize, String> {
    let node = cluster.node.clone();
    let targets = tokio::task::spawn_blocking(move || node.engine().hint_targets())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut delivered = 0;
    for target in targets {
        if cluster.view().info(target).is_some_and(|i| i.status == Status::Left) {
            // The node left the region: its ranges have new owners, which have the key from
            // its other replicas (anti-entropy backs that up).
            let node = cluster.node.clone();
            let dropped = tokio::task::spawn_blocking(move || node.engine().drop_hints_for(target))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            tracing::info!(target, dropped, "dropped the hints kept for a node that left");
            continue;
        }
        if target == cluster.me || !cluster.healthy(target) {
            continue;
        }
        let Some(mut client) = cluster.client(target) else { continue };
        let mut after: Option<Vec<u8>> = None;
        'pages: loop {
            let (node, from) = (cluster.node.clone(), after.clone());
            let hints =
                tokio::task::spawn_blocking(move || node.engine().hints_for(target, from.as_deref(), 256))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            let Some((last, _)) = hints.last() else { break };
            after = Some(last.clone());
            for (key, rec) in hints {
                let req =
                    pb::MergeRequest { key: key.clone(), state: encode(&rec), hint_for: None, ship: false };
                let sent =
                    match tokio::time::timeout(cluster.peers.timeout(), cluster.send_merge(&mut client, req))
                        .await
                    {
                        Ok(r) => r.map(|_| ()),
                        Err(_) => Err(tonic::Status::deadline_exceeded("handoff timed out")),
                    };
                match sent {
                    Ok(()) => {
                        let node = cluster.node.clone();
                        let removed = tokio::task::spawn_blocking(move || {
                            node.engine().remove_hint(target, &key, &rec)
                        })
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                        delivered += usize::from(removed);
                        cluster.stats.hints_delivered.fetch_add(u64::from(removed), Ordering::Relaxed);
                    }
                    Err(s) if crate::status::peer_error(s.clone()).unreachable() => break 'pages,
                    Err(s) => {
                        tracing::warn!(target, error = %s, "a hint was refused; kept for a later round")
                    }
                }
            }
        }
    }
    if delivered > 0 {
        tracing::info!(delivered, "hints handed off");
    }
    Ok(delivered)
}

/// Runs an anti-entropy round with every healthy peer each `anti_entropy_interval_ms`.
pub fn spawn_anti_entropy(cluster: Arc<Cluster>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let period = Duration::from_millis(cluster.cfg.anti_entropy_interval_ms);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                cluster.anti_entropy_round().await;
            }
        },
        tracing::info_span!("anti_entropy"),
    ))
}
