//! Great-circle distance between region locations.

use geo_types::Point;

const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Haversine distance in kilometres between two points given as (longitude, latitude) degrees.
pub fn great_circle_km(a: Point<f64>, b: Point<f64>) -> f64 {
    let (lat1, lat2) = (a.y().to_radians(), b.y().to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.x() - a.x()).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
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
}
