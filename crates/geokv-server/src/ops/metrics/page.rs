//! The status page: plain HTML with inline styles and inline SVG pictures (`charts.rs`), no
//! scripts or external assets; the browser reloads it every 5 seconds.

use std::fmt::Write;

use geokv_proto::v1 as pb;

/// Lag under this is shown as healthy; over [`LAG_BAD_MS`] as bad.
pub(super) const LAG_WARN_MS: u64 = 1_000;
const LAG_BAD_MS: u64 = 10_000;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}.ok{background:#e6f4e6}.warn{background:#fff3cd}\
.bad{background:#f8d7da}.na{color:#888}small{color:#666}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes for people: 1.2 MiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut unit) = (b as f64, 0);
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    )
}

fn health_class(health: &str) -> &'static str {
    match health {
        "alive" => "ok",
        "suspect" => "warn",
        _ => "bad",
    }
}

/// The lag cell's class: bad when no origin node has a stream or the link is cut.
pub(super) fn lag_class(cell: &pb::LagCell) -> &'static str {
    if cell.nodes_reporting == 0 {
        "na"
    } else if cell.cut || cell.nodes_connected == 0 || cell.lag_ms >= LAG_BAD_MS {
        "bad"
    } else if cell.lag_ms >= LAG_WARN_MS {
        "warn"
    } else {
        "ok"
    }
}

/// The page of a node in a cluster.
pub fn render(s: &pb::ClusterStatusResponse) -> String {
    let mut h = head("geokv status");
    let _ = write!(
        h,
        "<h1>geokv status</h1>\n<p><small>gathered by node {} at {}; {} regions, {} nodes</small></p>\n",
        s.gathered_by,
        crate::ops::utc_date(s.at_ms),
        s.regions.len(),
        s.nodes.len()
    );
    h.push_str(
        "<h2>Nodes</h2>\n<table id=\"nodes\"><tr><th class=l>region</th><th>node</th><th class=l>health</th>\
<th class=l>ring</th><th>primary</th><th>replica</th><th>keys</th><th>disk</th><th>hints</th><th>policy</th>\
<th class=l>client</th><th class=l>peer</th></tr>\n",
    );
    for n in &s.nodes {
        let (health, class) = if n.reachable || n.health == "unreachable" {
            (n.health.clone(), health_class(&n.health))
        } else {
            (format!("{} (not answering)", n.health), "bad")
        };
        let figures = if n.reachable {
            format!(
                "<td>{:.1}%</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                n.ownership_primary * 100.0,
                n.ownership_replica * 100.0,
                n.estimated_keys,
                human_bytes(n.disk_bytes),
                n.hints_pending,
                n.residency_version
            )
        } else {
            format!("<td colspan=6 class=\"l na\">{}</td>", escape(&n.error))
        };
        let _ = writeln!(
            h,
            "<tr data-node=\"{}\"><td class=l>{}</td><td>{}</td><td class=\"l {class}\">{}</td><td class=l>{}</td>{figures}<td class=l>{}</td><td class=l>{}</td></tr>",
            n.node_id,
            escape(&n.region),
            n.node_id,
            escape(&health),
            escape(&n.status),
            escape(&n.client_addr),
            escape(&n.peer_addr)
        );
    }
    h.push_str("</table>\n<h2>Replication lag</h2>\n<p><small>Rows ship to columns. Each cell: age of the oldest \
unacknowledged change (worst origin node), backlog entries, last batch's delivery time, emulated link delay.</small></p>\n\
<table id=\"lag\"><tr><th class=l>from \\ to</th>");
    for r in &s.regions {
        let _ = write!(h, "<th>{}</th>", escape(r));
    }
    h.push_str("</tr>\n");
    for origin in &s.regions {
        let _ = write!(h, "<tr><th class=l>{}</th>", escape(origin));
        for dest in &s.regions {
            let cell = s.lags.iter().find(|c| &c.origin == origin && &c.destination == dest);
            match cell {
                None => h.push_str("<td class=na>-</td>"),
                Some(c) if c.nodes_reporting == 0 => h.push_str("<td class=na>no answer</td>"),
                Some(c) => {
                    let link = if c.cut { "cut".to_string() } else { format!("link {} ms", c.link_delay_ms) };
                    let _ = write!(
                        h,
                        "<td class={} data-pair=\"{}>{}\" data-lag-ms=\"{}\">lag {} ms<br>backlog {}<br>delivery {} ms<br><small>{link}, {}/{} streams</small></td>",
                        lag_class(c),
                        escape(origin),
                        escape(dest),
                        c.lag_ms,
                        c.lag_ms,
                        c.backlog_entries,
                        c.last_delivery_ms,
                        c.nodes_connected,
                        c.nodes_reporting
                    );
                }
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n<h2>Lag over the last hour</h2>\n<div id=\"plots\">");
    for c in &s.lags {
        h.push_str(&super::charts::lag_plot(c, s.at_ms));
    }
    h.push_str("</div>\n<h2>Regions</h2>\n");
    h.push_str(&super::charts::region_map(&s.places, &s.lags));
    h.push_str("\n<p><small><a href=\"/metrics\">metrics</a> · <a href=\"/status.json\">status.json</a></small></p>\n</body></html>\n");
    h
}

/// The page of a node running alone.
pub fn render_single(node_id: u64, stats: &geokv_storage::Stats) -> String {
    let mut h = head("geokv status");
    let _ = write!(
        h,
        "<h1>geokv status</h1>\n<p>Node {node_id} runs alone (no topology): no peers, no replication.</p>\n\
<table id=\"nodes\"><tr><th>node</th><th>keys</th><th>disk</th><th>writes</th></tr>\n\
<tr data-node=\"{node_id}\"><td>{node_id}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>\n\
<p><small><a href=\"/metrics\">metrics</a></small></p>\n</body></html>\n",
        stats.estimated_keys,
        human_bytes(stats.disk_bytes),
        stats.writes
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_every_node_and_pair_and_escapes_text() {
        let s = pb::ClusterStatusResponse {
            gathered_by: 1,
            at_ms: 5,
            regions: vec!["eu".into(), "us<x>".into()],
            nodes: vec![
                pb::NodeStatus {
                    node_id: 1,
                    region: "eu".into(),
                    health: "alive".into(),
                    reachable: true,
                    ..Default::default()
                },
                pb::NodeStatus {
                    node_id: 2,
                    region: "us<x>".into(),
                    health: "unreachable".into(),
                    error: "UNAVAILABLE: <refused>".into(),
                    ..Default::default()
                },
            ],
            lags: vec![
                pb::LagCell {
                    origin: "eu".into(),
                    destination: "us<x>".into(),
                    lag_ms: 1500,
                    nodes_reporting: 1,
                    nodes_connected: 1,
                    ..Default::default()
                },
                pb::LagCell { origin: "us<x>".into(), destination: "eu".into(), ..Default::default() },
            ],
            places: vec![
                pb::RegionPlace { name: "eu".into(), longitude: -6.0, latitude: 53.0 },
                pb::RegionPlace { name: "us<x>".into(), longitude: -77.0, latitude: 39.0 },
            ],
        };
        let page = render(&s);
        assert!(page.contains("<tr data-node=\"1\">") && page.contains("<tr data-node=\"2\">"));
        assert!(page.contains("us&lt;x&gt;") && !page.contains("us<x>"));
        assert!(page.contains("&lt;refused&gt;"));
        assert!(page.contains("class=warn data-pair=\"eu>us&lt;x&gt;\" data-lag-ms=\"1500\""));
        assert!(page.contains("<td class=na>no answer</td>"));
        assert_eq!(page.matches("<svg class=\"lag-plot\"").count(), 2, "a plot per pair");
        assert!(page.contains("<svg id=\"map\"") && page.contains("data-link=\"eu|us&lt;x&gt;\""));
        assert!(page.contains("1970-01-01 00:00:00 UTC"), "times are dates");
        assert!(
            !page.contains("<script") && !page.contains("http://") && !page.contains("https://"),
            "no external assets"
        );
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
