//! The status page's pictures, drawn on the server as inline SVG (no scripts, no external
//! assets): each region pair's replication lag over the last hour, and the regions on a map by
//! their coordinates with the links between them coloured by lag.

use std::fmt::Write;

use geokv_proto::v1 as pb;
use geokv_replication::HISTORY_WINDOW_MS;

use super::page::{escape, lag_class, LAG_WARN_MS};

const PLOT_W: f64 = 320.0;
const PLOT_H: f64 = 96.0;
/// Room for the lag axis on the left and the time axis below.
const LEFT: f64 = 46.0;
const BOTTOM: f64 = 16.0;
const TOP: f64 = 8.0;
const RIGHT: f64 = 8.0;

/// A lag for people: "850 ms", "12 s", "3 min".
fn short_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{} s", ms / 1_000),
        _ => format!("{} min", ms / 60_000),
    }
}

/// The top of the lag axis: at least 1 s, else the worst lag rounded up to 1, 2 or 5 times a
/// power of ten.
fn axis_top(worst_ms: u64) -> u64 {
    let mut unit = 1_000;
    loop {
        for m in [1, 2, 5] {
            if worst_ms <= unit * m {
                return unit * m;
            }
        }
        unit *= 10;
    }
}

/// One pair's lag over the last hour up to `now_ms`, the worst of each 10-second step.
pub fn lag_plot(cell: &pb::LagCell, now_ms: u64) -> String {
    let from_ms = now_ms.saturating_sub(HISTORY_WINDOW_MS);
    let points: Vec<&pb::LagPoint> = cell.history.iter().filter(|p| p.at_ms >= from_ms).collect();
    let top = axis_top(points.iter().map(|p| p.lag_ms).max().unwrap_or(0));
    let (w, h) = (PLOT_W - LEFT - RIGHT, PLOT_H - TOP - BOTTOM);
    let x = |at: u64| LEFT + w * (at.saturating_sub(from_ms) as f64 / HISTORY_WINDOW_MS as f64).min(1.0);
    let y = |lag: u64| TOP + h * (1.0 - (lag as f64 / top as f64).min(1.0));
    let pair = format!("{}>{}", cell.origin, cell.destination);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"lag-plot\" data-plot=\"{}\" data-points=\"{}\" width=\"{PLOT_W}\" height=\"{PLOT_H}\" viewBox=\"0 0 {PLOT_W} {PLOT_H}\" role=\"img\">\
<title>{} to {}: replication lag from {} to {}</title>\
<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{w}\" height=\"{h}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        escape(&pair),
        points.len(),
        escape(&cell.origin),
        escape(&cell.destination),
        crate::ops::utc_date(from_ms),
        crate::ops::utc_date(now_ms),
    );
    if LAG_WARN_MS < top {
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#f9a825\" stroke-dasharray=\"3 3\"/>",
            LEFT + w,
            y = y(LAG_WARN_MS)
        );
    }
    let axis = "font-size=\"10\" fill=\"#666\"";
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" {axis}>{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\" {axis}>0</text>\
<text x=\"{LEFT}\" y=\"{}\" {axis}>-60 min</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\" {axis}>now</text>",
        LEFT - 4.0,
        TOP + 9.0,
        short_ms(top),
        LEFT - 4.0,
        TOP + h,
        PLOT_H - 3.0,
        LEFT + w,
        PLOT_H - 3.0,
    );
    if points.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" {axis}>no samples yet</text>",
            LEFT + w / 2.0,
            TOP + h / 2.0
        );
    } else {
        let line: Vec<String> =
            points.iter().map(|p| format!("{:.1},{:.1}", x(p.at_ms), y(p.lag_ms))).collect();
        let colour = stroke(lag_class(cell));
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            line.join(" ")
        );
        if let Some(last) = points.last() {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"/>",
                x(last.at_ms),
                y(last.lag_ms)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The colour of a lag class.
fn stroke(class: &str) -> &'static str {
    match class {
        "ok" => "#2e7d32",
        "warn" => "#f9a825",
        "bad" => "#c62828",
        _ => "#9e9e9e",
    }
}

/// Map coordinates (equirectangular, 2 px a degree) of a longitude and latitude.
fn at(lon: f64, lat: f64) -> (f64, f64) {
    ((lon + 180.0) * 2.0, (90.0 - lat) * 2.0)
}

/// The regions on a world map (a grid of meridians and parallels every 30 degrees) by their
/// coordinates, with a line for each pair coloured by the worse of its two directions' lag.
pub fn region_map(places: &[pb::RegionPlace], lags: &[pb::LagCell]) -> String {
    let mut s = String::from(
        "<svg id=\"map\" width=\"720\" height=\"360\" viewBox=\"0 0 720 360\" role=\"img\">\
<title>Regions by their coordinates; lines coloured by replication lag</title>\
<rect width=\"720\" height=\"360\" fill=\"#eef4fa\" stroke=\"#ccc\"/>",
    );
    for lon in (-150..=150).step_by(30) {
        let (x, _) = at(f64::from(lon), 0.0);
        let _ = write!(s, "<line x1=\"{x}\" x2=\"{x}\" y1=\"0\" y2=\"360\" stroke=\"#d5e1ec\"/>");
    }
    for lat in (-60..=60).step_by(30) {
        let (_, y) = at(0.0, f64::from(lat));
        let _ = write!(s, "<line x1=\"0\" x2=\"720\" y1=\"{y}\" y2=\"{y}\" stroke=\"#d5e1ec\"/>");
    }
    let rank = |c: &str| match c {
        "bad" => 3,
        "warn" => 2,
        "ok" => 1,
        _ => 0,
    };
    for (i, a) in places.iter().enumerate() {
        for b in &places[i + 1..] {
            let both: Vec<&pb::LagCell> = lags
                .iter()
                .filter(|c| {
                    (c.origin == a.name && c.destination == b.name)
                        || (c.origin == b.name && c.destination == a.name)
                })
                .collect();
            let class = both.iter().map(|c| lag_class(c)).max_by_key(|c| rank(c)).unwrap_or("na");
            let worst = both.iter().map(|c| c.lag_ms).max().unwrap_or(0);
            let ((x1, y1), (x2, y2)) = (at(a.longitude, a.latitude), at(b.longitude, b.latitude));
            let _ = write!(
                s,
                "<line class=\"link {class}\" data-link=\"{}|{}\" x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{}\" stroke-width=\"3\"><title>{} and {}: worst lag {}</title></line>",
                escape(&a.name),
                escape(&b.name),
                stroke(class),
                escape(&a.name),
                escape(&b.name),
                short_ms(worst)
            );
        }
    }
    for p in places {
        let (x, y) = at(p.longitude, p.latitude);
        let _ = write!(
            s,
            "<g class=\"region\" data-region=\"{}\"><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"6\" fill=\"#1565c0\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#222\">{}</text><title>{} ({:.2}, {:.2})</title></g>",
            escape(&p.name),
            x + 8.0,
            y - 6.0,
            escape(&p.name),
            escape(&p.name),
            p.longitude,
            p.latitude
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(origin: &str, destination: &str, lag_ms: u64, history: &[(u64, u64)]) -> pb::LagCell {
        pb::LagCell {
            origin: origin.into(),
            destination: destination.into(),
            lag_ms,
            nodes_reporting: 1,
            nodes_connected: 1,
            history: history.iter().map(|&(at_ms, lag_ms)| pb::LagPoint { at_ms, lag_ms }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plot_draws_the_last_hour_of_points_and_scales_to_the_worst() {
        let now = 10 * HISTORY_WINDOW_MS;
        let old = now - HISTORY_WINDOW_MS - 10_000;
        let svg =
            lag_plot(&cell("a", "b<", 0, &[(old, 99_000), (now - 20_000, 3_500), (now - 10_000, 0)]), now);
        assert!(svg.contains("data-plot=\"a&gt;b&lt;\" data-points=\"2\""), "{svg}");
        assert!(svg.contains(">5 s</text>"), "the axis tops at the worst point in the window: {svg}");
        assert!(svg.contains("<polyline"), "{svg}");
        let empty = lag_plot(&cell("a", "b", 0, &[]), now);
        assert!(empty.contains("no samples yet") && !empty.contains("<polyline"), "{empty}");
        assert_eq!(
            (axis_top(0), axis_top(1_001), axis_top(12_000), axis_top(60_000)),
            (1_000, 2_000, 20_000, 100_000)
        );
    }

    #[test]
    fn the_map_places_regions_and_colours_each_link_by_its_worse_direction() {
        let places = [
            pb::RegionPlace { name: "eu".into(), longitude: -6.0, latitude: 53.0 },
            pb::RegionPlace { name: "us".into(), longitude: -77.0, latitude: 39.0 },
        ];
        let lags = [cell("eu", "us", 50, &[]), cell("us", "eu", 20_000, &[])];
        let svg = region_map(&places, &lags);
        assert_eq!(svg.matches("<g class=\"region\"").count(), 2, "{svg}");
        assert!(svg.contains("class=\"link bad\" data-link=\"eu|us\""), "{svg}");
        assert!(svg.contains("cx=\"348.0\" cy=\"74.0\""), "Dublin-ish at 2 px a degree: {svg}");
    }
}
