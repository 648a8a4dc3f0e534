//! Hinted handoff: the driver of `geokv_protocol::handoff` over the engine's hints and the
//! peer service.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use geokv_cluster::Status;
use geokv_proto::v1 as pb;
use geokv_protocol::handoff::{self, hint_plan, Delivered, HintPlan};
use geokv_protocol::{Failure, Kind, PeerError};

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

/// One round of hinted handoff: every hint kept for every node, a page at a time, by the
/// protocol's rules (`geokv_protocol::handoff`): hints for a node that left are dropped,
/// hints kept for this node itself are merged here, hints for a node that answers probes
/// are delivered; a refusal keeps the hint for a later round without holding up the others,
/// an unreachable target ends the round for that target. Returns how many hints were
/// delivered (or merged here).
pub async fn handoff_once(cluster: &Arc<Cluster>) -> Result<usize, String> {
    let targets = blocking(cluster, |e| e.hint_targets()).await?;
    let mut delivered = 0;
    for target in targets {
        let left = cluster.view().info(target).is_some_and(|i| i.status == Status::Left);
        let plan = hint_plan(cluster.me, target, left, target != cluster.me && cluster.healthy(target));
        let mut client = match plan {
            HintPlan::Wait => continue,
            HintPlan::Drop => {
                let dropped = blocking(cluster, move |e| e.drop_hints_for(target)).await?;
                tracing::info!(target, dropped, "dropped the hints kept for a node that left");
                continue;
            }
            HintPlan::MergeHere => None,
            HintPlan::Deliver => match cluster.client(target) {
                Some(c) => Some(c),
                None => continue,
            },
        };
        let mut after: Option<Vec<u8>> = None;
        'pages: loop {
            let from = after.clone();
            let hints = blocking(cluster, move |e| e.hints_for(target, from.as_deref(), 256)).await?;
            let Some((last, _)) = hints.last() else { break };
            after = Some(last.clone());
            for (key, rec) in hints {
                let sent = match client.as_mut() {
                    None => {
                        let (k, r) = (key.clone(), rec.clone());
                        blocking(cluster, move |e| e.merge_as(&k, &r, false).map(|_| ()))
                            .await
                            .map_err(|e| PeerError::Answered(Failure::refused(Kind::Internal, e)))
                    }
                    Some(client) => {
                        let req = pb::MergeRequest {
                            key: key.clone(),
                            state: encode(&rec),
                            hint_for: None,
                            ship: false,
                        };
                        match tokio::time::timeout(cluster.peers.timeout(), cluster.send_merge(client, req))
                            .await
                        {
                            Ok(r) => r.map(|_| ()).map_err(crate::api::status::peer_error),
                            Err(_) => Err(PeerError::TimedOut("handoff timed out".into())),
                        }
                    }
                };
                match handoff::delivered(&sent) {
                    Delivered::Remove => {
                        let removed = blocking(cluster, move |e| e.remove_hint(target, &key, &rec)).await?;
                        delivered += usize::from(removed);
                        cluster.stats.hints_delivered.fetch_add(u64::from(removed), Ordering::Relaxed);
                    }
                    Delivered::StopTarget => break 'pages,
                    Delivered::KeepAndGoOn => {
                        tracing::warn!(target, error = ?sent.err(), "a hint was refused; kept for a later round")
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

/// Runs `f` on this node's engine on the blocking pool; errors as strings for the log.
async fn blocking<T, E, F>(cluster: &Arc<Cluster>, f: F) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
    F: FnOnce(&geokv_storage::Engine) -> Result<T, E> + Send + 'static,
{
    let node = cluster.node.clone();
    crate::blocking::run(move || f(node.engine())).await?.map_err(|e| e.to_string())
}
