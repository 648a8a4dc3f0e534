//! Geographic fences: simple polygons over longitude/latitude, and whether a region's location
//! lies inside one.
//!
//! Coordinates are planar degrees (longitude as x, latitude as y): good for fences drawn
//! around countries and continents, not for fences that cross the antimeridian (±180°
//! longitude) or contain a pole, which validation refuses or which must be split.

use geo_types::{Coord, LineString, Point, Polygon};

/// Why a list of vertices is not a usable fence.
#[derive(Debug, Clone, PartialEq)]
pub enum FenceError {
    TooFewVertices(usize),
    OutOfRange { index: usize, lon: f64, lat: f64 },
    ZeroArea,
    SelfIntersecting { a: usize, b: usize },
}

impl std::fmt::Display for FenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceError::TooFewVertices(n) => {
                write!(f, "the fence has {n} distinct vertices; a polygon needs at least 3")
            }
            FenceError::OutOfRange { index, lon, lat } => write!(
                f,
                "vertex {index} is [{lon}, {lat}]; vertices are [longitude, latitude] with longitude in -180..180 and latitude in -90..90"
            ),
            FenceError::ZeroArea => write!(f, "the fence's vertices lie on one line (the polygon has no area)"),
            FenceError::SelfIntersecting { a, b } => write!(
                f,
                "the fence crosses itself (edge {a} and edge {b} intersect); list the vertices in order around the area"
            ),
        }
    }
}

/// Builds a polygon from `[longitude, latitude]` vertices (closing it if needed) and checks that
/// it is a simple polygon: at least three distinct vertices in range, non-zero area, and no two
/// edges crossing or overlapping.
pub fn fence_polygon(vertices: &[[f64; 2]]) -> Result<Polygon<f64>, FenceError> {
    for (index, &[lon, lat]) in vertices.iter().enumerate() {
        if !lon.is_finite()
            || !lat.is_finite()
            || !(-180.0..=180.0).contains(&lon)
            || !(-90.0..=90.0).contains(&lat)
        {
            return Err(FenceError::OutOfRange { index, lon, lat });
        }
    }
    let mut ring: Vec<Coord<f64>> = Vec::with_capacity(vertices.len());
    for &[x, y] in vertices {
        if ring.last() != Some(&Coord { x, y }) {
            ring.push(Coord { x, y });
        }
    }
    if ring.len() > 1 && ring.first() == ring.last() {
        ring.pop();
    }
    let mut distinct: Vec<(u64, u64)> = ring.iter().map(|c| (c.x.to_bits(), c.y.to_bits())).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 3 {
        return Err(FenceError::TooFewVertices(distinct.len()));
    }
    if ring.iter().all(|&c| cross(ring[0], ring[1], c).abs() < 1e-12) {
        return Err(FenceError::ZeroArea);
    }
    let n = ring.len();
    let edge = |i: usize| (ring[i], ring[(i + 1) % n]);
    for a in 0..n {
        for b in a + 1..n {
            let adjacent = b == a + 1 || (a == 0 && b == n - 1);
            let (p1, p2) = edge(a);
            let (q1, q2) = edge(b);
            let crosses = if adjacent {
                // Neighbours share one vertex; they may only meet there (no folding back).
                let shared = if b == a + 1 { p2 } else { p1 };
                let (other_p, other_q) = if b == a + 1 { (p1, q2) } else { (p2, q1) };
                collinear_overlap(shared, other_p, other_q)
            } else {
                segments_intersect(p1, p2, q1, q2)
            };
            if crosses {
                return Err(FenceError::SelfIntersecting { a, b });
            }
        }
    }
    if signed_area(&ring).abs() < 1e-12 {
        return Err(FenceError::ZeroArea);
    }
    ring.push(ring[0]);
    Ok(Polygon::new(LineString::new(ring), vec![]))
}

/// Whether `p` lies inside `fence` or on its boundary.
pub fn fence_contains(fence: &Polygon<f64>, p: Point<f64>) -> bool {
    let ring = &fence.exterior().0;
    let c = p.0;
    let mut inside = false;
    for w in ring.windows(2) {
        let (a, b) = (w[0], w[1]);
        if on_segment(a, b, c) {
            return true;
        }
        if (a.y > c.y) != (b.y > c.y) {
            let x = a.x + (c.y - a.y) * (b.x - a.x) / (b.y - a.y);
            if c.x < x {
                inside = !inside;
            }
        }
    }
    inside
}

fn signed_area(ring: &[Coord<f64>]) -> f64 {
    let n = ring.len();
    (0..n).map(|i| ring[i].x * ring[(i + 1) % n].y - ring[(i + 1) % n].x * ring[i].y).sum::<f64>() / 2.0
}

fn cross(o: Coord<f64>, a: Coord<f64>, b: Coord<f64>) -> f64 {
    (a.x - o.x) * (b.y - o.y) - (a.y - o.y) * (b.x - o.x)
}

fn on_segment(a: Coord<f64>, b: Coord<f64>, c: Coord<f64>) -> bool {
    cross(a, b, c).abs() < 1e-12
        && c.x >= a.x.min(b.x)
        && c.x <= a.x.max(b.x)
        && c.y >= a.y.min(b.y)
        && c.y <= a.y.max(b.y)
}

fn segments_intersect(p1: Coord<f64>, p2: Coord<f64>, q1: Coord<f64>, q2: Coord<f64>) -> bool {
    let d1 = cross(q1, q2, p1);
    let d2 = cross(q1, q2, p2);
    let d3 = cross(p1, p2, q1);
    let d4 = cross(p1, p2, q2);
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    on_segment(q1, q2, p1) || on_segment(q1, q2, p2) || on_segment(p1, p2, q1) || on_segment(p1, p2, q2)
}

/// Whether two edges that share vertex `shared` and continue to `p` and `q` fold back over
/// each other (point the same way along one line).
fn collinear_overlap(shared: Coord<f64>, p: Coord<f64>, q: Coord<f64>) -> bool {
    cross(shared, p, q).abs() < 1e-12
        && (p.x - shared.x) * (q.x - shared.x) + (p.y - shared.y) * (q.y - shared.y) > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Roughly the EU/EEA: Portugal to Finland, Ireland to Cyprus.
    const EUROPE: [[f64; 2]; 4] = [[-25.0, 34.0], [45.0, 34.0], [45.0, 72.0], [-25.0, 72.0]];

    #[test]
    fn a_fence_contains_the_cities_inside_it_and_not_the_others() {
        let fence = fence_polygon(&EUROPE).unwrap();
        assert!(fence_contains(&fence, Point::new(-6.2603, 53.3498)), "Dublin");
        assert!(fence_contains(&fence, Point::new(8.6821, 50.1109)), "Frankfurt");
        assert!(!fence_contains(&fence, Point::new(-77.436, 39.0438)), "Ashburn");
        assert!(!fence_contains(&fence, Point::new(103.8198, 1.3521)), "Singapore");
        assert!(fence_contains(&fence, Point::new(-25.0, 50.0)), "on the boundary counts as inside");
    }

    #[test]
    fn concave_fences_follow_their_shape() {
        // A "U": the notch between the arms is outside.
        let u = fence_polygon(&[
            [0.0, 0.0],
            [3.0, 0.0],
            [3.0, 3.0],
            [2.0, 3.0],
            [2.0, 1.0],
            [1.0, 1.0],
            [1.0, 3.0],
            [0.0, 3.0],
        ])
        .unwrap();
        assert!(fence_contains(&u, Point::new(0.5, 2.5)));
        assert!(fence_contains(&u, Point::new(2.5, 2.5)));
        assert!(!fence_contains(&u, Point::new(1.5, 2.5)));
    }

    #[test]
    fn bad_fences_are_refused_with_the_reason() {
        assert_eq!(fence_polygon(&[[0.0, 0.0], [1.0, 1.0]]), Err(FenceError::TooFewVertices(2)));
        assert_eq!(
            fence_polygon(&[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]),
            Err(FenceError::TooFewVertices(2))
        );
        assert_eq!(fence_polygon(&[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), Err(FenceError::ZeroArea));
        assert!(matches!(
            fence_polygon(&[[0.0, 0.0], [200.0, 1.0], [2.0, 2.0]]),
            Err(FenceError::OutOfRange { index: 1, .. })
        ));
        // A bow tie: edges 0 and 2 cross.
        assert!(matches!(
            fence_polygon(&[[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0]]),
            Err(FenceError::SelfIntersecting { .. })
        ));
        // An explicit closing vertex is accepted.
        assert!(fence_polygon(&[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]).is_ok());
        let e = fence_polygon(&[[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0]]).unwrap_err().to_string();
        assert!(e.contains("crosses itself"), "{e}");
    }
}
