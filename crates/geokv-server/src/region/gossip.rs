//! Gossip: SWIM membership and failure detection (the `foca` crate) over UDP on the node's
//! peer address (the same port number as the node-to-node gRPC service, which is TCP).
//!
//! One task owns the `foca` state machine and feeds it inputs one at a time: datagrams,
//! timers (from a scheduler task that delivers them in deadline order), periodic announces to
//! nodes of the view that gossip has not reached, and this node's own status changes. After
//! each input it sends what foca wants sent, schedules its timers, and folds the membership
//! foca reports into the cluster's view. The gossip identity is the node's [`MemberInfo`], so
//! a status change spreads as a new identity that wins over the old one everywhere.
//! Outgoing datagrams pass this node's injected faults (lost to unreachable peers or by
//! `drop_probability`, delayed by up to `max_delay_ms`; none unless a test sets some).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PeriodicParams, PostcardCodec, State, Timer};
use geokv_cluster::{Health, MemberInfo, Membership, Status};
use rand010::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Change, Cluster};
use crate::ClusterConfig;

enum Input {
    Data(Vec<u8>),
    Timer(Timer<MemberInfo>),
    /// Announce this node to the nodes of the view gossip does not count as active.
    AnnounceMissing,
    /// Take this status (a new identity) and spread it.
    Become(Status, oneshot::Sender<MemberInfo>),
}

/// The way into the gossip task.
pub struct Handle {
    inputs: mpsc::UnboundedSender<Input>,
}

impl Handle {
    /// Changes this node's ring status; returns its new info once gossip has taken it (peers
    /// learn it over the next probe periods).
    pub async fn set_status(&self, status: Status) -> Result<MemberInfo, String> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Become(status, tx)).map_err(|_| "gossip has stopped".to_string())?;
        rx.await.map_err(|_| "gossip has stopped".to_string())
    }
}

fn foca_config(cfg: &ClusterConfig, cluster_size: usize) -> foca::Config {
    let period = Duration::from_millis(cfg.probe_interval_ms);
    let size = NonZeroU32::new(cluster_size.max(1) as u32).expect("at least 1");
    let mut c = foca::Config::new_lan(size);
    c.probe_period = period;
    c.probe_rtt = period / 2;
    c.suspect_to_down_after = Duration::from_millis(cfg.suspect_timeout_ms);
    let every =
        |frequency, n| Some(PeriodicParams { frequency, num_members: NonZeroUsize::new(n).expect("n > 0") });
    c.periodic_gossip = every(period, 3);
    c.periodic_announce = every(period * 20, 1);
    // A node declared down while it was only cut off learns it and rejoins (renewed identity).
    c.periodic_announce_to_down_members = every(period * 4, 2);
    c
}

fn health_of(state: State) -> Health {
    match state {
        State::Alive => Health::Alive,
        State::Suspect => Health::Suspect,
        State::Down => Health::Dead,
    }
}

/// Binds the gossip socket and starts the gossip tasks.
pub async fn start(cluster: Arc<Cluster>) -> Result<Vec<JoinHandle<()>>, String> {
    let me = cluster.view().me().clone();
    let hostport: geokv_topology::HostPort =
        me.peer_addr.parse().map_err(|e| format!("peer address {} of this node: {e}", me.peer_addr))?;
    // A DNS name is not bound: the node listens on every interface at its port.
    let addr = hostport.listen();
    let socket = Arc::new(
        UdpSocket::bind(addr)
            .await
            .map_err(|e| format!("cannot bind the gossip socket (UDP {addr}): {e}"))?,
    );
    let (inputs, rx) = mpsc::unbounded_channel();
    if cluster.gossip.set(Handle { inputs: inputs.clone() }).is_err() {
        return Err("gossip is already running".into());
    }
    let (timers, timers_rx) = mpsc::unbounded_channel();
    let rng = rand010::rngs::SmallRng::seed_from_u64(me.id ^ cluster.node.now_ms());
    let foca = Foca::new(me, foca_config(&cluster.cfg, cluster.view().peers().len() + 1), rng, PostcardCodec);
    let announce_every = Duration::from_millis(cluster.cfg.probe_interval_ms * 8);
    Ok(vec![
        tokio::spawn(receive(socket.clone(), inputs.clone(), cluster.node.tls().cloned())),
        tokio::spawn(schedule(timers_rx, inputs.clone())),
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(announce_every);
            loop {
                tick.tick().await;
                if inputs.send(Input::AnnounceMissing).is_err() {
                    return;
                }
            }
        }),
        tokio::spawn(tracing::Instrument::instrument(
            run(cluster, foca, rx, socket, timers),
            tracing::info_span!("gossip"),
        )),
    ])
}

/// Takes datagrams off the socket; with a gossip key, only those whose seal opens (others are
/// dropped, counted and logged).
async fn receive(
    socket: Arc<UdpSocket>,
    inputs: mpsc::UnboundedSender<Input>,
    tls: Option<Arc<crate::security::NodeTls>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let data = match tls.as_ref().and_then(|t| t.gossip_key().map(|k| (t, k))) {
                    None => &buf[..len],
                    Some((tls, key)) => match key.open(&buf[..len]) {
                        Some(data) => data,
                        None => {
                            tls.count_rejection_on("gossip", "bad_seal");
                            tracing::warn!(%from, "gossip datagram dropped: not sealed with this deployment's gossip key");
                            continue;
                        }
                    },
                };
                if inputs.send(Input::Data(data.to_vec())).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "gossip receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Delivers foca's timers at their deadlines, in deadline order (and in submission order for
/// equal deadlines), which foca relies on.
async fn schedule(
    mut rx: mpsc::UnboundedReceiver<(Instant, Timer<MemberInfo>)>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let mut queue: BTreeMap<(Instant, u64), Timer<MemberInfo>> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        let next = queue.keys().next().map(|&(at, _)| at);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((at, timer)) => {
                    seq += 1;
                    queue.insert((at, seq), timer);
                }
                None => return,
            },
            _ = async { tokio::time::sleep_until(next.expect("guarded")).await }, if next.is_some() => {
                let now = Instant::now();
                while let Some(entry) = queue.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    if inputs.send(Input::Timer(entry.remove())).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

type Gossiper = Foca<MemberInfo, PostcardCodec, rand010::rngs::SmallRng, foca::NoCustomBroadcast>;

async fn run(
    cluster: Arc<Cluster>,
    mut foca: Gossiper,
    mut rx: mpsc::UnboundedReceiver<Input>,
    socket: Arc<UdpSocket>,
    timers: mpsc::UnboundedSender<(Instant, Timer<MemberInfo>)>,
) {
    let mut rt = AccumulatingRuntime::new();
    let _ = cluster.gossip.get().map(|h| h.inputs.send(Input::AnnounceMissing));
    let overdue_after =
        Duration::from_millis(cluster.cfg.suspect_timeout_ms + 4 * cluster.cfg.probe_interval_ms);
    let mut suspicions = Suspicions::default();
    let mut resolver = Resolver::default();
    while let Some(input) = rx.recv().await {
        let result = match input {
            Input::Data(data) => foca.handle_data(&data, &mut rt),
            Input::Timer(timer) => foca.handle_timer(timer, &mut rt),
            Input::AnnounceMissing => announce_missing(&cluster, &mut foca, &mut rt),
            Input::Become(status, reply) => {
                let next = foca.identity().next(status, cluster.node.now_ms());
                let r = foca.change_identity(next.clone(), &mut rt);
                if r.is_ok() {
                    cluster.update_view(|v| {
                        v.set_me(next.clone());
                        Change::Info
                    });
                    tracing::info!(
                        status = status.as_str(),
                        version = next.version,
                        "this node's status changed"
                    );
                    let _ = reply.send(next);
                }
                r
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "gossip input not taken");
        }
        while let Some((to, data)) = rt.to_send() {
            let data = match cluster.node.tls().and_then(|t| t.gossip_key()) {
                Some(key) => key.seal(&data),
                None => data.to_vec(),
            };
            let family_v4 = socket.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
            match resolver.resolve(&to.peer_addr, family_v4).await {
                Ok(addr) => match cluster.node.faults().plan_datagram(to.id) {
                    Some(delay) if delay.is_zero() => send(&socket, to.id, &data, addr).await,
                    Some(delay) => {
                        let socket = socket.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            send(&socket, to.id, &data, addr).await;
                        });
                    }
                    None => {} // lost by fault injection (counted)
                },
                Err(e) => tracing::warn!(peer = to.id, error = %e, "unusable peer address in gossip"),
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = rt.to_schedule() {
            let _ = timers.send((now + after, timer));
        }
        // foca drops its pending timers when this node resets (rejoins) or loses every peer,
        // suspicion timers included: a peer suspected then stays suspect until it refutes,
        // which it never does if the suspicion stopped spreading. Finish such suspicions here
        // as foca's timer would have (declared down; the peer hears it and rejoins).
        let suspects = foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()));
        for (info, incarnation) in suspicions.overdue(suspects, now, overdue_after) {
            tracing::warn!(peer = info.id, "a suspicion outlived its timeout; declaring the peer down");
            let down = foca::Member::new(info, incarnation, State::Down);
            if let Err(e) = foca.apply_many(std::iter::once(down), true, &mut rt) {
                tracing::debug!(error = %e, "could not declare an overdue suspect down");
            }
        }
        while let Some(note) = rt.to_notify() {
            on_notification(&cluster, note);
        }
        fold(&cluster, &foca);
    }
}

/// Peer addresses as gossip sends to them: an IP address as it is, a DNS name resolved and
/// kept for [`RESOLVED_FOR`] (then resolved again, so a node whose name moves is followed).
#[derive(Default)]
struct Resolver {
    names: BTreeMap<String, (SocketAddr, Instant)>,
}

/// How long a resolved peer name is used before it is resolved again.
const RESOLVED_FOR: Duration = Duration::from_secs(5);

impl Resolver {
    /// The address to send `addr` (HOST:PORT) to, of the socket's family (IPv4 or not).
    async fn resolve(&mut self, addr: &str, v4: bool) -> Result<SocketAddr, String> {
        if let Ok(a) = addr.parse::<SocketAddr>() {
            return Ok(a);
        }
        if let Some((a, at)) = self.names.get(addr) {
            if at.elapsed() < RESOLVED_FOR {
                return Ok(*a);
            }
        }
        let found = tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve {addr}: {e}"))?;
        let chosen = found
            .into_iter()
            .find(|a| a.is_ipv4() == v4)
            .ok_or_else(|| format!("{addr} resolves to no address of the gossip socket's family"))?;
        self.names.insert(addr.to_owned(), (chosen, Instant::now()));
        Ok(chosen)
    }
}

async fn send(socket: &UdpSocket, peer: u64, data: &[u8], addr: SocketAddr) {
    if let Err(e) = socket.send_to(data, addr).await {
        tracing::debug!(peer, error = %e, "gossip send failed");
    }
}

/// When each current suspicion (peer identity and incarnation) was first seen.
#[derive(Default)]
struct Suspicions {
    since: BTreeMap<(u64, u64, foca::Incarnation), Instant>,
}

impl Suspicions {
    /// Records the current suspects (forgetting the others) and returns those suspected for
    /// longer than `after`, once each.
    fn overdue(
        &mut self,
        current: impl Iterator<Item = (MemberInfo, foca::Incarnation)>,
        now: Instant,
        after: Duration,
    ) -> Vec<(MemberInfo, foca::Incarnation)> {
        let mut seen = BTreeMap::new();
        let mut due = Vec::new();
        for (info, incarnation) in current {
            let key = (info.id, info.version, incarnation);
            let first = self.since.get(&key).copied().unwrap_or(now);
            if now.duration_since(first) > after {
                due.push((info, incarnation));
            } else {
                seen.insert(key, first);
            }
        }
        self.since = seen;
        due
    }
}

fn announce_missing(
    cluster: &Cluster,
    foca: &mut Gossiper,
    rt: &mut AccumulatingRuntime<MemberInfo>,
) -> Result<(), foca::Error> {
    let view = cluster.view();
    let active: Vec<u64> = foca.iter_members().map(|m| m.id().id).collect();
    for id in view.peers().into_iter().filter(|id| !active.contains(id)) {
        if let Some(info) = view.info(id) {
            foca.announce(info.clone(), &mut *rt)?;
        }
    }
    Ok(())
}

fn on_notification(cluster: &Cluster, note: OwnedNotification<MemberInfo>) {
    match note {
        OwnedNotification::MemberUp(m) => tracing::info!(peer = m.id, version = m.version, "peer up"),
        OwnedNotification::MemberDown(m) => tracing::warn!(peer = m.id, version = m.version, "peer down"),
        OwnedNotification::Rename(old, new) => tracing::info!(
            peer = new.id,
            from = old.status.as_str(),
            to = new.status.as_str(),
            version = new.version,
            "peer changed its info"
        ),
        OwnedNotification::Rejoin(me) => {
            tracing::warn!(version = me.version, "this node was declared down and rejoined");
            cluster.update_view(|v| {
                v.set_me(me);
                Change::Info
            });
        }
        OwnedNotification::Defunct => tracing::error!("this node was declared down and cannot rejoin"),
        OwnedNotification::Idle => tracing::warn!("no active peer: this node is alone or cut off"),
        OwnedNotification::Active => tracing::info!("gossip: in touch with the region"),
    }
}

/// Folds foca's view of every member (info and liveness) into the cluster's view.
fn fold(cluster: &Cluster, foca: &Gossiper) {
    let states: Vec<(MemberInfo, Health)> =
        foca.iter_membership_state().map(|m| (m.id().clone(), health_of(m.state()))).collect();
    let view = cluster.view();
    if states.iter().all(|(info, h)| unchanged(&view, info, *h)) {
        return;
    }
    cluster.update_view(|v| {
        let mut change = Change::None;
        for (info, health) in states {
            if v.observe(info.id, info.version, health) {
                tracing::info!(peer = info.id, health = health.as_str(), "peer health changed");
                change = change.max(Change::Health);
            }
            if v.learn(info, health) {
                change = Change::Info;
            }
        }
        change
    });
}

fn unchanged(view: &Membership, info: &MemberInfo, health: Health) -> bool {
    info.id == view.me().id
        || view.info(info.id).is_some_and(|known| known.version > info.version)
        || (view.info(info.id) == Some(info) && view.reported(info.id) == Some(health))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> MemberInfo {
        MemberInfo {
            id,
            version: 1,
            status: Status::Normal,
            region: "r".into(),
            client_addr: String::new(),
            peer_addr: String::new(),
        }
    }

    #[test]
    fn a_suspicion_is_overdue_once_it_outlives_the_timeout() {
        let mut s = Suspicions::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(3);
        assert!(s.overdue([(info(5), 2)].into_iter(), t0, after).is_empty());
        assert!(s.overdue([(info(5), 2)].into_iter(), t0 + Duration::from_secs(2), after).is_empty());
        let due = s.overdue([(info(5), 2), (info(6), 1)].into_iter(), t0 + Duration::from_secs(4), after);
        assert_eq!(due.iter().map(|(i, n)| (i.id, *n)).collect::<Vec<_>>(), [(5, 2)]);
        // Reported once; a refuted suspicion (new incarnation) starts over.
        assert!(s.overdue([(info(5), 3)].into_iter(), t0 + Duration::from_secs(5), after).is_empty());
        assert!(s.overdue([(info(6), 1)].into_iter(), t0 + Duration::from_secs(6), after).is_empty());
        // A suspicion that ended is forgotten.
        assert!(s.overdue(std::iter::empty(), t0 + Duration::from_secs(7), after).is_empty());
        assert!(s.overdue([(info(6), 1)].into_iter(), t0 + Duration::from_secs(8), after).is_empty());
    }
}
