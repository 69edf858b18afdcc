//! Summary statistics of a sample of durations.

use serde::Serialize;

/// min, median, p90, p99, max and mean of a sample, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Smallest.
    pub min_ns: f64,
    /// 50th percentile.
    pub median_ns: f64,
    /// 90th percentile.
    pub p90_ns: f64,
    /// 99th percentile.
    pub p99_ns: f64,
    /// Largest.
    pub max_ns: f64,
    /// Arithmetic mean.
    pub mean_ns: f64,
}

/// The `p`th percentile (0-100) of sorted data, interpolating linearly between closest ranks
/// (numpy's default method).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (n - 1) as f64 * p.clamp(0.0, 100.0) / 100.0;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

impl Summary {
    /// Summarises `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            min_ns: v[0],
            median_ns: percentile(&v, 50.0),
            p90_ns: percentile(&v, 90.0),
            p99_ns: percentile(&v, 99.0),
            max_ns: v[v.len() - 1],
            mean_ns: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_data() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert!((percentile(&v, 50.0) - 5.5).abs() < 1e-9);
        assert!((percentile(&v, 90.0) - 9.1).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 9.91).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn summary_sorts_and_averages() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(s.n, 4);
        assert_eq!(s.min_ns, 1.0);
        assert_eq!(s.max_ns, 10.0);
        assert_eq!(s.median_ns, 2.5);
        assert_eq!(s.mean_ns, 4.0);
        assert!(Summary::of(&[]).is_none());
    }
}
