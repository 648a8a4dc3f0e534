//! Great-circle distance between region locations: the `geo` crate's haversine on a sphere of
//! the mean Earth radius.

use std::f64::consts::PI;

use geo::{Distance, HaversineMeasure};
use geo_types::Point;

/// The mean radius of the GRS80 ellipsoid, the radius of `geo::Haversine` (which measures in
/// metres); measuring on a sphere of this many kilometres gives kilometres.
const EARTH_RADIUS_KM: f64 = 6371.0088;
const EARTH: HaversineMeasure = HaversineMeasure::new(EARTH_RADIUS_KM);

/// Haversine distance in kilometres between two points given as (longitude, latitude) degrees.
pub fn great_circle_km(a: Point<f64>, b: Point<f64>) -> f64 {
    // geo does not clamp the haversine term to 1 before its arcsine, so for (nearly) antipodal
    // points rounding can make the distance NaN; `min` keeps the other operand then, half the
    // circumference, which is also the most any two points can be apart.
    EARTH.distance(a, b).min(PI * EARTH_RADIUS_KM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_city_distances() {
        let dublin = Point::new(-6.2603, 53.3498);
        let virginia = Point::new(-77.4360, 39.0438);
        let singapore = Point::new(103.8198, 1.3521);
        let d = great_circle_km(dublin, virginia);
        assert!((5400.0..5600.0).contains(&d), "{d}");
        let d = great_circle_km(dublin, singapore);
        assert!((11_000.0..11_400.0).contains(&d), "{d}");
        assert_eq!(great_circle_km(dublin, dublin), 0.0);
    }

    #[test]
    fn antipodal_points_are_half_the_circumference_apart() {
        let half = std::f64::consts::PI * EARTH_RADIUS_KM;
        // Within a metre: the arcsine is ill-conditioned next to 1, but never NaN.
        let close = |d: f64| (d - half).abs() < 1e-3;
        for lon in (-180..0).step_by(7) {
            for lat in (-90..=90).step_by(3) {
                let (lon, lat) = (f64::from(lon) + 0.1234, f64::from(lat));
                let d = great_circle_km(Point::new(lon, lat), Point::new(lon + 180.0, -lat));
                assert!(close(d), "[{lon}, {lat}]: {d}");
            }
        }
        // A nearly antipodal pair whose haversine term rounds to just above 1.
        let a = Point::new(-168.1119414387537, -71.31760243739296);
        let b = Point::new(11.88805856060657, 71.31760243751636);
        let d = great_circle_km(a, b);
        assert!(close(d), "{d}");
    }
}
