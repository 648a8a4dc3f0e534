//! `geokv residency ...`: validate a policy file, apply it to a running deployment, and
//! explain where a key may live and where its copies are.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use geokv_client::proto;
use geokv_topology::{Policy, Topology};
use serde_json::{json, Value as Json};

use crate::admin_conn::AdminConn;
use crate::client_cmd::print;
use crate::output::bytes_human;

#[derive(Subcommand)]
pub enum ResidencyCommand {
    /// Validate a policy file against a topology without contacting any node, and print which
    /// regions each rule allows.
    Check {
        /// The policy file (TOML, see topology/residency.toml).
        file: PathBuf,
        /// The topology file whose regions the policy refers to.
        #[arg(long)]
        topology: PathBuf,
    },
    /// Apply a policy to every node of every region: each node installs it, then erases the
    /// keys its region may no longer hold and ships keys to regions that may now hold them.
    /// Prints a line per node as it finishes. Talks to the Admin service at --endpoint (or,
    /// with --peer, to a node's peer address).
    Apply {
        file: PathBuf,
        #[arg(long)]
        peer: Option<String>,
    },
    /// Print the rule deciding a key, the regions allowed to hold it, and which nodes hold a
    /// copy (state or hints) now. Talks to the Admin service at --endpoint (or, with --peer,
    /// to a node's peer address).
    Explain {
        key: String,
        #[arg(long)]
        peer: Option<String>,
    },
}

pub async fn run(cmd: ResidencyCommand, js: bool) -> anyhow::Result<()> {
    match cmd {
        ResidencyCommand::Check { file, topology } => check(&file, &topology, js),
        ResidencyCommand::Apply { file, peer } => apply(&file, peer.as_deref(), js).await,
        ResidencyCommand::Explain { key, peer } => explain(key.into_bytes(), peer.as_deref(), js).await,
    }
}

fn check(file: &Path, topology: &Path, js: bool) -> anyhow::Result<()> {
    let topology = Topology::load(topology)?;
    let policy = Policy::load(file, &topology)?;
    let mut rules: Vec<_> = policy.rules().to_vec();
    rules.sort_by_key(|r| r.line);
    let mut human =
        format!("{}: valid, {} rules (the longest matching prefix decides)\n", file.display(), rules.len());
    let mut out = Vec::new();
    for r in &rules {
        let allowed: Vec<&String> = r.allowed.iter().collect();
        human.push_str(&format!(
            "  line {:<4} {:<20} prefix {:<16} {} -> {} (on_foreign = {})\n",
            r.line,
            r.name,
            format!("{:?}", String::from_utf8_lossy(&r.prefix)),
            r.allow,
            allowed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            r.on_foreign.as_str()
        ));
        out.push(json!({ "name": r.name, "line": r.line, "prefix": String::from_utf8_lossy(&r.prefix),
            "selector": r.allow.to_string(), "allowed": allowed, "on_foreign": r.on_foreign.as_str() }));
    }
    print(js, json!({ "file": file.display().to_string(), "rules": out }), human.trim_end().to_string());
    Ok(())
}

fn report_json(r: &proto::ResidencyReport) -> Json {
    json!({ "node_id": r.node_id, "region": r.region, "version": r.version, "phase": r.phase, "ok": r.ok,
        "error": r.error, "keys_scanned": r.keys_scanned, "keys_erased": r.keys_erased,
        "ttl_entries_erased": r.ttl_entries_erased, "log_entries_erased": r.log_entries_erased,
        "hints_erased": r.hints_erased, "keys_reshipped": r.keys_reshipped,
        "keys_handed_over": r.keys_handed_over, "keys_kept": r.keys_kept, "millis": r.millis })
}

async fn apply(file: &Path, addr: Option<&str>, js: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let req = proto::ApplyResidencyRequest { text, origin: file.display().to_string() };
    let mut stream = AdminConn::open(addr)
        .await?
        .apply_residency(req)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let (mut failed, mut erased, mut reshipped, mut version) = (0, 0, 0, 0);
    let (mut handed, mut kept) = (0, 0);
    while let Some(r) = stream.message().await.map_err(|s| anyhow::anyhow!("{}", s.message()))? {
        version = version.max(r.version);
        if !r.ok {
            failed += 1;
        }
        erased += r.keys_erased;
        reshipped += r.keys_reshipped;
        handed += r.keys_handed_over;
        kept += r.keys_kept;
        let human = if !r.ok {
            format!("node {:<3} {:<12} {:<8} FAILED: {}", r.node_id, r.region, r.phase, r.error)
        } else if r.phase == "adopted" {
            format!("node {:<3} {:<12} adopted version {}", r.node_id, r.region, r.version)
        } else {
            format!(
                "node {:<3} {:<12} enforced version {}: scanned {} keys, handed over {} to the regions now holding them, erased {} (+{} TTL entries, {} change-log entries, {} hints), re-shipped {}, {} ms",
                r.node_id, r.region, r.version, r.keys_scanned, r.keys_handed_over, r.keys_erased,
                r.ttl_entries_erased, r.log_entries_erased, r.hints_erased, r.keys_reshipped, r.millis
            )
        };
        print(js, report_json(&r), human);
    }
    if !js {
        println!("policy version {version}: {handed} keys handed over, {erased} erased, {kept} kept until their new regions have them, {reshipped} re-shipped, {failed} node reports failed");
    }
    if failed > 0 {
        bail!("{failed} node(s) did not take the policy; they take it from their peers when they are back (geokv residency explain shows where copies are)");
    }
    Ok(())
}

async fn explain(key: Vec<u8>, addr: Option<&str>, js: bool) -> anyhow::Result<()> {
    let e = AdminConn::open(addr)
        .await?
        .explain_residency(proto::ExplainResidencyRequest { key: key.clone() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let line = if e.rule_line > 0 { format!(" (line {})", e.rule_line) } else { String::new() };
    let mut human = format!(
        "key {}\nrule {:?}{line}, prefix {:?}, policy version {}\nallowed regions: {} ({}), elsewhere: {}\n{:<6} {:<12} {:<8} {:<10} {:>6}\n",
        bytes_human(&key),
        e.rule,
        String::from_utf8_lossy(&e.prefix),
        e.version,
        e.allowed_regions.join(", "),
        e.selector,
        e.on_foreign,
        "node", "region", "allowed", "copy", "hints"
    );
    let mut violations = 0;
    for c in &e.copies {
        let copy = if !c.reachable {
            format!("? ({})", c.error)
        } else if c.tombstone {
            "tombstone".into()
        } else if c.has_state {
            "value".into()
        } else {
            "-".into()
        };
        if (c.has_state || c.hints > 0) && !c.allowed {
            violations += 1;
        }
        human.push_str(&format!(
            "{:<6} {:<12} {:<8} {:<10} {:>6}\n",
            c.node_id,
            c.region,
            if c.allowed { "yes" } else { "no" },
            copy,
            c.hints
        ));
    }
    if violations > 0 {
        human.push_str(&format!("{violations} node(s) outside the allowed regions hold a copy (an enforcement may still be running)\n"));
    }
    let copies: Vec<Json> = e
        .copies
        .iter()
        .map(|c| {
            json!({ "node_id": c.node_id, "region": c.region, "allowed": c.allowed, "reachable": c.reachable,
            "has_state": c.has_state, "tombstone": c.tombstone, "hints": c.hints, "error": c.error })
        })
        .collect();
    let j = json!({ "key": String::from_utf8_lossy(&key), "rule": e.rule, "rule_line": e.rule_line,
        "prefix": String::from_utf8_lossy(&e.prefix), "version": e.version, "selector": e.selector,
        "on_foreign": e.on_foreign, "allowed_regions": e.allowed_regions, "copies": copies });
    print(js, j, human.trim_end().to_string());
    Ok(())
}
