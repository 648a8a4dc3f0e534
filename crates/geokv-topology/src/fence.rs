//! Geographic fences: simple polygons over longitude/latitude, and whether a region's location
//! lies inside one.
//!
//! Coordinates are planar degrees (longitude as x, latitude as y): good for fences drawn
//! around countries and continents, not for fences that cross the antimeridian (±180°
//! longitude) or contain a pole, which validation refuses or which must be split.
//!
//! The geometry is the `geo` crate's, on its robust (exact-sign) orientation predicates:
//! collinearity by its kernel's `orient2d`, edge crossings by `line_intersection`, area by
//! `Area`, and containment by `Intersects` (inside or on the boundary).

use geo::kernels::{Kernel, Orientation, RobustKernel};
use geo::line_intersection::{line_intersection, LineIntersection};
use geo::{Area, Intersects};
use geo_types::{Coord, Line, LineString, Point, Polygon};

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
    if ring.iter().all(|&c| RobustKernel::orient2d(ring[0], ring[1], c) == Orientation::Collinear) {
        return Err(FenceError::ZeroArea);
    }
    // Edge by edge rather than `geo::Validation`, which says that a ring intersects itself but
    // not where: the error names the two edges.
    let n = ring.len();
    let edge = |i: usize| Line::new(ring[i], ring[(i + 1) % n]);
    for a in 0..n {
        for b in a + 1..n {
            let adjacent = b == a + 1 || (a == 0 && b == n - 1);
            let crosses = match line_intersection(edge(a), edge(b)) {
                None => false,
                // Neighbours share one vertex; they may only meet there (no folding back).
                Some(LineIntersection::SinglePoint { .. }) => !adjacent,
                Some(LineIntersection::Collinear { .. }) => true,
            };
            if crosses {
                return Err(FenceError::SelfIntersecting { a, b });
            }
        }
    }
    ring.push(ring[0]);
    let polygon = Polygon::new(LineString::new(ring), vec![]);
    if polygon.unsigned_area() < 1e-12 {
        return Err(FenceError::ZeroArea);
    }
    Ok(polygon)
}

/// Whether `p` lies inside `fence` or on its boundary.
pub fn fence_contains(fence: &Polygon<f64>, p: Point<f64>) -> bool {
    fence.intersects(&p)
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

    #[test]
    fn rings_that_fold_back_or_touch_themselves_are_refused() {
        // Edge 1 runs up the east side and edge 2 comes back down over it (a spike).
        assert_eq!(
            fence_polygon(&[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [4.0, 2.0], [0.0, 4.0]]),
            Err(FenceError::SelfIntersecting { a: 1, b: 2 })
        );
        // Two triangles meeting at one vertex (an hourglass): edges 1 and 4 touch at [1, 1].
        assert_eq!(
            fence_polygon(&[[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 2.0], [1.0, 1.0]]),
            Err(FenceError::SelfIntersecting { a: 1, b: 4 })
        );
        // A vertex in the middle of a straight side is fine.
        assert!(fence_polygon(&[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]]).is_ok());
    }
}
