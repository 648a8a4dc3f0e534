//! The client commands: one gRPC call each (to the first of `--endpoints` that answers),
//! printed for people or as JSON.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use geokv_client::{op, proto, Failover, ScanOptions};
use serde_json::{json, Value as Json};

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
    /// Give a key of any type a time to live (500ms, 10s, 5m, 1h30m, 2d), keeping its value.
    Expire {
        key: String,
        #[arg(value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Take a key's time to live away: it no longer expires.
    Persist { key: String },
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
        /// 32 hex digits naming this append: running the command again with the same id
        /// (after exit status 7, say) appends once, for 10 minutes.
        #[arg(long, value_parser = parse_request_id)]
        request_id: Option<geokv_client::RequestId>,
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
    /// Apply many writes from JSON lines, e.g. {"op":"put","key":"k","value":"v","ttl_ms":1000}.
    /// Ops: put, del, incr (delta), append, sadd / srem (members), expire (ttl_ms, or none to
    /// persist). Reads stdin without --file.
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

/// The error of an increment or append sent with request id `id`; when the command chose the
/// id and the write may have been applied, it names the id to run the command again with.
fn name_request_id(
    e: geokv_client::ClientError,
    given: bool,
    command: &str,
    id: geokv_client::RequestId,
) -> anyhow::Error {
    let applied_maybe = !e.not_applied();
    let e = anyhow::Error::from(e);
    if given || !applied_maybe {
        return e;
    }
    let id = u128::from_be_bytes(id);
    e.context(format!(
        "the {command} may have been applied; `geokv {command} ... --request-id {id:032x}` within 10 minutes applies it once either way"
    ))
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
    // Every node of --endpoints is tried once, in order, while the ones before it are down or
    // draining (a write that must not run twice goes on only when it was certainly not applied).
    let mut client = Failover::connect(&opts.endpoints(), &security())?
        .with_timeout(opts.timeout)
        .with_patience(Duration::ZERO);
    if matches!(
        cmd,
        ClientCommand::Incr { request_id: None, .. }
            | ClientCommand::Append { request_id: None, .. }
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
        ClientCommand::Expire { key, ttl } => expire(&client, &arg("key", &key)?, Some(ttl), js).await?,
        ClientCommand::Persist { key } => expire(&client, &arg("key", &key)?, None, js).await?,
        ClientCommand::Del { key } => {
            let r = client.delete(&arg("key", &key)?).await?;
            let human = if r.existed { "deleted" } else { "deleted (it did not exist)" };
            print(js, json!({ "existed": r.existed, "version": version_json(&r.version) }), human.into());
        }
        ClientCommand::Incr { key, delta, ttl, request_id } => {
            let key = arg("key", &key)?;
            // Without --request-id, one of our own, named on failure: running the command
            // again with it cannot count twice.
            let id = request_id.unwrap_or_else(geokv_client::new_request_id);
            let r = client
                .increment_once(&key, delta, ttl, id)
                .await
                .map_err(|e| name_request_id(e, request_id.is_some(), "incr", id))?;
            let j = json!({ "value": r.value, "version": version_json(&r.version), "ttl_remaining_ms": r.ttl_remaining_ms });
            print(js, j, r.value.to_string());
        }
        ClientCommand::Append { key, ttl, request_id, .. } => {
            let value = value.unwrap_or_default();
            // As for incr: an id of our own, named when the outcome is unknown.
            let id = request_id.unwrap_or_else(geokv_client::new_request_id);
            let r = client
                .append_once(&arg("key", &key)?, &value, ttl, id)
                .await
                .map_err(|e| name_request_id(e, request_id.is_some(), "append", id))?;
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

/// `expire` and `persist`: an absent key is said so (exit status 0, as `get`).
async fn expire(client: &Failover, key: &[u8], ttl: Option<Duration>, js: bool) -> anyhow::Result<()> {
    let r = client.expire(key, ttl).await?;
    let j = json!({ "existed": r.existed, "version": version_json(&r.version), "ttl_remaining_ms": r.ttl_remaining_ms });
    let human = if r.existed { format!("OK{}", ttl_human(r.ttl_remaining_ms)) } else { "(absent)".into() };
    print(js, j, human);
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
    // A TTL that is there must be a number of milliseconds: an `expire` without one persists.
    let ttl = match v.get("ttl_ms") {
        None | Some(Json::Null) => None,
        Some(t) => Some(Duration::from_millis(
            t.as_u64()
                .with_context(|| format!("line {n}: `ttl_ms` must be a whole number of milliseconds"))?,
        )),
    };
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
        "expire" => op::expire(&s("key")?, ttl),
        other => bail!("line {n}: unknown op {other:?}; use put, del, incr, append, sadd, srem or expire"),
    })
}

async fn batch(client: &Failover, file: Option<PathBuf>, js: bool) -> anyhow::Result<()> {
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
        .collect::<anyhow::Result<Vec<_>>>()
        // A malformed line: nothing is sent (exit status 2).
        .map_err(|e| crate::cli_io::usage(format!("{e:#}")))?;
    let results = client.batch_write(ops).await?;
    let mut failed = 0;
    for (i, r) in results.iter().enumerate() {
        use proto::write_result::Outcome;
        let (j, human) = match &r.outcome {
            Some(Outcome::Error(e)) => {
                failed += 1;
                let code = geokv_client::Code::from_i32(e.code);
                (
                    json!({ "error": { "code": format!("{code:?}"), "reason": e.reason, "message": e.message,
                        "retry_after_ms": e.retry_after_ms } }),
                    format!("{i}: ERROR {code:?} {}: {}", e.reason, e.message),
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
static CONNECTION: std::sync::OnceLock<(Vec<String>, geokv_client::Security)> = std::sync::OnceLock::new();

pub(crate) fn set_connection(endpoints: Vec<String>, security: geokv_client::Security) {
    let _ = CONNECTION.set((endpoints, security));
}

pub(crate) fn security() -> geokv_client::Security {
    CONNECTION.get().map(|c| c.1.clone()).unwrap_or_default()
}

/// `--endpoints`, in order.
pub(crate) fn endpoints() -> Vec<String> {
    CONNECTION.get().map(|c| c.0.clone()).unwrap_or_default()
}

pub(crate) async fn peer_client(
    peer: &str,
) -> anyhow::Result<proto::cluster_client::ClusterClient<tonic::transport::Channel>> {
    let channel = geokv_client::grpc::channel(peer, &security())
        .await
        .with_context(|| format!("cannot connect to {peer}"))?;
    Ok(proto::cluster_client::ClusterClient::new(channel))
}
