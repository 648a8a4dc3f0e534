//! The client commands: one gRPC call each, printed for people or as JSON.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use geokv_client::{op, proto, Client, ScanOptions};
use serde_json::{json, Value as Json};

use crate::admin_conn::AdminConn;
use crate::output::*;
use crate::{ClientOpts, Level};

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Read a key.
    Get { key: String },
    /// Read several keys in one request (absent keys print as `(absent)`).
    Mget {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// A key's remaining time to live: milliseconds, `none` (no TTL), or `(absent)`.
    Ttl { key: String },
    /// Set a register. The value is the argument, or stdin when it is `-` or missing, or
    /// --file's content (decoded with --hex / --base64).
    Put {
        key: String,
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Time to live: 500ms, 10s, 5m, 1h30m, 2d (plain numbers are milliseconds).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Delete a key.
    Del { key: String },
    /// Add to a counter (default 1; negative to subtract).
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// 32 hex digits naming this increment: running the command again with the same id
        /// (after exit status 7, say) counts once, for 10 minutes.
        #[arg(long, value_parser = parse_request_id)]
        request_id: Option<geokv_client::RequestId>,
    },
    /// Append to a register (the value as for `put`).
    Append {
        key: String,
        value: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Add members to a set.
    Sadd {
        key: String,
        #[arg(required = true)]
        members: Vec<String>,
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Remove members from a set.
    Srem {
        key: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// List a set's members.
    Smembers { key: String },
    /// List keys in order, under a prefix.
    Scan {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start at this key (inclusive).
        #[arg(long, default_value = "")]
        start: String,
        /// Page size (0: server default).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Keys, versions and TTLs without values.
        #[arg(long)]
        keys_only: bool,
        /// Follow pages to the end instead of printing one page.
        #[arg(long)]
        all: bool,
        /// Continue from a previous page's token (hex).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Set a register only if its version matches (or, with --if-absent, if it does not exist).
    Cas {
        key: String,
        value: String,
        /// The version read earlier, as HLC:NODE (printed by get).
        #[arg(long, conflicts_with = "if_absent", required_unless_present = "if_absent")]
        expect_version: Option<String>,
        #[arg(long)]
        if_absent: bool,
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Show a cluster node's view: peers' health, anti-entropy, hints and read-repair counters.
    /// Talks to the Admin service at --endpoint, or with --peer to the node's peer address.
    PeerStats {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoint.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Take a node off its region's ring: it streams its keys to their next owners, then
    /// turns "left" (it can be stopped then).
    Leave {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoint.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Drop a node's copies of keys it no longer replicates, after joins and leaves have
    /// finished.
    Cleanup {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoint.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Show a node's cross-region replication: per destination region the lag (age of the
    /// oldest unacknowledged change), backlog, bytes before/after compression and link.
    ReplStatus {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoint.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Change the emulated WAN link from a node to another region (its other settings kept).
    Link {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoint.
        #[arg(long)]
        peer: Option<String>,
        /// Destination region.
        #[arg(long)]
        to: String,
        #[arg(long)]
        delay_ms: Option<u64>,
        #[arg(long)]
        jitter_ms: Option<u64>,
        /// Probability that a batch is lost, 0 to 1.
        #[arg(long)]
        loss: Option<f64>,
        /// Cut the link (`--cut true`) or heal it (`--cut false`).
        #[arg(long)]
        cut: Option<bool>,
    },
    /// Apply many writes from JSON lines, e.g. {"op":"put","key":"k","value":"v","ttl_ms":1000}.
    /// Ops: put, del, incr (delta), append, sadd / srem (members). Reads stdin without --file.
    Batch {
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

pub fn level_to_proto(level: Level) -> proto::Consistency {
    match level {
        Level::One => proto::Consistency::One,
        Level::Quorum => proto::Consistency::Quorum,
        Level::All => proto::Consistency::All,
    }
}

/// Parses a TTL: 500ms, 10s, 5m, 1h30m, 2d (humantime), or a plain number of milliseconds.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    crate::cli_io::parse_duration(s)
}

fn parse_request_id(s: &str) -> Result<geokv_client::RequestId, String> {
    let id = u128::from_str_radix(s, 16).ok().filter(|_| s.len() == 32);
    id.map(u128::to_be_bytes).ok_or_else(|| format!("{s:?} is not 32 hex digits (16 bytes)"))
}

fn parse_version(s: &str) -> anyhow::Result<proto::Version> {
    let (hlc, node) = s.split_once(':').context("a version is written HLC:NODE, as `geokv get` prints it")?;
    Ok(proto::Version {
        hlc: hlc.parse().context("the HLC part of the version is not a number")?,
        node_id: node.parse().context("the node part of the version is not a number")?,
    })
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("a page token is an even number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("page token is not hex"))
        .collect()
}

pub(crate) fn print(json: bool, j: Json, human: String) {
    if json {
        println!("{j}");
    } else {
        println!("{human}");
    }
}

pub async fn run(cmd: ClientCommand, opts: ClientOpts) -> anyhow::Result<()> {
    match &cmd {
        ClientCommand::PeerStats { peer } => return peer_stats(peer.as_deref(), opts.json).await,
        ClientCommand::Leave { peer } | ClientCommand::Cleanup { peer } => {
            return move_cmd(peer.as_deref(), matches!(cmd, ClientCommand::Leave { .. }), opts.json).await
        }
        ClientCommand::ReplStatus { peer } => return repl_status(peer.as_deref(), opts.json).await,
        ClientCommand::Link { peer, to, delay_ms, jitter_ms, loss, cut } => {
            return set_link(peer.as_deref(), to, (*delay_ms, *jitter_ms, *loss, *cut), opts.json).await
        }
        _ => {}
    }
    let enc = opts.encoding();
    let arg = |what: &str, s: &str| {
        if matches!(what, "key" | "prefix" | "start key") {
            opts.key_encoding.arg(what, s)
        } else {
            enc.arg(what, s)
        }
    };
    // Local input first: a bad value is a usage error whether or not a node is up.
    let value = match &cmd {
        ClientCommand::Put { value, file, .. } | ClientCommand::Append { value, file, .. } => {
            Some(crate::cli_io::value(enc, value.as_deref(), file.as_deref())?)
        }
        ClientCommand::Cas { value, .. } => Some(arg("value", value)?),
        _ => None,
    };
    let mut client = Client::connect_with_deadline(&opts.endpoint, &security(), opts.timeout).await?;
    if matches!(
        cmd,
        ClientCommand::Incr { request_id: None, .. }
            | ClientCommand::Append { .. }
            | ClientCommand::Cas { .. }
            | ClientCommand::Batch { .. }
    ) {
        crate::cli_io::UNREPEATABLE_SENT.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(level) = opts.consistency {
        client = client.with_consistency(level_to_proto(level));
    }
    let js = opts.json;
    let decode_members =
        |m: Vec<String>| m.iter().map(|m| arg("member", m)).collect::<anyhow::Result<Vec<_>>>();
    match cmd {
        ClientCommand::Get { key } => match client.get(&arg("key", &key)?).await? {
            Some(e) if opts.output == crate::Output::Value && !js => print_value(enc, &e.value)?,
            Some(e) => print(js, entry_json(&e), entry_human(&e)),
            // As etcdctl: nothing on stdout, so that `> file` does not store a marker.
            None if opts.output == crate::Output::Value && !js => eprintln!("(absent)"),
            None => print(js, Json::Null, "(absent)".into()),
        },
        ClientCommand::Mget { keys } => {
            let keys = keys.iter().map(|k| arg("key", k)).collect::<anyhow::Result<Vec<_>>>()?;
            let entries = client.batch_get(keys.clone()).await?;
            if js {
                let j: Vec<Json> = keys
                    .iter()
                    .zip(&entries)
                    .map(|(k, e)| {
                        e.as_ref()
                            .map(entry_json)
                            .unwrap_or_else(|| json!({ "key": bytes_json(k), "absent": true }))
                    })
                    .collect();
                println!("{}", Json::Array(j));
            } else {
                for (k, e) in keys.iter().zip(&entries) {
                    match e {
                        Some(e) => println!("{}", entry_human(e)),
                        None => println!("{} (absent)", bytes_human(k)),
                    }
                }
            }
        }
        ClientCommand::Ttl { key } => match client.get(&arg("key", &key)?).await? {
            Some(e) => {
                let human = e.ttl_remaining_ms.map_or("none".to_string(), |ms| ms.to_string());
                print(js, json!({ "ttl_remaining_ms": e.ttl_remaining_ms }), human);
            }
            None => print(js, Json::Null, "(absent)".into()),
        },
        ClientCommand::Put { key, ttl, .. } => {
            let value = value.unwrap_or_default();
            let r = client.put(&arg("key", &key)?, &value, ttl).await?;
            let j = json!({ "version": version_json(&r.version), "ttl_remaining_ms": r.ttl_remaining_ms });
            print(
                js,
                j,
                format!("OK (version {}{})", version_str(&r.version), ttl_human(r.ttl_remaining_ms)),
            );
        }
        ClientCommand::Del { key } => {
            let r = client.delete(&arg("key", &key)?).await?;
            let human = if r.existed { "deleted" } else { "deleted (it did not exist)" };
            print(js, json!({ "existed": r.existed, "version": version_json(&r.version) }), human.into());
        }
        ClientCommand::Incr { key, delta, ttl, request_id } => {
            let key = arg("key", &key)?;
            let r = match request_id {
                Some(id) => client.increment_once(&key, delta, ttl, id).await?,
                None => client.increment(&key, delta, ttl).await?,
            };
            let j = json!({ "value": r.value, "version": version_json(&r.version), "ttl_remaining_ms": r.ttl_remaining_ms });
            print(js, j, r.value.to_string());
        }
        ClientCommand::Append { key, ttl, .. } => {
            let value = value.unwrap_or_default();
            let r = client.append(&arg("key", &key)?, &value, ttl).await?;
            let j = json!({ "length": r.length, "version": version_json(&r.version) });
            print(js, j, format!("length {}", r.length));
        }
        ClientCommand::Sadd { key, members, ttl } => {
            let r = client.set_add(&arg("key", &key)?, decode_members(members)?, ttl).await?;
            set_change(js, r);
        }
        ClientCommand::Srem { key, members } => {
            let r = client.set_remove(&arg("key", &key)?, decode_members(members)?).await?;
            set_change(js, r);
        }
        ClientCommand::Smembers { key } => {
            let r = client.set_members(&arg("key", &key)?).await?;
            let j = json!({
                "found": r.found,
                "members": r.members.iter().map(|m| bytes_json(m)).collect::<Vec<_>>(),
                "version": version_json(&r.version),
            });
            let human = if r.found {
                r.members.iter().map(|m| bytes_human(m)).collect::<Vec<_>>().join("\n")
            } else {
                "(absent)".into()
            };
            print(js, j, human);
        }
        ClientCommand::Scan { prefix, start, limit, keys_only, all, page_token } => {
            let opts = ScanOptions {
                prefix: arg("prefix", &prefix)?,
                start_key: arg("start key", &start)?,
                limit,
                keys_only,
            };
            let (entries, next) = if all {
                (client.scan_all(&opts).await?, Vec::new())
            } else {
                let token = page_token.map(|t| unhex(&t)).transpose()?.unwrap_or_default();
                let page = client.scan_page(&opts, token).await?;
                (page.entries, page.next_page_token)
            };
            if js {
                let j = json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>(), "next_page_token": hex(&next) });
                println!("{j}");
            } else {
                for e in &entries {
                    println!("{}", entry_human(e));
                }
                if !next.is_empty() {
                    println!("(more: --page-token {})", hex(&next));
                }
            }
        }
        ClientCommand::Cas { key, expect_version, if_absent: _, ttl, .. } => {
            let expected = expect_version.as_deref().map(parse_version).transpose()?;
            let value = value.unwrap_or_default();
            let r = client.compare_and_swap(&arg("key", &key)?, expected, &value, ttl).await?;
            let j = json!({ "succeeded": r.succeeded, "current": r.current.as_ref().map(entry_json) });
            let human = match (&r.succeeded, &r.current) {
                (true, Some(e)) => format!("OK (version {})", version_str(&e.version)),
                (true, None) => "OK".into(),
                (false, Some(e)) => format!("CONFLICT: current {}", entry_human(e)),
                (false, None) => "CONFLICT: the key is absent".into(),
            };
            print(js, j, human);
            if !r.succeeded {
                std::process::exit(crate::cli_io::exit::CONFLICT);
            }
        }
        ClientCommand::Batch { file } => batch(&client, file, js).await?,
        ClientCommand::PeerStats { .. }
        | ClientCommand::Leave { .. }
        | ClientCommand::Cleanup { .. }
        | ClientCommand::ReplStatus { .. }
        | ClientCommand::Link { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// `--output value`: a register's bytes (exactly, or encoded), a counter's number, a set's
/// members one per line.
fn print_value(enc: crate::cli_io::Encoding, v: &Option<proto::Value>) -> anyhow::Result<()> {
    use proto::value::Kind;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::Register(b)) => out.write_all(&enc.encode(b))?,
        Some(Kind::Counter(n)) => writeln!(out, "{n}")?,
        Some(Kind::Set(s)) => {
            for m in &s.members {
                out.write_all(&enc.encode(m))?;
                if enc == crate::cli_io::Encoding::Raw {
                    out.write_all(b"\n")?;
                }
            }
        }
        None => {}
    }
    out.flush()?;
    Ok(())
}

fn set_change(js: bool, r: proto::SetChangeResponse) {
    let j = json!({ "changed": r.changed, "size": r.size, "version": version_json(&r.version) });
    print(js, j, format!("changed {}, size {}", r.changed, r.size));
}

/// Parses one JSON line of `geokv batch`.
pub fn batch_line(line: &str, n: usize) -> anyhow::Result<proto::WriteOp> {
    let v: Json = serde_json::from_str(line).with_context(|| format!("line {n}: not JSON"))?;
    let s = |f: &str| -> anyhow::Result<Vec<u8>> {
        Ok(v.get(f)
            .and_then(Json::as_str)
            .with_context(|| format!("line {n}: field `{f}` (a string) is missing"))?
            .as_bytes()
            .to_vec())
    };
    let ttl = v.get("ttl_ms").and_then(Json::as_u64).map(Duration::from_millis);
    let members = || -> anyhow::Result<Vec<Vec<u8>>> {
        let arr = v
            .get("members")
            .and_then(Json::as_array)
            .with_context(|| format!("line {n}: `members` (an array of strings) is missing"))?;
        arr.iter()
            .map(|m| {
                m.as_str()
                    .map(|s| s.as_bytes().to_vec())
                    .with_context(|| format!("line {n}: members must be strings"))
            })
            .collect()
    };
    let kind =
        v.get("op").and_then(Json::as_str).with_context(|| format!("line {n}: field `op` is missing"))?;
    Ok(match kind {
        "put" => op::put(&s("key")?, &s("value")?, ttl),
        "del" | "delete" => op::delete(&s("key")?),
        "incr" | "increment" => {
            op::increment(&s("key")?, v.get("delta").and_then(Json::as_i64).unwrap_or(1), ttl)
        }
        "append" => op::append(&s("key")?, &s("value")?, ttl),
        "sadd" => op::set_add(&s("key")?, members()?, ttl),
        "srem" => op::set_remove(&s("key")?, members()?),
        other => bail!("line {n}: unknown op {other:?}; use put, del, incr, append, sadd or srem"),
    })
}

async fn batch(client: &Client, file: Option<PathBuf>, js: bool) -> anyhow::Result<()> {
    let text = match file {
        Some(f) => std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
        None => {
            let mut s = String::new();
            std::io::stdin().lock().read_to_string(&mut s)?;
            s
        }
    };
    let ops = text
        .as_bytes()
        .lines()
        .enumerate()
        .filter_map(|(i, l)| match l {
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(batch_line(&l, i + 1)),
            Err(e) => Some(Err(e.into())),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let results = client.batch_write(ops).await?;
    let mut failed = 0;
    for (i, r) in results.iter().enumerate() {
        use proto::write_result::Outcome;
        let (j, human) = match &r.outcome {
            Some(Outcome::Error(e)) => {
                failed += 1;
                let code = tonic::Code::from(e.code);
                (
                    json!({ "error": { "code": format!("{code:?}"), "message": e.message } }),
                    format!("{i}: ERROR {code:?}: {}", e.message),
                )
            }
            _ => (
                json!({ "ok": true, "version": version_json(&r.version) }),
                format!("{i}: OK (version {})", version_str(&r.version)),
            ),
        };
        print(js, j, human);
    }
    if failed > 0 {
        bail!("{failed} of {} batch items failed", results.len());
    }
    Ok(())
}

/// The endpoint and TLS settings of this process's connections, from the global flags (set
/// once in main).
static CONNECTION: std::sync::OnceLock<(String, geokv_client::Security)> = std::sync::OnceLock::new();

pub(crate) fn set_connection(endpoint: String, security: geokv_client::Security) {
    let _ = CONNECTION.set((endpoint, security));
}

pub(crate) fn security() -> geokv_client::Security {
    CONNECTION.get().map(|c| c.1.clone()).unwrap_or_default()
}

pub(crate) fn endpoint() -> String {
    CONNECTION.get().map(|c| c.0.clone()).unwrap_or_default()
}

pub(crate) async fn peer_client(
    peer: &str,
) -> anyhow::Result<proto::cluster_client::ClusterClient<tonic::transport::Channel>> {
    let channel = geokv_client::channel(peer, &security())
        .await
        .with_context(|| format!("cannot connect to {peer}"))?;
    Ok(proto::cluster_client::ClusterClient::new(channel))
}

fn link_json(l: &proto::LinkSettings) -> Json {
    json!({ "delay_ms": l.delay_ms, "jitter_ms": l.jitter_ms, "loss": l.loss, "cut": l.cut })
}

async fn repl_status(peer: Option<&str>, js: bool) -> anyhow::Result<()> {
    let s = AdminConn::open(peer).await?.replication_status(proto::ReplicationStatusRequest {}).await?;
    let dests: Vec<Json> = s
        .destinations
        .iter()
        .map(|d| {
            json!({ "destination": d.destination, "lag_ms": d.oldest_unacked_ms, "backlog_entries": d.backlog_entries,
                "backlog_bytes": d.backlog_bytes, "acked_seq": d.acked_seq, "committed_seq": d.committed_seq,
                "batches_sent": d.batches_sent, "deltas_sent": d.deltas_sent, "deltas_acked": d.deltas_acked,
                "raw_bytes": d.raw_bytes, "wire_bytes": d.wire_bytes, "resends": d.resends,
                "takeover_acked_seq": d.takeover_acked_seq, "takeover_covered": d.takeover_covered,
                "takeover_shipped": d.takeover_shipped,
                "link": d.link.as_ref().map(link_json) })
        })
        .collect();
    let j = json!({ "node_id": s.node_id, "region": s.region, "destinations": dests,
        "batches_received": s.batches_received, "deltas_applied": s.deltas_applied, "drift_rejections": s.drift_rejections });
    let rows = s.destinations.iter().map(|d| {
        let link = d.link.unwrap_or_default();
        let link = if link.cut {
            "cut".to_string()
        } else {
            format!("{} ms ±{} loss {}", link.delay_ms, link.jitter_ms, link.loss)
        };
        vec![
            d.destination.clone(),
            d.oldest_unacked_ms.to_string(),
            d.backlog_entries.to_string(),
            d.backlog_bytes.to_string(),
            d.raw_bytes.to_string(),
            d.wire_bytes.to_string(),
            link,
        ]
    });
    let human = format!(
        "node {} in {}: received {} batches, applied {} deltas, {} drift rejections\n{}",
        s.node_id,
        s.region,
        s.batches_received,
        s.deltas_applied,
        s.drift_rejections,
        table(&["to", "lag ms", "backlog", "backlog B", "raw B", "wire B", "link"], rows, &[1, 2, 3, 4, 5])
    );
    print(js, j, human);
    Ok(())
}

async fn set_link(
    peer: Option<&str>,
    to: &str,
    (delay_ms, jitter_ms, loss, cut): (Option<u64>, Option<u64>, Option<f64>, Option<bool>),
    js: bool,
) -> anyhow::Result<()> {
    let mut c = AdminConn::open(peer).await?;
    let status = c.replication_status(proto::ReplicationStatusRequest {}).await?;
    let current = status.destinations.iter().find(|d| d.destination == to).with_context(|| {
        let known: Vec<&str> = status.destinations.iter().map(|d| d.destination.as_str()).collect();
        format!("node {} in {} replicates to {known:?}, not to {to:?}", status.node_id, status.region)
    })?;
    let mut link = current.link.unwrap_or_default();
    link.delay_ms = delay_ms.unwrap_or(link.delay_ms);
    link.jitter_ms = jitter_ms.unwrap_or(link.jitter_ms);
    link.loss = loss.unwrap_or(link.loss);
    link.cut = cut.unwrap_or(link.cut);
    c.set_link(proto::SetLinkRequest { destination: to.to_string(), link: Some(link) }).await?;
    print(js, link_json(&link), format!("link {} -> {to}: {}", status.region, link_json(&link)));
    Ok(())
}

async fn move_cmd(peer: Option<&str>, leave: bool, js: bool) -> anyhow::Result<()> {
    let mut c = AdminConn::open(peer).await?;
    let r = if leave {
        c.leave(proto::LeaveRequest {}).await?
    } else {
        c.cleanup(proto::CleanupRequest {}).await?
    };
    let verb = if leave { "streamed" } else { "dropped" };
    let j = json!({ "keys": r.keys, "bytes": r.bytes, "status": r.status });
    print(js, j, format!("{verb} {} keys ({} B); node is now {}", r.keys, r.bytes, r.status));
    Ok(())
}

async fn peer_stats(peer: Option<&str>, js: bool) -> anyhow::Result<()> {
    let s = AdminConn::open(peer).await?.stats(proto::StatsRequest {}).await?;
    let members: Vec<Json> = s
        .members
        .iter()
        .map(|m| {
            json!({ "node_id": m.node_id, "health": m.health, "status": m.status, "region": m.region,
                "client_addr": m.client_addr, "peer_addr": m.peer_addr, "version": m.version })
        })
        .collect();
    let j = json!({
        "node_id": s.node_id, "region": s.region, "members": members,
        "anti_entropy": { "rounds": s.ae_rounds, "keys_compared": s.ae_keys_compared, "keys_repaired": s.ae_keys_repaired,
            "state_bytes_sent": s.ae_state_bytes_sent, "state_bytes_received": s.ae_state_bytes_received, "summary_bytes": s.ae_summary_bytes },
        "hints": { "pending": s.hints_pending, "delivered": s.hints_delivered },
        "read_repairs": s.read_repairs,
    });
    let mut human = format!("node {} in region {}\n", s.node_id, s.region);
    for m in &s.members {
        human.push_str(&format!(
            "  node {:>4}  {:<8} {:<8} {:<12} client {} peer {}\n",
            m.node_id, m.health, m.status, m.region, m.client_addr, m.peer_addr
        ));
    }
    human.push_str(&format!(
        "anti-entropy: {} rounds, {} keys compared, {} repaired, {} B sent, {} B received\nhints: {} pending, {} delivered; read repairs: {}",
        s.ae_rounds, s.ae_keys_compared, s.ae_keys_repaired, s.ae_state_bytes_sent, s.ae_state_bytes_received,
        s.hints_pending, s.hints_delivered, s.read_repairs
    ));
    print(js, j, human);
    Ok(())
}
