//! How a key shows in labels and messages.

/// A key as a Prometheus label value: UTF-8 (invalid bytes as \xNN), control characters
/// escaped, at most `max` characters (then `...`).
pub fn key_label(key: &[u8], max: usize) -> String {
    let mut out = String::new();
    for chunk in key.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if out.chars().count() > max {
        out = out.chars().take(max).collect::<String>() + "...";
    }
    out
}
