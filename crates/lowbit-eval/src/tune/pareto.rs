//! The Pareto front of evaluated configurations: those no other configuration beats on both
//! cost (lower is better) and metric (higher is better).

/// Indices of the non-dominated points of `(cost, metric)`, cheapest first. A point is
/// dominated when another costs no more, scores no less and differs in one of the two; of
/// identical points the first is kept. NaN metrics never make the front.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len()).filter(|&i| !points[i].1.is_nan()).collect();
    // Cheapest first; at equal cost the better metric first, then the earlier point.
    order.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
            .then(a.cmp(&b))
    });
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in order {
        if points[i].1 > best {
            best = points[i].1;
            front.push(i);
        }
    }
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_points_nothing_beats_sorted_by_cost() {
        // (cost, metric): 1 dominates 3 (cheaper and better); 4 ties 0's cost with less metric.
        let p = [(10.0, 70.0), (4.0, 60.0), (7.0, 69.0), (8.0, 50.0), (10.0, 65.0), (2.0, 10.0)];
        assert_eq!(pareto_front(&p), vec![5, 1, 2, 0]);
        let front = pareto_front(&p);
        for w in front.windows(2) {
            assert!(p[w[0]].0 < p[w[1]].0 && p[w[0]].1 < p[w[1]].1);
        }
    }

    #[test]
    fn identical_points_keep_the_first_and_nan_is_dropped() {
        assert_eq!(pareto_front(&[(1.0, 5.0), (1.0, 5.0), (0.5, f64::NAN)]), vec![0]);
        assert!(pareto_front(&[]).is_empty());
    }
}
