//! Human and JSON renderings of responses.

use geokv_client::proto;
use serde_json::{json, Value as Json};

/// Bytes as a JSON value: a string when they are UTF-8, else `{"hex": "..."}`.
pub fn bytes_json(b: &[u8]) -> Json {
    match std::str::from_utf8(b) {
        Ok(s) => Json::String(s.into()),
        Err(_) => json!({ "hex": hex(b) }),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes for a terminal: UTF-8 as is (quoted), anything else escaped.
pub fn bytes_human(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("b\"{}\"", b.escape_ascii()),
    }
}

pub fn version_str(v: &Option<proto::Version>) -> String {
    v.as_ref().map(|v| format!("{}:{}", v.hlc, v.node_id)).unwrap_or_else(|| "-".into())
}

pub fn version_json(v: &Option<proto::Version>) -> Json {
    v.as_ref().map(|v| json!({ "hlc": v.hlc, "node_id": v.node_id })).unwrap_or(Json::Null)
}

pub fn ttl_human(ttl: Option<u64>) -> String {
    ttl.map(|ms| format!(", ttl {:.1}s", ms as f64 / 1000.0)).unwrap_or_default()
}

pub fn value_json(v: &Option<proto::Value>) -> Json {
    use proto::value::Kind;
    match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::Register(b)) => json!({ "type": "register", "value": bytes_json(b) }),
        Some(Kind::Counter(n)) => json!({ "type": "counter", "value": n }),
        Some(Kind::Set(s)) => {
            json!({ "type": "set", "value": s.members.iter().map(|m| bytes_json(m)).collect::<Vec<_>>() })
        }
        None => Json::Null,
    }
}

pub fn value_human(v: &Option<proto::Value>) -> (String, &'static str) {
    use proto::value::Kind;
    match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::Register(b)) => (bytes_human(b), "register"),
        Some(Kind::Counter(n)) => (n.to_string(), "counter"),
        Some(Kind::Set(s)) => {
            let members: Vec<String> = s.members.iter().map(|m| bytes_human(m)).collect();
            (format!("{{{}}}", members.join(", ")), "set")
        }
        None => ("-".into(), "keys-only"),
    }
}

pub fn entry_json(e: &proto::Entry) -> Json {
    json!({
        "key": bytes_json(&e.key),
        "value": value_json(&e.value),
        "version": version_json(&e.version),
        "ttl_remaining_ms": e.ttl_remaining_ms,
    })
}

pub fn entry_human(e: &proto::Entry) -> String {
    let (value, kind) = value_human(&e.value);
    format!(
        "{} = {}  ({}, version {}{})",
        bytes_human(&e.key),
        value,
        kind,
        version_str(&e.version),
        ttl_human(e.ttl_remaining_ms)
    )
}

/// A table for a terminal (comfy-table: columns as wide as their widest cell, so long region
/// names and addresses do not push the others out of line). `right`: the columns of numbers,
/// aligned right.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>, right: &[usize]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    for &i in right {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    t.trim_fmt()
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_columns_fit_their_widest_cell() {
        let t = super::table(
            &["region", "lag ms"],
            vec![vec!["a-very-long-region-name-indeed".into(), "5".into()], vec!["eu".into(), "1234".into()]],
            &[1],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        // The numbers end in the same column however long the region names are.
        let ends: Vec<usize> = lines[1..].iter().map(|l| l.trim_end().len()).collect();
        assert_eq!(ends[0], ends[1], "{t}");
        assert!(lines[1].contains("a-very-long-region-name-indeed"));
    }
}
