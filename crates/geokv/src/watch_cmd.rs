//! `geokv watch`: streams the changes of keys under a prefix, going on through the next node
//! of `--endpoints` when its node goes away, from the last revision it got.

use base64::Engine as _;
use geokv_client::{proto, Failover};
use serde_json::json;

use crate::output::{bytes_human, bytes_json, value_human, value_json, version_json, version_str};
use crate::ClientOpts;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct WatchArgs {
    pub prefix: String,
    pub from: Option<String>,
    pub count: Option<u64>,
}

pub async fn run(args: WatchArgs, opts: &ClientOpts) -> anyhow::Result<()> {
    let prefix = opts.key_encoding.arg("prefix", &args.prefix)?;
    let from = match args.from.as_deref() {
        Some(text) => Some(B64.decode(text.trim()).map_err(|e| {
            crate::cli_io::usage(format!("--from is not base64 (pass a revision as printed): {e}"))
        })?),
        None => None,
    };
    let client = Failover::connect(&opts.endpoints(), &opts.security())?.with_timeout(opts.timeout);
    let mut watch = client.watch(&prefix, from);
    let mut seen = 0u64;
    let json = opts.json;
    while let Some(response) = watch.next().await? {
        let revision = B64.encode(&response.revision);
        if response.events.is_empty() {
            if json {
                println!("{}", json!({ "revision": revision }));
            }
            continue;
        }
        let last = response.events.len() - 1;
        for (i, e) in response.events.iter().enumerate() {
            if json {
                let mut line = event_json(e);
                if i == last {
                    line["revision"] = json!(revision);
                }
                println!("{line}");
            } else {
                println!("{}", event_human(e));
            }
            seen += 1;
        }
        // Only at the end of a response: its revision covers all of its events.
        if args.count.is_some_and(|n| seen >= n) {
            if !json {
                eprintln!("revision {revision}");
            }
            return Ok(());
        }
    }
    Ok(())
}

fn event_json(e: &proto::WatchEvent) -> serde_json::Value {
    json!({
        "key": bytes_json(&e.key),
        "deleted": e.deleted,
        "value": if e.deleted { serde_json::Value::Null } else { value_json(&e.value) },
        "version": version_json(&e.version),
        "ttl_remaining_ms": e.ttl_remaining_ms,
    })
}

fn event_human(e: &proto::WatchEvent) -> String {
    if e.deleted {
        return format!("DELETE {}  (version {})", bytes_human(&e.key), version_str(&e.version));
    }
    let (value, kind) = value_human(&e.value);
    format!("PUT {} = {}  ({kind}, version {})", bytes_human(&e.key), value, version_str(&e.version))
}
