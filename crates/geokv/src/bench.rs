//! `geokv bench`: a closed-loop load generator with the YCSB core workloads.
//!
//! A load phase writes `records` keys in batches; the run phase has `concurrency` workers,
//! each issuing one request at a time for `duration`, picking operations by the workload's mix
//! and keys by a zipfian (θ = 0.99, scrambled) or uniform distribution. Latencies go into HDR
//! histograms per operation; the report gives throughput and p50/p99/p99.9/max.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use geokv_client::{op, proto, Client};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::Level;

mod replication;
use replication::{lag_probes, shipped};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// Reads only.
    C,
    /// 95% reads of recently inserted keys, 5% inserts.
    D,
    /// 50% reads, 50% read-modify-writes.
    F,
    /// Counter increments.
    Incr,
    /// Set adds.
    Sadd,
    /// Updates only (the counterpart of Redis SET).
    Update,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    Zipfian,
    Uniform,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "a")]
    pub workload: Workload,
    /// Keys written in the load phase and chosen from in the run phase.
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Concurrent clients (each with one request in flight).
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// TCP (HTTP/2) connections per endpoint that the clients share, round robin (0: one
    /// per client, as redis-benchmark's `-c` opens). Each connection carries its clients'
    /// requests as HTTP/2 streams. On 2 cores one connection per endpoint served more
    /// requests per second than one per client, for less client CPU.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Run phase length in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, value_enum, default_value = "zipfian")]
    pub distribution: Distribution,
    /// Keys per update request in the run phase; above 1, updates become BatchWrites of that
    /// many puts.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Keys per BatchWrite in the load phase.
    #[arg(long, default_value_t = 100)]
    pub load_batch: usize,
    /// Skip the load phase (the keys are already there).
    #[arg(long)]
    pub no_load: bool,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5.0)]
    pub progress: f64,
    /// Target throughput in operations per second over all clients (0: as fast as they go).
    /// Each client keeps its own schedule; latency counts from the scheduled start, so a
    /// stalled server shows up in the percentiles instead of silently lowering the load.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// A node of another region: during the run, probes written through the first endpoint
    /// are read there until visible, and the report gives the replication lag (time from the
    /// write's acknowledgement until the other region serves it) at p50/p99/p99.9.
    #[arg(long)]
    pub lag_endpoint: Option<String>,
    /// Probes per second for --lag-endpoint.
    #[arg(long, default_value_t = 20.0)]
    pub lag_probes_per_sec: f64,
    /// Peer addresses of the writing region's nodes: the report adds the deltas they shipped
    /// per second and the compression ratio on the wire (from their ReplicationStatus).
    #[arg(long, value_delimiter = ',')]
    pub repl_peers: Vec<String>,
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases"), over 0..n, with item 0 the most popular.
struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    fn new(n: u64, theta: f64) -> Self {
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian { n, theta, alpha, zetan, eta }
    }

    fn next(&self, rng: &mut SmallRng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64 % self.n
    }
}

/// FNV-1a, to scatter zipfian ranks over the key space (YCSB's "scrambled zipfian").
fn scramble(x: u64, n: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h % n
}

fn key(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Read,
    Update,
    Insert,
    ReadModifyWrite,
    Increment,
    SetAdd,
}

const KINDS: [Kind; 6] =
    [Kind::Read, Kind::Update, Kind::Insert, Kind::ReadModifyWrite, Kind::Increment, Kind::SetAdd];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Update => "update",
            Kind::Insert => "insert",
            Kind::ReadModifyWrite => "read-modify-write",
            Kind::Increment => "increment",
            Kind::SetAdd => "set-add",
        }
    }
}

/// The workload's mix: with probability `p` the first kind, else the second.
fn pick(w: Workload, rng: &mut SmallRng) -> Kind {
    let (p, first, second) = match w {
        Workload::A => (0.5, Kind::Read, Kind::Update),
        Workload::B => (0.95, Kind::Read, Kind::Update),
        Workload::C => (1.0, Kind::Read, Kind::Read),
        Workload::D => (0.95, Kind::Read, Kind::Insert),
        Workload::F => (0.5, Kind::Read, Kind::ReadModifyWrite),
        Workload::Incr => (1.0, Kind::Increment, Kind::Increment),
        Workload::Sadd => (1.0, Kind::SetAdd, Kind::SetAdd),
        Workload::Update => (1.0, Kind::Update, Kind::Update),
    };
    if rng.gen::<f64>() < p {
        first
    } else {
        second
    }
}

struct Shared {
    inserted: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
}

struct Worker {
    client: Client,
    rng: SmallRng,
    zipf: Option<Arc<Zipfian>>,
    hist: Vec<Histogram<u64>>,
    errors: Vec<u64>,
}

impl Worker {
    fn next_key(&mut self, args: &BenchArgs, shared: &Shared, latest: bool) -> u64 {
        let n = shared.inserted.load(Ordering::Relaxed).max(1);
        if latest {
            // Workload D: skewed toward the newest keys.
            let back = self.zipf.as_ref().map(|z| z.next(&mut self.rng) % n).unwrap_or(0);
            return n - 1 - back;
        }
        match (&self.zipf, args.distribution) {
            (Some(z), Distribution::Zipfian) => scramble(z.next(&mut self.rng), n),
            _ => self.rng.gen_range(0..n),
        }
    }

    /// One operation; its latency counts from `scheduled` when the load is paced.
    async fn one(&mut self, args: &BenchArgs, shared: &Shared, value: &[u8], scheduled: Option<Instant>) {
        let kind = pick(args.workload, &mut self.rng);
        let started = scheduled.unwrap_or_else(Instant::now);
        let result: Result<(), geokv_client::ClientError> = match kind {
            Kind::Read => {
                let k = self.next_key(args, shared, args.workload == Workload::D);
                self.client.get(&key(k)).await.map(|_| ())
            }
            Kind::Update if args.batch > 1 => {
                let ops = (0..args.batch)
                    .map(|_| op::put(&key(self.next_key(args, shared, false)), value, None))
                    .collect();
                self.client.batch_write(ops).await.map(|_| ())
            }
            Kind::Update => {
                let k = key(self.next_key(args, shared, false));
                self.client.put(&k, value, None).await.map(|_| ())
            }
            Kind::Insert => {
                let k = shared.inserted.fetch_add(1, Ordering::Relaxed);
                self.client.put(&key(k), value, None).await.map(|_| ())
            }
            Kind::ReadModifyWrite => {
                let k = key(self.next_key(args, shared, false));
                match self.client.get(&k).await {
                    Ok(_) => self.client.put(&k, value, None).await.map(|_| ()),
                    Err(e) => Err(e),
                }
            }
            Kind::Increment => {
                let k = [b"counter:".as_slice(), &key(self.next_key(args, shared, false))].concat();
                self.client.increment(&k, 1, None).await.map(|_| ())
            }
            Kind::SetAdd => {
                let member = format!("m{}", self.rng.gen_range(0..1000)).into_bytes();
                let k = [b"set:".as_slice(), &key(self.next_key(args, shared, false))].concat();
                self.client.set_add(&k, vec![member], None).await.map(|_| ())
            }
        };
        let i = KINDS.iter().position(|k| *k == kind).expect("known kind");
        match result {
            Ok(()) => {
                let us = started.elapsed().as_micros().max(1) as u64;
                self.hist[i].saturating_record(us);
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors[i] += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The load phase: four batch writers per endpoint.
async fn load(
    args: &BenchArgs,
    clients: &[Client],
    endpoints: usize,
    value: &[u8],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let batch = args.load_batch.max(1) as u64;
    let chunks: Vec<u64> = (0..args.records).step_by(batch as usize).collect();
    let per = chunks.len().div_ceil(endpoints.max(1) * 4).max(1);
    let mut tasks = Vec::new();
    for (i, part) in chunks.chunks(per).enumerate() {
        let (c, part, value) = (clients[i % clients.len()].clone(), part.to_vec(), value.to_vec());
        let records = args.records;
        tasks.push(tokio::spawn(async move {
            for start in part {
                // Items refused as UNAVAILABLE (a replica too slow on a loaded machine) are
                // written again, a few times, before the load gives up.
                let mut pending: Vec<u64> = (start..(start + batch).min(records)).collect();
                for attempt in 0.. {
                    let ops = pending.iter().map(|&k| op::put(&key(k), &value, None)).collect();
                    let results = c.batch_write(ops).await?;
                    let mut retry = Vec::new();
                    for (&k, r) in pending.iter().zip(&results) {
                        if let Some(proto::write_result::Outcome::Error(e)) = &r.outcome {
                            if geokv_client::Code::from_i32(e.code) != geokv_client::Code::Unavailable
                                || attempt >= 5
                            {
                                anyhow::bail!("load failed: {}", e.message);
                            }
                            retry.push(k);
                        }
                    }
                    if retry.is_empty() {
                        break;
                    }
                    pending = retry;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

pub async fn run(
    args: BenchArgs,
    endpoints: Vec<String>,
    level: Option<Level>,
    json_out: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.records > 0 && args.concurrency > 0 && args.duration > 0.0,
        "records, concurrency and duration must be positive"
    );
    // Connections are opened endpoint by endpoint, round robin, so client w uses endpoint
    // w % endpoints.
    let per_endpoint = match args.connections {
        0 => args.concurrency.div_ceil(endpoints.len()).max(1),
        n => n,
    };
    let mut clients = Vec::new();
    for _ in 0..per_endpoint {
        for ep in &endpoints {
            let mut c = Client::connect_with(ep, &crate::client_cmd::security())
                .await
                .with_context(|| format!("connecting to {ep}"))?;
            if let Some(l) = level {
                c = c.with_consistency(crate::client_cmd::level_to_proto(l));
            }
            clients.push(c);
        }
    }
    let value = vec![b'x'; args.value_size];
    let load_time =
        if args.no_load { Duration::ZERO } else { load(&args, &clients, endpoints.len(), &value).await? };
    if !args.no_load {
        eprintln!(
            "loaded {} records in {:.1}s ({:.0} keys/s)",
            args.records,
            load_time.as_secs_f64(),
            args.records as f64 / load_time.as_secs_f64()
        );
    }
    let shared = Arc::new(Shared {
        inserted: AtomicU64::new(args.records),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let zipf = (args.distribution == Distribution::Zipfian || args.workload == Workload::D)
        .then(|| Arc::new(Zipfian::new(args.records, 0.99)));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let shipped_before = shipped(&args.repl_peers).await?;
    let probes = match &args.lag_endpoint {
        Some(ep) => {
            let reader = Client::connect_with(ep, &crate::client_cmd::security())
                .await
                .with_context(|| format!("connecting to {ep}"))?;
            Some(tokio::spawn(lag_probes(clients[0].clone(), reader, args.lag_probes_per_sec, deadline)))
        }
        None => None,
    };
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut worker = Worker {
            client: clients[w % clients.len()].clone(),
            rng: SmallRng::seed_from_u64(w as u64 + 1),
            zipf: zipf.clone(),
            hist: KINDS
                .iter()
                .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"))
                .collect(),
            errors: vec![0; KINDS.len()],
        };
        let (args, shared, value) = (args.clone(), shared.clone(), value.clone());
        // Paced clients start spread over one interval.
        let interval =
            (args.rate > 0.0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate));
        let mut next =
            started + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(w as f64 / args.concurrency as f64));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let scheduled = interval.map(|iv| {
                    let at = next;
                    next += iv;
                    at
                });
                if let Some(at) = scheduled {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                }
                worker.one(&args, &shared, &value, scheduled).await;
            }
            (worker.hist, worker.errors)
        }));
    }
    let progress = (args.progress > 0.0).then(|| {
        let (shared, every) = (shared.clone(), Duration::from_secs_f64(args.progress));
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(every).await;
                let done = shared.done.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>6.1}s  {:>10.0} ops/s  ({} errors)",
                    started.elapsed().as_secs_f64(),
                    (done - last) as f64 / every.as_secs_f64(),
                    shared.errors.load(Ordering::Relaxed)
                );
                last = done;
            }
        })
    });
    let mut hist: Vec<Histogram<u64>> =
        KINDS.iter().map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")).collect();
    let mut errors = vec![0u64; KINDS.len()];
    for t in tasks {
        let (h, e) = t.await?;
        for i in 0..KINDS.len() {
            hist[i].add(&h[i]).expect("same bounds");
            errors[i] += e[i];
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut replication = serde_json::Map::new();
    // Lag probes are writes too, through the first endpoint.
    let mut probe_writes = 0;
    if let Some(probes) = probes {
        let (lag, timeouts, skipped) = probes.await?;
        probe_writes = lag.len() + timeouts;
        let ms = |q: f64| lag.value_at_quantile(q) as f64 / 1000.0;
        replication.extend([
            ("lag_probes".to_string(), json!(lag.len())),
            ("lag_p50_ms".to_string(), json!(ms(0.5))),
            ("lag_p99_ms".to_string(), json!(ms(0.99))),
            ("lag_p999_ms".to_string(), json!(ms(0.999))),
            ("lag_max_ms".to_string(), json!(lag.max() as f64 / 1000.0)),
            ("lag_timeouts".to_string(), json!(timeouts)),
            // Probes not sent because 4 were still waiting: many means the lag figures
            // under-sample the slow periods.
            ("lag_probes_skipped".to_string(), json!(skipped)),
        ]);
    }
    if !args.repl_peers.is_empty() {
        let after = shipped(&args.repl_peers).await?;
        let (deltas, raw, wire) =
            // (A node restarted during the run starts its counters again: never below zero.)
            (
                after.0.saturating_sub(shipped_before.0),
                after.1.saturating_sub(shipped_before.1),
                after.2.saturating_sub(shipped_before.2),
            );
        // Writes through the shipping nodes' endpoints (clients are spread evenly over the
        // endpoints), each to be shipped once to every destination.
        let writes: u64 = hist.iter().map(|h| h.len()).sum::<u64>() * args.repl_peers.len() as u64
            / endpoints.len().max(1) as u64
            + probe_writes;
        let per_write = deltas as f64 / (writes * after.3).max(1) as f64;
        replication.extend([
            ("deltas_shipped_per_sec".to_string(), json!(deltas as f64 / elapsed)),
            ("deltas_per_write_and_destination".to_string(), json!(per_write)),
            ("raw_bytes".to_string(), json!(raw)),
            ("wire_bytes".to_string(), json!(wire)),
            ("compression_ratio".to_string(), json!(if wire > 0 { raw as f64 / wire as f64 } else { 0.0 })),
        ]);
    }
    let replication = (!replication.is_empty()).then_some(serde_json::Value::Object(replication));
    report(&args, &endpoints, &hist, &errors, elapsed, load_time, json_out, replication);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &BenchArgs,
    endpoints: &[String],
    hist: &[Histogram<u64>],
    errors: &[u64],
    elapsed: f64,
    load_time: Duration,
    json_out: bool,
    replication: Option<serde_json::Value>,
) {
    let ms = |us: u64| us as f64 / 1000.0;
    let rows: Vec<serde_json::Value> = KINDS
        .iter()
        .enumerate()
        .filter(|(i, _)| !hist[*i].is_empty() || errors[*i] > 0)
        .map(|(i, k)| {
            let h = &hist[i];
            let keys_per_op = if *k == Kind::Update && args.batch > 1 { args.batch } else { 1 };
            json!({
                "op": k.name(),
                "count": h.len(),
                "ops_per_sec": h.len() as f64 / elapsed,
                "keys_per_sec": (h.len() as f64 * keys_per_op as f64) / elapsed,
                "p50_ms": ms(h.value_at_quantile(0.5)),
                "p99_ms": ms(h.value_at_quantile(0.99)),
                "p999_ms": ms(h.value_at_quantile(0.999)),
                "max_ms": ms(h.max()),
                "errors": errors[i],
            })
        })
        .collect();
    let total: u64 = hist.iter().map(|h| h.len()).sum();
    if json_out {
        let out = json!({
            "workload": format!("{:?}", args.workload), "records": args.records, "value_size": args.value_size,
            "concurrency": args.concurrency, "distribution": format!("{:?}", args.distribution), "batch": args.batch,
            "endpoints": endpoints, "duration_s": elapsed, "load_s": load_time.as_secs_f64(),
            "throughput_ops_per_sec": total as f64 / elapsed, "ops": rows,
            "rate": args.rate, "replication": replication,
        });
        println!("{out}");
        return;
    }
    println!(
        "workload {:?}, {} records of {} B, {} clients, {:?} keys, {:.1}s: {:.0} ops/s",
        args.workload,
        args.records,
        args.value_size,
        args.concurrency,
        args.distribution,
        elapsed,
        total as f64 / elapsed
    );
    println!(
        "{:<18} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "op", "count", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
    );
    for r in rows {
        println!(
            "{:<18} {:>10} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            r["op"].as_str().unwrap_or(""),
            r["count"],
            r["ops_per_sec"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["p999_ms"].as_f64().unwrap_or(0.0),
            r["max_ms"].as_f64().unwrap_or(0.0),
            r["errors"]
        );
    }
    if let Some(r) = replication {
        println!("replication: {r}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let z = Zipfian::new(10_000, 0.99);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut top = 0;
        for _ in 0..100_000 {
            let x = z.next(&mut rng);
            assert!(x < 10_000);
            if x < 100 {
                top += 1;
            }
        }
        // Under θ = 0.99 the top 1% of items draw roughly half of the requests.
        assert!(top > 40_000 && top < 70_000, "{top}");
    }
}
