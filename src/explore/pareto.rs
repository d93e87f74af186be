//! Pareto frontiers: the configurations no other one beats on both cost and accuracy.

/// Indices of the points on the frontier (lowest cost, highest accuracy), in increasing cost.
/// A point is on it when every cheaper-or-equal point is strictly less accurate. Points with
/// a non-finite coordinate are ignored.
pub fn frontier(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    // By cost, and at equal cost the most accurate first.
    order.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
    });
    let mut out = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in order {
        if points[i].1 > best {
            best = points[i].1;
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_undominated_points() {
        let pts = [
            (10.0, 0.9),
            (5.0, 0.8),
            (7.0, 0.7),
            (20.0, 0.95),
            (5.0, 0.85),
            (30.0, 0.95),
        ];
        assert_eq!(frontier(&pts), vec![4, 0, 3]);
        assert!(frontier(&[]).is_empty());
        assert_eq!(frontier(&[(f64::NAN, 1.0), (1.0, 0.5)]), vec![1]);
    }
}
